"""Real-size geometry (issue 15, item 2): Qwen2-VL-2B and Qwen3-VL-2B at their published widths, patch sizes and
pixel budgets, with 2 vision blocks and 2 decoder layers of random weights (`tpx.models.geometry_qwen`), fed a real
photograph (Grace Hopper, 512×600, shipped with matplotlib) through the published image-processor settings.

The photo becomes 42×36 patches of 14 pixels (378 merged tokens) for Qwen2-VL and 38×32 patches of 16 pixels (304
merged tokens) for Qwen3-VL: non-square grids two orders larger than the tiny models'. At that size the trace's
grid equals the processor's `image_grid_thw` (forward and `generate`), retention 1.0 is bit-exact and pruning at
K = 1 (inside Qwen3-VL's DeepStack layers) equals the mask reference; hook V's records are the merger's inputs
grouped 2×2 on the real grid. The oracles' forwards reuse the photo's vision encoding (`mm_encoder_outputs`, as
`generate` itself passes it at prefill), so each test pays for the vision tower once. Measured on a 2-core machine
shared with other jobs: about 75 CPU-seconds for the whole module (both builds included), 10–65 s wall per test.
"""

from __future__ import annotations

import pytest
import torch
from conftest import QWEN_IMAGE, QWEN_PROMPT
from tpx.models.geometry_qwen import build
from reference import check_mask_reference, check_retention_one

import tpx
import tpx.models
from tpx import select
from tpx.data import sample_picture
from tpx.methods import variant

N_NEW = 2
# published checkpoint: the photo's image_grid_thw (t, h, w) under its published processor settings
CHECKPOINTS = {"Qwen/Qwen2-VL-2B-Instruct": (1, 42, 36), "Qwen/Qwen3-VL-2B-Instruct": (1, 38, 32)}
FASTV_K1 = variant("fastv", "fastv_k1", layers=(1,))  # 2 decoder layers: K = 1 is the only in-LLM depth


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def real(request, one_thread):
    """`(checkpoint, model, processor)`; module-scoped and parametrised, so pytest groups the tests by checkpoint
    and builds each model once."""
    return (request.param, *build(request.param))


def _inputs(processor) -> dict:
    text = QWEN_PROMPT.format(QWEN_IMAGE, "Who is in the picture, and what is she wearing?")
    return dict(processor(images=[sample_picture()], text=[text], return_tensors="pt"))


def _encoded(model, inputs) -> dict:
    """`inputs` with the images encoded once: `mm_encoder_outputs` instead of `pixel_values`."""
    call = dict(inputs)
    with torch.no_grad():
        call["mm_encoder_outputs"] = {"image": model.model.get_image_features(call.pop("pixel_values"),
                                                                             call["image_grid_thw"])}
    return call


def test_trace_grid_equals_processor_grid(real):
    checkpoint, model, processor = real
    inputs = _inputs(processor)
    t, h, w = CHECKPOINTS[checkpoint]
    assert inputs["image_grid_thw"].tolist() == [[t, h, w]]
    grid = (t * h // 2, w // 2)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    layout = tpx.models.layout(model, inputs)
    assert layout.grids == (grid,) and layout.n_visual == n_image == grid[0] * grid[1]
    with torch.no_grad(), tpx.pruning(model, "random", retention=0.25, hook="E", seed=0) as run:
        model.generate(**_encoded(model, inputs), max_new_tokens=1, do_sample=False)  # layout from M-RoPE positions
    entry = run.trace[0]
    assert entry.grids == [grid] and entry.n_visual == n_image and entry.n_keep == select.budget(0.25, n_image)
    assert bool((entry.grid_rc[0] < torch.tensor(grid)).all())


def test_retention_one_is_exact(real):
    checkpoint, model, processor = real
    run = check_retention_one(model, _encoded(model, _inputs(processor)), FASTV_K1, "L", N_NEW)
    assert run.trace[0].layer == 1 and run.trace[0].grids == [(CHECKPOINTS[checkpoint][1] // 2,
                                                               CHECKPOINTS[checkpoint][2] // 2)]


def test_matches_mask_reference(real):
    _, model, processor = real
    run = check_mask_reference(model, _encoded(model, _inputs(processor)), FASTV_K1, "L", 0.25, N_NEW,
                               positions=False)
    assert run.trace[0].n_keep == select.budget(0.25, run.trace[0].n_visual)


def test_vision_records_match_the_merger(real):
    """Hook V's records at real size: per merged token of the 2×2 groups of a non-square grid, projected exactly
    as the published-width merger projects them, with received attention summing to 1/4 per head."""
    checkpoint, model, processor = real
    inputs = _inputs(processor)
    adapter = tpx.models.adapter_for(model)
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            projected = adapter.project(sink["vision_features"])
    finally:
        for h in handles:
            h.remove()
    _, h, w = CHECKPOINTS[checkpoint]
    heads = model.config.vision_config.num_heads
    assert sink["cls_attn"].shape == (1, heads, h * w // 4)
    torch.testing.assert_close(projected, torch.stack(encoded.pooler_output), atol=1e-5, rtol=0)
    torch.testing.assert_close(sink["cls_attn"].sum(-1), torch.full((1, heads), 0.25), atol=1e-5, rtol=0)
