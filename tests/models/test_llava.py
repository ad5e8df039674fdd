"""The LLaVA adapter, the attention-row recompute and `tpx.load`."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import tpx
from tpx.models import LlavaAdapter, adapter_for, tiny


def test_adapter_knows_span_and_grid(tiny_models):
    model, processor = tiny_models["sdpa"]
    adapter = LlavaAdapter(model)
    inputs = make_inputs(processor, 2)
    pos = adapter.visual_positions(inputs["input_ids"])
    assert pos.shape == (2, 144) and adapter.grid(144) == (12, 12)
    assert bool((inputs["input_ids"].gather(1, pos) == model.config.image_token_id).all())
    with pytest.raises(ValueError, match="do not form the 12x12 patch grid"):
        adapter.grid(145)
    ids = inputs["input_ids"].clone()
    ids[0, pos[0, 0]] = 5
    with pytest.raises(ValueError, match=r"same number of image tokens, got \[143, 144\]"):
        adapter.visual_positions(ids)


def test_load_round_trip_offline(tmp_path, tiny_models):
    model, processor = tiny_models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path), attn_implementation="eager")
    assert proc.tokenizer.padding_side == "left"
    assert loaded.config.text_config._attn_implementation == "eager"
    inputs = make_inputs(processor, 2)
    again = make_inputs(proc, 2)
    assert torch.equal(inputs["input_ids"], again["input_ids"])
    assert torch.equal(inputs["pixel_values"], again["pixel_values"])
    real = inputs["attention_mask"].bool()  # padded rows differ between sdpa and eager by design
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits[real], loaded(**again).logits[real], atol=1e-5, rtol=0)


def test_load_reports_missing_paths_and_unsupported_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path './no/such/model' does not exist"):
        tpx.load("./no/such/model")
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="unsupported model_type 'llama'.*supported: .*llava"):
        tpx.load(str(tmp_path))


def test_tiny_is_deterministic_and_offline():
    a, _ = tiny(seed=3)
    b, _ = tiny(seed=3)
    c, _ = tiny(seed=4)
    pa, pb, pc = (dict(m.named_parameters())["lm_head.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_vision_records_equal_eager_clip_attention(tiny_models):
    model, processor = tiny_models["eager"]
    inputs = make_inputs(processor, 2, seed=41)
    adapter = adapter_for(model)
    sink: dict = {}
    handles = adapter.vision_hooks(sink)
    try:
        with torch.no_grad():
            tower = model.model.vision_tower
            out = tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    h = model.config.vision_feature_layer % (len(out.hidden_states))
    want = out.attentions[h - 1][:, :, 0, 1:]
    torch.testing.assert_close(sink["cls_attn"], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(sink["vision_features"], out.hidden_states[h][:, 1:], atol=0, rtol=0)
    assert sink["vision_keys"].shape == (2, 144, model.config.vision_config.hidden_size)


def test_received_attention_records_equal_eager_clip_attention():
    """HiPrune's records: attention received (mean over every query row) at the feature layer and at the object
    layer round(9/24 · depth), as eager output_attentions gives them; recorded only when asked for."""
    model, processor = tiny(attn_implementation="eager", vision_layers=4, seed=2)
    inputs = make_inputs(processor, 2, seed=43)
    adapter = adapter_for(model)
    plain: dict = {}
    sink: dict = {}
    handles = adapter.vision_hooks(plain) + adapter.vision_hooks(sink, frozenset({"vision_received", "vision_received_object"}))
    try:
        with torch.no_grad():
            out = model.model.vision_tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    h = model.config.vision_feature_layer % (len(out.hidden_states))                # 3 of 4
    torch.testing.assert_close(sink["vision_received"], out.attentions[h - 1].mean(2)[..., 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(sink["vision_received_object"], out.attentions[1].mean(2)[..., 1:], atol=1e-6, rtol=0)
    assert set(plain) == {"cls_attn", "vision_keys", "vision_features"}


def test_rows_keys_and_values_from_the_cache_equal_recomputed_ones(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 2, seed=42)
    adapter = adapter_for(model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, use_cache=True)
        length = inputs["input_ids"].shape[1]
        pe = adapter.decoder.rotary(out.hidden_states[0], torch.arange(length)[None])
        rows = torch.tensor([[length - 1, 150], [length - 1, 100]])
        for layer in range(adapter.n_layers):
            assert out.cache.layers[layer].keys.shape[-2] == length  # the cache holds this layer's keys
            dec, h = adapter.decoder, out.hidden_states[layer]
            cached = dec.attention_rows(layer, h, pe, rows, inputs["attention_mask"], cache=out.cache)
            fresh = dec.attention_rows(layer, h, pe, rows, inputs["attention_mask"])
            torch.testing.assert_close(cached, fresh, atol=1e-6, rtol=0)
            torch.testing.assert_close(dec.keys(layer, h, pe, cache=out.cache), dec.keys(layer, h, pe), atol=1e-6, rtol=0)
            torch.testing.assert_close(dec.values(layer, h, cache=out.cache), dec.values(layer, h), atol=1e-6, rtol=0)
