"""The InternVL3 adapter on a tiny random model: tiles and thumbnail in the layout, [CLS] attention pooled over
pixel shuffle, vision records (the engine oracles over every method are in test_adapters.py).

Tiles of 32 pixels in 4-pixel patches: 8×8 patches pixel-shuffled into 4×4 tokens per tile. A 40×64 image is
cut into 2 tiles side by side plus a thumbnail: 3 grids of 4×4, 48 `<IMG_CONTEXT>` tokens.
"""

from __future__ import annotations

import pytest
import torch
from conftest import INTERNVL_PROMPT, internvl_inputs, random_array_image
from reference import check_mask_reference

import tpx
from tpx import select
from tpx.models import InternVLAdapter, adapter_for, tiny_internvl

SIZES = [(40, 64), (64, 40), (32, 32), (30, 120), (64, 64), (100, 50)]


@pytest.fixture(scope="module")
def models(one_thread):
    return {attn: tiny_internvl(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}


def _call(inputs):
    return {k: v for k, v in inputs.items() if k != "input_ids"}


@pytest.mark.parametrize("size", SIZES)
def test_layout_has_one_grid_per_tile_as_the_processor_counts(models, size):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    assert isinstance(adapter, InternVLAdapter)
    inputs = internvl_inputs(processor, 1, sizes=[size])
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    counted = processor._get_num_multimodal_tokens(image_sizes=[size])
    tiles = counted["num_image_patches"][0]
    assert tiles == inputs["pixel_values"].shape[0] and len(layout.grids) == tiles
    # image_seq_length per tile (the count's <img> </img> pair is in 5.24's num_image_tokens, not in 5.25's)
    assert set(layout.grids) == {(4, 4)} and layout.n_visual == processor.image_seq_length * tiles
    ids = inputs["input_ids"][0]
    assert bool((ids[layout.positions[0]] == model.config.image_token_id).all())
    assert int(ids[layout.positions[0, 0] - 1]) == processor.start_image_token_id
    assert int(ids[layout.positions[0, -1] + 1]) == processor.end_image_token_id


def test_several_images_per_row_and_errors(models):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    images = [random_array_image(i, s) for i, s in enumerate([(40, 64), (32, 32), (40, 64), (32, 32)])]
    text = INTERNVL_PROMPT.format("<IMG_CONTEXT> and what else?")
    inputs = dict(processor(images=images, text=[text, text], return_tensors="pt", padding=True))
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    assert layout.grids == ((4, 4),) * 4 and layout.source == (3, 1)
    mixed = internvl_inputs(processor, 2, sizes=[(40, 64), (32, 32)])
    with pytest.raises(ValueError, match="same number of image tokens|same image layout"):
        adapter.layout(mixed["input_ids"])
    ids = internvl_inputs(processor, 1)["input_ids"]
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    with pytest.raises(ValueError, match=r"image spans of \[47\] tokens are not whole tiles of 16"):
        adapter.layout(torch.cat([ids[:, :first], ids[:, first + 1:]], 1))


def test_pooled_cls_attention_and_features_equal_the_tower(models):
    """Records equal eager [CLS] attention averaged over each token's 2×2 patches (grouping written out here, not
    read from the model), and projected features equal the model's image features."""
    model, processor = models["eager"]
    inputs = internvl_inputs(processor, 2, seed=41)
    adapter = adapter_for(model)
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            encoded = model.model.get_image_features(inputs["pixel_values"])
            tower = model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
            projected = adapter.project(sink["vision_features"])
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(projected, encoded.pooler_output, atol=1e-6, rtol=0)
    cls = tower.attentions[-1][:, :, 0, 1:].unflatten(-1, (4, 2, 4, 2))        # (tiles, H, r, dr, c, dc)
    want = cls.permute(0, 1, 2, 4, 3, 5).flatten(2, 3).flatten(-2).mean(-1)     # (tiles, H, 16)
    torch.testing.assert_close(sink["cls_attn"], want, atol=1e-6, rtol=0)
    assert sink["vision_keys"].shape == (6, 16, 32) and sink["vision_features"].shape == (6, 16, 128)
    layout = adapter.layout(inputs["input_ids"], **_call(inputs))
    records = adapter.vision_records(sink, layout)
    assert records["cls_attn"].shape == (2, 4, 48)
    assert torch.equal(records["cls_attn"][1, :, 16:32], sink["cls_attn"][4])  # batch row 1, its 2nd tile


@pytest.mark.parametrize("retention", [1.0, 0.25, 1 / 48])
def test_budget_is_shared_by_the_tiles(models, retention):
    model, processor = models["sdpa"]
    inputs = internvl_inputs(processor, 2, seed=5)
    with torch.no_grad(), tpx.pruning(model, "fastervlm", retention=retention) as run:
        model(**inputs)
    entry = run.trace[0]
    assert entry.n_visual == 48 and entry.grids == [(4, 4)] * 3
    assert entry.n_keep == select.budget(retention, 48)
    shares = select.split_budget(entry.n_keep, [16, 16, 16])
    for seg, share in enumerate(shares):
        assert bool(((entry.segment == seg).sum(1) == share).all())
    assert run.kept_positions.shape[1] == inputs["input_ids"].shape[1] - 48 + entry.n_keep


@pytest.mark.parametrize("name", ["fastervlm", "visionzip"])
def test_budget_below_the_tile_count_leaves_tiles_empty(models, name):
    """2 tokens for 3 tiles: the first two tiles keep one each, the thumbnail none; still the mask reference."""
    model, processor = models["sdpa"]
    inputs = internvl_inputs(processor, 2, seed=12)
    run = check_mask_reference(model, inputs, name, "V", 2 / 48, 2)
    assert run.trace[0].n_keep == 2 and sorted(run.trace[0].segment[0].tolist()) == [0, 1]


def test_generate_with_vision_hook_matches_unpruned_at_retention_one(models):
    model, processor = models["sdpa"]
    inputs = internvl_inputs(processor, 2, seed=60)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=model.config.text_config.pad_token_id)
    with torch.no_grad():
        ref = model.generate(**inputs, **kw)
        with tpx.pruning(model, "visionzip", retention=1.0) as run:
            out = model.generate(**inputs, **kw)
    assert torch.equal(out, ref) and run.trace[0].n_keep == 48


def test_other_language_models_are_refused(models):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    model, _ = models["sdpa"]
    cfg = model.config.to_dict()
    cfg["text_config"] = dict(cfg["text_config"], model_type="qwen3", head_dim=16)
    with pytest.raises(TypeError, match="supports the language models qwen2, llama; this model has 'qwen3'"):
        adapter_for(InternVLForConditionalGeneration(InternVLConfig(**cfg)))


def test_load_round_trip_offline(tmp_path, models):
    model, processor = models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path))
    assert type(adapter_for(loaded)) is InternVLAdapter and proc.tokenizer.padding_side == "left"
    assert proc.image_seq_length == 16 and proc.image_processor.max_patches == 4
    inputs, again = internvl_inputs(processor, 2), internvl_inputs(proc, 2)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**again).logits, atol=1e-5, rtol=0)
    assert tpx.load("tiny-internvl")[0].config.model_type == "internvl"


def test_tiny_is_deterministic():
    a, b, c = (tiny_internvl(seed=s)[0] for s in (3, 3, 4))
    pa, pb, pc = (m.model.vision_tower.embeddings.cls_token for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc) and bool(pa.abs().sum() > 0)
