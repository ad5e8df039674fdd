"""The LLaVA-OneVision adapter on a tiny random model: AnyRes-Max layout (unpadding, shrinking, newlines), layout
from generate's packed features, vision records (the engine oracles over every method are in test_adapters.py).

32-pixel crops of 8-pixel patches (a 4×4 base grid) and AnyRes-Max with N = 2: a 40×64 image fills the 2×2
canvas (8×8 patches), is unpadded to 6×8 and shrunk to 4×6, so it gives 16 + 24 prunable tokens and 4 newlines.
"""

from __future__ import annotations

import pytest
import torch
from conftest import QWEN_PROMPT, llava_onevision_inputs, random_array_image

import tpx
from tpx import select
from tpx.models import LlavaOnevisionAdapter, adapter_for, tiny_llava_onevision

# (height, width): canvas → unpadded → AnyRes-Max grid
SIZES = {(40, 64): (4, 6), (32, 64): (4, 8), (64, 40): (6, 4), (64, 64): (5, 5), (30, 90): (3, 9), (32, 32): (4, 4),
         (20, 64): (2, 8)}


@pytest.fixture(scope="module")
def models(one_thread):
    return {attn: tiny_llava_onevision(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}


def _call(inputs):
    return {k: v for k, v in inputs.items() if k != "input_ids"}


@pytest.mark.parametrize("size", list(SIZES))
def test_layout_equals_the_processor_count(models, size):
    """Grids from image_sizes and from generate's packed features agree with each other, with the processor's
    token count, and with the grid worked out by hand; the packed newlines sit at the layout's fixed positions."""
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    assert isinstance(adapter, LlavaOnevisionAdapter)
    inputs = llava_onevision_inputs(processor, 1, sizes=[size])
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    assert layout.grids == ((4, 4), SIZES[size])
    counted = processor._get_num_multimodal_tokens(image_sizes=[size])["num_image_tokens"][0]
    assert layout.n_visual + layout.fixed.shape[1] == counted == adapter.image_positions(inputs["input_ids"]).shape[1]
    assert layout.fixed.shape[1] == SIZES[size][0]
    with torch.no_grad():
        encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    from_features = adapter.layout(inputs["input_ids"], mm_encoder_outputs={"image": encoded})
    assert from_features.grids == layout.grids and torch.equal(from_features.positions, layout.positions)
    first = adapter.image_positions(inputs["input_ids"])[0, 0]
    newline = model.model.image_newline
    assert bool((encoded.pooler_output[0][layout.fixed[0] - first] == newline).all())


def test_images_of_a_multi_image_prompt_are_not_tiled(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    images = [[random_array_image(0, (40, 64)), random_array_image(1, (64, 40))]] * 2
    text = QWEN_PROMPT.format("<image><image>", "Which is larger?")
    inputs = dict(processor(images=images, text=[text, text], return_tensors="pt", padding=True))
    assert inputs["batch_num_images"].tolist() == [2, 2]
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    assert layout.grids == ((4, 4), (4, 4)) and layout.fixed.shape[1] == 2  # base view and one newline each
    with torch.no_grad():
        ref = model(**inputs).logits
        with tpx.pruning(model, "fastv", retention=1.0) as run:
            assert torch.equal(model(**inputs).logits, ref)
    assert run.trace[0].grids == [(4, 4), (4, 4)]


def test_layout_errors_are_clear(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    inputs = llava_onevision_inputs(processor, 2, sizes=[(40, 64), (64, 40)])
    with pytest.raises(ValueError, match="same number of image tokens|same image layout"):
        adapter.layout(inputs["input_ids"], **_call(inputs))
    inputs = llava_onevision_inputs(processor, 1)
    with pytest.raises(ValueError, match="needs the call's image_sizes .* or its mm_encoder_outputs"):
        adapter.layout(inputs["input_ids"])


@pytest.mark.parametrize("source", ["forward", "generate"])
def test_vision_records_are_the_packed_tokens(models, source):
    """Stitched, unpadded and shrunk records equal the model's packed image features at the prunable positions
    bit for bit (the projector's output goes through the model's own steps), whether the layout came from
    image_sizes or from packed features; each crop's received attention sums to 1 per head before shrinking."""
    model, processor = models["eager"]
    inputs = llava_onevision_inputs(processor, 2, seed=50)
    adapter = adapter_for(model)
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
            pixels = torch.cat([p[:5] for p in inputs["pixel_values"]])
            tower = model.model.vision_tower(pixels, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(sink["cls_attn"], tower.attentions[-1].mean(-2), atol=1e-6, rtol=0)
    call = _call(inputs) if source == "forward" else {"mm_encoder_outputs": {"image": encoded}}
    layout = adapter.layout(inputs["input_ids"], **call)
    records = adapter.vision_records(sink, layout)
    assert records["cls_attn"].shape == (2, 4, 40) and records["vision_keys"].shape == (2, 40, 32)
    assert records["vision_features"].shape == (2, 40, 64)
    offsets = layout.positions[0] - adapter.image_positions(inputs["input_ids"])[0, 0]
    for row in range(2):
        assert torch.equal(records["vision_features"][row], encoded.pooler_output[row][offsets])
    torch.testing.assert_close(records["cls_attn"][..., :16].sum(-1), torch.ones(2, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("retention", [1.0, 0.25, 1 / 40])
def test_budget_counts_prunable_tokens_and_newlines_survive(models, retention):
    model, processor = models["sdpa"]
    inputs = llava_onevision_inputs(processor, 2, seed=5)
    layout = tpx.models.layout(model, inputs)
    with torch.no_grad(), tpx.pruning(model, "visionzip", retention=retention) as run:
        model(**inputs)
    entry = run.trace[0]
    assert entry.n_visual == 40 and entry.grids == [(4, 4), (4, 6)]
    assert entry.n_keep == select.budget(retention, 40)
    assert bool((layout.fixed[..., None] == run.kept_positions[:, None, :]).any(-1).all())
    assert run.kept_positions.shape[1] == inputs["input_ids"].shape[1] - 40 + entry.n_keep


def test_load_round_trip_offline(tmp_path, models):
    model, processor = models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path))
    assert type(adapter_for(loaded)) is LlavaOnevisionAdapter and proc.tokenizer.padding_side == "left"
    assert (proc.num_image_tokens, proc.vision_aspect_ratio) == (16, "anyres_max_2")
    inputs, again = llava_onevision_inputs(processor, 2), llava_onevision_inputs(proc, 2)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**again).logits, atol=1e-5, rtol=0)
    assert tpx.load("tiny-llava-onevision")[0].config.model_type == "llava_onevision"
