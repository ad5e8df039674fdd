"""The LLaVA-NeXT adapter on a tiny random LLaVA-1.6: AnyRes layout, newline tokens, vision records (the engine
oracles over every method are in test_adapters.py).

A 40×64 image fills the 2×2 AnyRes canvas (8×8 patches) and is unpadded to 6×8, so each image gives a 4×4
base grid, a 6×8 crop grid and 6 `image_newline` tokens: 64 prunable tokens out of 70 image tokens.
"""

from __future__ import annotations

import pytest
import torch
from conftest import llava_next_inputs as make_inputs

import tpx
from tpx import select
from tpx.models import LlavaNextAdapter, adapter_for, tiny_llava_next

N_NEW = 3
@pytest.fixture(scope="module")
def models():
    return {attn: tiny_llava_next(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}


def _generate(model, inputs):
    out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits


def _isin_rows(a, b):
    """Per batch row: which entries of `a` (B, n) occur in the same row of `b` (B, m)."""
    return (a[..., None] == b[:, None, :]).any(-1)


def _call(inputs):
    return {k: v for k, v in inputs.items() if k != "input_ids"}


# ---- layout --------------------------------------------------------------------------------------------

def test_layout_excludes_newlines_and_lists_base_and_crop_grids(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    assert isinstance(adapter, LlavaNextAdapter)
    inputs = make_inputs(processor, 2)
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    assert layout.grids == ((4, 4), (6, 8)) and layout.positions.shape == (2, 64)
    every = adapter.image_positions(inputs["input_ids"])
    assert every.shape == (2, 70)
    newlines = every[:, 16:].view(2, 6, 9)[:, :, -1]           # the last token of every crop row
    assert not bool(_isin_rows(newlines, layout.positions).any())
    assert torch.equal(layout.fixed, newlines)  # never pruned
    assert torch.equal(layout.image_positions(), every)


def test_layout_from_generate_inputs_equals_layout_from_image_sizes(models):
    """generate() passes packed features (mm_encoder_outputs), not image_sizes, at prefill."""
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    for size in [(40, 64), (64, 40), (64, 64), (30, 90), (32, 32)]:
        inputs = make_inputs(processor, 1, sizes=[size])
        want = adapter.layout(inputs["input_ids"], **_call(inputs))
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        got = adapter.layout(inputs["input_ids"], mm_encoder_outputs={"image": encoded})
        assert got.grids == want.grids and torch.equal(got.positions, want.positions)
        # the features at the prunable positions are exactly the non-newline features
        features = encoded.pooler_output[0]
        offsets = want.positions[0] - adapter.image_positions(inputs["input_ids"])[0, 0]
        newline = model.model.image_newline
        assert not bool((features[offsets] == newline).all(-1).any())


def test_layout_errors_are_clear(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    inputs = make_inputs(processor, 2, sizes=[(40, 64), (64, 40)])
    with pytest.raises(ValueError, match="same number of image tokens|same image layout"):
        adapter.layout(inputs["input_ids"], **_call(inputs))
    inputs = make_inputs(processor, 1)
    with pytest.raises(ValueError, match="needs the call's image_sizes .* or its mm_encoder_outputs"):
        adapter.layout(inputs["input_ids"])
    short = inputs["input_ids"].clone()
    first = int((short[0] == model.config.image_token_id).nonzero()[0])
    short = torch.cat([short[:, :first], short[:, first + 1:]], 1)
    with pytest.raises(ValueError, match="69 image tokens per row but its images need 70"):
        adapter.layout(short, **_call(inputs))


@pytest.mark.parametrize("retention", [1.0, 0.25, 0.1, 1 / 64])
def test_budget_counts_prunable_tokens_and_newlines_survive(models, retention):
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=5)
    adapter = adapter_for(model)
    every = adapter.image_positions(inputs["input_ids"])
    newlines = every[:, 16:].view(2, 6, 9)[:, :, -1]
    with torch.no_grad(), tpx.pruning(model, "fastv", retention=retention) as run:
        model(**inputs)
    entry = run.trace[0]
    assert entry.n_visual == 64 and entry.n_keep == select.budget(retention, 64) == round(retention * 64)
    assert entry.grids == [(4, 4), (6, 8)]
    assert bool(_isin_rows(newlines, run.kept_positions).all())
    assert run.kept_positions.shape[1] == inputs["input_ids"].shape[1] - 64 + entry.n_keep
    # grid coordinates of the kept tokens are on their own segment's grid
    seg = entry.segment
    assert bool((entry.grid_rc[..., 0] < torch.where(seg == 0, 4, 6)).all())
    assert bool((entry.grid_rc[..., 1] < torch.where(seg == 0, 4, 8)).all())


# ---- vision tower records (hook "V") ---------------------------------------------------------------------

def _encoded_with_records(model, adapter, inputs) -> tuple[dict, torch.Tensor]:
    """The images encoded as generate() does, under the adapter's vision hooks: (their records, the features)."""
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    finally:
        for h in handles:
            h.remove()
    return sink, encoded


@pytest.mark.parametrize("source", ["forward", "generate"])
def test_vision_records_follow_the_layout(models, source):
    """Stitched records, projected, equal the model's own packed features at the prunable positions, whether the
    layout was read from a forward's image_sizes or from generate's packed features."""
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=50)
    adapter = adapter_for(model)
    sink, encoded = _encoded_with_records(model, adapter, inputs)
    call = _call(inputs) if source == "forward" else {"mm_encoder_outputs": {"image": encoded}}
    layout = adapter.layout(inputs["input_ids"], **call)
    records = adapter.vision_records(sink, layout)
    assert records["cls_attn"].shape == (2, 4, 64) and records["vision_features"].shape == (2, 64, 32)
    assert records["vision_keys"].shape == (2, 64, 32)
    offsets = layout.positions[0] - adapter.image_positions(inputs["input_ids"])[0, 0]
    with torch.no_grad():
        projected = adapter.project(records["vision_features"])
    for row in range(2):
        torch.testing.assert_close(projected[row], encoded.pooler_output[row][offsets], atol=1e-6, rtol=0)
    # each crop's [CLS] row is a softmax over its own 1 + 16 tokens: the base view's share is below 1
    assert bool((records["cls_attn"][..., :16].sum(-1) < 1).all())


def test_vision_records_of_a_square_image_use_the_sizes_the_encoder_saw(models):
    """A 24×24 image, smaller than every canvas, gets the first smallest one (32×64, two crops side by side) and
    unpads to 4×4; a 64×32 canvas unpads to the same grid, so generate's packed features alone cannot tell which
    crops hold what (the geometry-llava-next notebooks hit this at hook V). The sizes the encoder was called with
    decide, and the stitched records equal the model's own packed features."""
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=70, sizes=[(24, 24)] * 2)
    adapter = adapter_for(model)
    sink, encoded = _encoded_with_records(model, adapter, inputs)
    assert "get_image_features" not in vars(model.model)  # the recorder is gone
    layout = adapter.layout(inputs["input_ids"], mm_encoder_outputs={"image": encoded})
    assert layout.grids == ((4, 4), (4, 4)) and len(layout.source[0][0].options) == 2  # ambiguous from features
    without = {k: v for k, v in sink.items() if k != "image_sizes"}
    with pytest.raises(ValueError, match="cannot match the 6 crops"):
        adapter.vision_records(without, layout)
    records = adapter.vision_records(sink, layout)
    offsets = layout.positions[0] - adapter.image_positions(inputs["input_ids"])[0, 0]
    with torch.no_grad():
        projected = adapter.project(records["vision_features"])
    for row in range(2):
        torch.testing.assert_close(projected[row], encoded.pooler_output[row][offsets], atol=1e-6, rtol=0)


@pytest.mark.skipif("fastervlm" not in tpx.list_methods(), reason="fastervlm not registered")
def test_vision_hook_method_runs_and_keeps_newlines(models):
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=60)
    newlines = adapter_for(model).image_positions(inputs["input_ids"])[:, 16:].view(2, 6, 9)[:, :, -1]
    with torch.no_grad():
        ref_tokens, _ = _generate(model, inputs)
        with tpx.pruning(model, "fastervlm", retention=1.0) as run:
            tokens, _ = _generate(model, inputs)
        with tpx.pruning(model, "fastervlm", retention=0.25) as run:
            model(**inputs)
    assert torch.equal(tokens, ref_tokens)
    assert run.trace[0].n_keep == 16 and bool(_isin_rows(newlines, run.kept_positions).all())


def test_load_round_trip_offline(tmp_path, models):
    model, processor = models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path))
    assert type(adapter_for(loaded)) is LlavaNextAdapter and proc.tokenizer.padding_side == "left"
    inputs, again = make_inputs(processor, 2), make_inputs(proc, 2)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**again).logits, atol=1e-5, rtol=0)
    assert tpx.load("tiny-llava-next")[0].config.model_type == "llava_next"
