"""The Qwen3-VL adapter on tiny random models: merged-grid layout, q/k norms, DeepStack at every depth, vision
records (every method × hook runs against the oracles in test_adapters.py).

A 192×256 image gives `image_grid_thw = [1, 12, 16]`: 192 patches of 16 pixels, merged 2×2 into a 6×8 grid of 48
`<|image_pad|>` tokens. DeepStack adds three vision features after decoder layers 0, 1 and 2 of 4, so K = 0, 1, 2
cut inside the DeepStack layers and K = 3 after them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import qwen3_vl_inputs as make_inputs
from reference import check_mask_reference, check_retention_one

import tpx
from tpx.methods import variant
from tpx.models import Qwen3VLAdapter, adapter_for, tiny_qwen3_vl

N_NEW = 3


@pytest.fixture(scope="module")
def models(one_thread):
    return {attn: tiny_qwen3_vl(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}


def _call(inputs):
    return {k: v for k, v in inputs.items() if k != "input_ids"}


def _prefill_kwargs(model, inputs):
    """The keyword arguments generate() passes to the model at prefill (images already encoded)."""
    seen = {}
    handle = model.register_forward_pre_hook(lambda m, a, k: seen.setdefault("kwargs", dict(k)) and None,
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    return seen["kwargs"]


# ---- layout ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("per_row", "sizes", "grids"), [
    (1, [(192, 256)] * 2, [(6, 8)]),
    (2, [(192, 256), (96, 160)] * 2, [(6, 8), (3, 5)]),
])
def test_layout_from_grid_thw_and_from_generate_positions(models, per_row, sizes, grids):
    model, processor = models["sdpa"]
    adapter = adapter_for(model)
    assert isinstance(adapter, Qwen3VLAdapter) and not adapter.supports_renumber
    inputs = make_inputs(processor, 2, sizes=sizes, per_row=per_row)
    forward = adapter.layout(inputs["input_ids"], **_call(inputs))
    prefill = _prefill_kwargs(model, inputs)
    assert "image_grid_thw" not in prefill and prefill["position_ids"].shape[0] == 4
    generate = adapter.layout(**prefill)
    assert list(forward.grids) == list(generate.grids) == grids
    assert [(int(h) // 2, int(w) // 2) for _, h, w in inputs["image_grid_thw"][:per_row].tolist()] == grids
    assert torch.equal(forward.positions, generate.positions)
    with pytest.raises(ValueError, match="positions='renumber' is not supported"):
        with tpx.pruning(model, "random", retention=0.5, positions="renumber"):
            pass


# ---- DeepStack: pruning inside and after the layers that receive vision features ------------------------

DEPTHS = [("random", 0), ("fastv", 1), ("fastv", 2), ("fastv", 3), ("pooling", 1)]


@pytest.mark.parametrize(("name", "layer"), DEPTHS, ids=[f"{n}-K{k}" for n, k in DEPTHS])
def test_oracles_at_every_depth(models, name, layer):
    """Retention 1.0 is bit-exact and pruning matches the mask reference at K = 0, 1, 2 (the layers DeepStack adds
    to) and 3: the visual-position mask and the DeepStack features follow the shortened sequence."""
    model, processor = models["sdpa"]
    method = variant(name, f"{name}_k{layer}", layers=(layer,))
    inputs = make_inputs(processor, 2, seed=20 + layer)
    check_retention_one(model, inputs, method, "L", N_NEW)
    run = check_mask_reference(model, inputs, method, "L", 0.25, N_NEW, positions=False)
    assert run.trace[0].layer == layer and run.trace[0].n_keep == 12


def test_deepstack_features_reach_the_kept_tokens(models):
    """The oracles above can fail: without its DeepStack features the model's logits change, and a pruning run
    adds them exactly where transformers does (retention 1.0 at hook E is bit-exact although the adapter, not
    transformers, adds them then)."""
    model, processor = models["sdpa"]
    inputs = make_inputs(processor, 2, seed=30)
    text_model = adapter_for(model).text_model
    strip = text_model.register_forward_pre_hook(
        lambda m, a, k: (a, {**k, "deepstack_visual_embeds": None}), with_kwargs=True)
    try:
        with torch.no_grad():
            without = model(**inputs).logits
    finally:
        strip.remove()
    with torch.no_grad():
        full = model(**inputs).logits
        with tpx.pruning(model, "random", retention=1.0, hook="E") as run:
            pruned = model(**inputs).logits
    assert len(model.config.vision_config.deepstack_visual_indexes) == 3
    assert (full - without).abs().amax() > 1e-3
    assert torch.equal(pruned, full) and run.trace[0].n_keep == 48


@pytest.mark.parametrize("batch", [1, 2])
def test_recomputed_rows_equal_eager_attention(models, batch):
    """Attention rows recomputed with the layer's q/k norms equal eager `output_attentions`, at every layer (the
    inputs of layers 1–3 include DeepStack features, so they are read with pre-hooks, not `hidden_states`)."""
    model, processor = models["eager"]
    decoder = adapter_for(model).decoder
    assert hasattr(decoder.layers[0].self_attn, "q_norm")
    inputs = make_inputs(processor, batch, seed=40)
    seen: dict = {}

    def grab(i):
        def hook(module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"], kwargs["position_embeddings"])
        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(decoder.layers)]
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    length = inputs["input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(length, generator=g)[:5] for _ in range(batch)])
    rows[:, 0] = length - 1
    mask2d = inputs["attention_mask"]
    real = mask2d.gather(1, rows).bool()
    for i in range(decoder.n_layers):
        hidden, pe = seen[i]
        got = decoder.attention_rows(i, hidden, pe, rows, mask2d)
        want = out.attentions[i].gather(2, rows[:, None, :, None].expand(-1, got.shape[1], -1, length))
        torch.testing.assert_close(got.permute(0, 2, 1, 3)[real], want.permute(0, 2, 1, 3)[real], atol=1e-6, rtol=0)
        keys = decoder.keys(i, hidden, pe)
        assert keys.shape == (batch, length, model.config.text_config.num_key_value_heads * 16)


# ---- vision tower records (hook "V") ---------------------------------------------------------------------

def test_vision_records_are_per_merged_token(models):
    """Projected records equal the merger's output token by token, and the received attention of an image's merge
    groups sums to 1/4 (a mean over the 4 patches of a group)."""
    model, processor = models["sdpa"]
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
    torch.testing.assert_close(projected, torch.stack(encoded.pooler_output), atol=1e-5, rtol=0)
    torch.testing.assert_close(sink["cls_attn"].sum(-1), torch.full((2, 4), 0.25), atol=1e-5, rtol=0)


# ---- builder and loading ----------------------------------------------------------------------------------

def test_builder_checks_deepstack():
    with pytest.raises(ValueError, match=r"deepstack must be an int in \[0, 3\]"):
        tiny_qwen3_vl(deepstack=4)


def test_load_round_trip_offline(tmp_path, models):
    """The saved processor loads back without torchvision (image-only processor)."""
    model, processor = models["sdpa"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc = tpx.load(str(tmp_path))
    assert type(adapter_for(loaded)) is Qwen3VLAdapter and proc.tokenizer.padding_side == "left"
    inputs, again = make_inputs(processor, 2), make_inputs(proc, 2)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**again).logits, atol=1e-5, rtol=0)
    assert tpx.load("tiny-qwen3-vl")[0].config.model_type == "qwen3_vl"
