"""Real-size geometry for LLaVA-1.5, LLaVA-NeXT, InternVL3 and LLaVA-OneVision (Qwen2-VL and Qwen3-VL:
test_real_geometry.py): the engine's oracles on models built from the checkpoints' published configurations
(`tpx.models.geometry_llava`: true vision and text widths, 1–2 layers per tower, random weights, float32), fed a
real photograph (Grace Hopper, shipped with matplotlib) through the real image processor settings.

- llava-hf/llava-1.5-7b-hf, the 512×600 photo: 336-px centre crop, 24×24 = 576 tokens;
- llava-hf/llava-v1.6-mistral-7b-hf, a 512×60 strip: 336×672 canvas (1×2 crops), unpadded to 6×48, 6 newlines;
- OpenGVLab/InternVL3-1B-hf, a 512×256 band: 2 tiles of 448 px side by side + thumbnail, 3 grids of 16×16;
- llava-hf/llava-onevision-qwen2-0.5b-ov-hf, a 512×367 band resized to 1536×1100: a 27×27 base view, then a
  1152×1536 canvas (3×4 crops, 81×108 patches) unpadded to 77×108 and shrunk by AnyRes-Max-9 to 68×95.

Each family: the layout (and the trace's grids) equals the processor's token count and the grids worked out by
hand from the published rules; retention 1.0 reproduces the unpruned prefill logits bit for bit; a pruned
prefill equals the unpruned model with the dropped positions masked (≤ 1e-5). Decoding is covered by the tiny
models (tests/models/test_adapters.py): a 4096-wide layer over ~900 positions is ~10 CPU-seconds a forward, so
these check prefill only. Measured per family with `/usr/bin/time pytest -k <family>` on one thread of this
project's shared 2-core machine, CPU time (user + sys) including ~14 s of start-up: 38 s (LLaVA-1.5), 58 s
(LLaVA-NeXT), 27 s (InternVL3), 72 s (LLaVA-OneVision); peak memory 0.9–2.0 GB.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tpx.models.geometry_llava import build
from reference import check_mask_reference, check_retention_one

import tpx
import tpx.models
from tpx import select
from tpx.ask import prompt
from tpx.data import sample_picture

# name: (crop box of the photo, resize to, tower layers, decoder layers, the grids by hand, retention-1 method and
# hook, mask-reference method and hook)
CASES = {
    "llava-1.5-7b": (None, None, 2, 1, [(24, 24)], ("visionzip", "V"), ("visionzip", "V")),
    "llava-v1.6-mistral-7b": ((0, 200, 512, 260), None, 2, 1, [(24, 24), (6, 48)], ("visionzip", "V"),
                              ("pooling", "E")),
    "internvl3-1b": ((0, 100, 512, 356), None, 1, 2, [(16, 16)] * 3, ("visionzip", "V"), ("fastv", "L")),
    "llava-onevision-qwen2-0.5b-ov": ((0, 100, 512, 467), (1536, 1100), 1, 1, [(27, 27), (68, 95)],
                                      ("visionzip", "V"), ("random", "E")),
}
NAMES = list(CASES)


@pytest.fixture(scope="module")
def case(one_thread, request):
    """One model at a time (module scope, indirect parametrisation keeps only the current one alive)."""
    name = request.param
    crop, size, vision_layers, text_layers, grids, *_ = CASES[name]
    model, processor = build(name, text_layers=text_layers, vision_layers=vision_layers, seed=0)
    image = sample_picture()
    if crop is not None:
        image = image.crop(crop)
    if size is not None:
        image = image.resize(size)
    inputs = dict(processor(images=image, text=prompt(processor, "What is shown in the image?"),
                            return_tensors="pt"))
    encoded = None
    if "image_sizes" in inputs:  # AnyRes: the tower's crops encoded once, as generate() does before prefill
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                     **{k: inputs[k] for k in ("batch_num_images",) if k in inputs})
    return name, model, processor, image, inputs, encoded


def _processor_count(name, processor, image) -> int:
    """Image placeholders the processor writes for this image (InternVL: `image_seq_length` per tile, without `<img>`
    and `</img>`, which transformers 5.24's count includes and 5.25's does not)."""
    counted = processor._get_num_multimodal_tokens(image_sizes=[(image.height, image.width)])
    if name == "internvl3-1b":
        return processor.image_seq_length * counted["num_image_patches"][0]
    return counted["num_image_tokens"][0]


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_layout_equals_the_processor(case):
    name, model, processor, image, inputs, encoded = case
    layout = tpx.models.layout(model, inputs)
    fixed = 0 if layout.fixed is None else layout.fixed.shape[1]
    ids = inputs["input_ids"]
    in_prompt = int((ids == model.config.image_token_id).sum())
    assert list(layout.grids) == CASES[name][4]
    assert layout.n_visual + fixed == in_prompt == _processor_count(name, processor, image)
    if encoded is not None:  # AnyRes: generate() passes packed features, not image sizes
        packed = tpx.models.layout(model, {"input_ids": ids, "mm_encoder_outputs": {"image": encoded}})
        assert packed.grids == layout.grids and torch.equal(packed.positions, layout.positions)
        assert fixed == layout.grids[-1][0]  # one newline per crop-grid row


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_retention_one_is_bit_exact(case):
    name, model, _, _, inputs, _ = case
    method, hook = CASES[name][5]
    run = check_retention_one(model, inputs, method, hook, n_new=0)
    assert run.trace[0].grids == CASES[name][4]


@pytest.mark.parametrize("case", NAMES, indirect=True)
def test_matches_mask_reference(case):
    name, model, _, _, inputs, encoded = case
    method, hook = CASES[name][6]
    if hook == "L":  # two decoder layers: prune before layer 1, score at layer 0
        method = dataclasses.replace(tpx.get_method(method), layers=(1,))
    if encoded is not None and hook != "V":  # AnyRes: reuse the encoded crops (OneVision: 13 of them)
        inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                  "mm_encoder_outputs": {"image": encoded}}
    run = check_mask_reference(model, inputs, method, hook, 0.25, n_new=0)
    entry = run.trace[-1]
    assert entry.grids == CASES[name][4] and entry.n_keep == select.budget(0.25, entry.n_visual)
