"""The Qwen2-VL / Qwen2.5-VL adapter on tiny random models: merged-grid layout, M-RoPE, vision records (the
engine oracles over every method are in test_adapters.py).

A 168×224 image gives `image_grid_thw = [1, 12, 16]`: 192 vision patches, merged 2×2 into a 6×8 grid of 48
`<|image_pad|>` tokens with 3-D (t, h, w) positions.
"""

from __future__ import annotations

import pytest
import torch
from conftest import qwen2_vl_inputs as make_inputs

import tpx
from tpx import select
from tpx.models import Qwen2VLAdapter, adapter_for, tiny_qwen2_vl

N_NEW = 3
@pytest.fixture(scope="module")
def models():
    built = {attn: tiny_qwen2_vl(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}
    built["2.5"] = tiny_qwen2_vl(version="2.5", attn_implementation="eager", seed=1)
    return built


def _generate(model, inputs):
    out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits


def _call(inputs):
    return {k: v for k, v in inputs.items() if k != "input_ids"}


def _prefill_kwargs(model, inputs):
    """The keyword arguments generate() passes to the model at prefill (images already encoded)."""
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("kwargs", dict(kwargs))

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    return seen["kwargs"]


# ---- layout --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("per_row", "sizes", "grids"), [
    (1, [(168, 224)] * 2, [(6, 8)]),
    (2, [(168, 224), (84, 140)] * 2, [(6, 8), (3, 5)]),
])
def test_layout_from_grid_thw_and_from_generate_positions(models, per_row, sizes, grids):
    """A forward carries image_grid_thw; generate() carries only (4, B, L) M-RoPE position ids at prefill."""
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    assert isinstance(adapter, Qwen2VLAdapter)
    inputs = make_inputs(processor, 2, sizes=sizes, per_row=per_row)
    forward = adapter.layout(inputs["input_ids"], **_call(inputs))
    prefill = _prefill_kwargs(model, inputs)
    assert "image_grid_thw" not in prefill and prefill["position_ids"].shape[0] == 4
    generate = adapter.layout(**prefill)
    assert list(forward.grids) == list(generate.grids) == grids
    assert torch.equal(forward.positions, generate.positions)
    assert bool((inputs["input_ids"].gather(1, forward.positions) == model.config.image_token_id).all())
    # the grid is the M-RoPE (h, w) offset of each token from its image's first token
    pos3, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"],
                                         attention_mask=inputs["attention_mask"])
    rows, cols = grids[0]
    hw = pos3[1:, :, :].gather(2, forward.positions[None, :, : rows * cols].expand(2, -1, -1))
    offset = hw - hw[..., :1]
    assert torch.equal(offset[0], (torch.arange(rows * cols) // cols).expand(2, -1))
    assert torch.equal(offset[1], (torch.arange(rows * cols) % cols).expand(2, -1))


def test_layout_errors_are_clear(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    inputs = make_inputs(processor, 2, sizes=[(168, 224), (224, 168)])  # same token count, transposed grids
    with pytest.raises(ValueError, match="same image layout"):
        adapter.layout(inputs["input_ids"], **_call(inputs))
    inputs = make_inputs(processor, 1)
    with pytest.raises(ValueError, match="needs the call's image_grid_thw .* or its M-RoPE position_ids"):
        adapter.layout(inputs["input_ids"])
    ids = inputs["input_ids"]
    with pytest.raises(ValueError, match="no image tokens"):
        adapter.layout(ids.masked_fill(ids == model.config.image_token_id, 0), **_call(inputs))
    with pytest.raises(ValueError, match="do not match the grids"):
        adapter.layout(ids, image_grid_thw=torch.tensor([[1, 12, 12]]))
    with pytest.raises(ValueError, match="positions='renumber' is not supported"):
        with tpx.pruning(model, "random", retention=0.5, positions="renumber"):
            pass


@pytest.mark.parametrize("retention", [1.0, 0.25, 1 / 48])
def test_budget_counts_image_pad_tokens(models, retention):
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=5)
    with torch.no_grad(), tpx.pruning(model, "fastv", retention=retention) as run:
        model(**inputs)
    entry = run.trace[0]
    assert entry.n_visual == 48 and entry.grids == [(6, 8)]
    assert entry.n_keep == select.budget(retention, 48) == round(retention * 48)
    assert run.kept_positions.shape[1] == inputs["input_ids"].shape[1] - 48 + entry.n_keep


# ---- vision tower records (hook "V") ---------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2", "2.5"])
def test_vision_records_are_per_merged_token(models, version):
    """Projected records equal the merger's output token by token (Qwen2.5-VL: window order undone), and the
    received attention of an image's merge groups sums to 1/4 (a mean over the 4 patches of a group)."""
    model, processor = models["sdpa" if version == "2" else "2.5"]  # 2.5: eager
    inputs = make_inputs(processor, 2, seed=50)
    adapter = adapter_for(model)
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            projected = adapter.project(sink["vision_features"])
    finally:
        for h in handles:
            h.remove()
    assert sink["cls_attn"].shape == (2, 4, 48) and sink["vision_features"].shape == (2, 48, 4 * 32)
    assert sink["vision_keys"].shape == (2, 48, 32)
    torch.testing.assert_close(projected, torch.stack(encoded.pooler_output), atol=1e-5, rtol=0)
    torch.testing.assert_close(sink["cls_attn"].sum(-1), torch.full((2, 4), 0.25), atol=1e-5, rtol=0)


@pytest.mark.skipif("fastervlm" not in tpx.list_methods(), reason="fastervlm not registered")
def test_vision_hook_method_runs(models):
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=60)
    with torch.no_grad():
        ref_tokens, _ = _generate(model, inputs)
        with tpx.pruning(model, "fastervlm", retention=1.0):
            tokens, _ = _generate(model, inputs)
        with tpx.pruning(model, "fastervlm", retention=0.25) as run:
            model(**inputs)
    assert torch.equal(tokens, ref_tokens)
    assert run.trace[0].n_keep == 12 and run.trace[0].grids == [(6, 8)]


def test_load_round_trip_offline(tmp_path, models):
    """The saved processor loads back without torchvision (image-only processor)."""
    model, processor = models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path))
    assert type(adapter_for(loaded)) is Qwen2VLAdapter and proc.tokenizer.padding_side == "left"
    inputs, again = make_inputs(processor, 2), make_inputs(proc, 2)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**again).logits, atol=1e-5, rtol=0)
    assert tpx.load("tiny-qwen2-vl")[0].config.model_type == "qwen2_vl"
