"""Gemma 3 (`tpx.models.gemma3`, `tpx.models.gemma3_text`): the oracles every family passes, on a tiny Gemma 3
whose prompts are longer than its sliding window (16) and whose images attend to themselves in both directions,
and on a tiny LLaVA whose language model is Gemma 3 (the deep organism's shape).

1. retention 1.0 reproduces the unpruned model bit for bit (logits and greedy tokens);
2. a pruned run equals the unpruned model with the dropped positions masked, where the window counts kept tokens
   and each image's kept tokens stay one bidirectional block (tests/reference.py); and hook E equals the model run
   on the explicitly shortened sequence (its embeddings, `token_type_ids` and position ids);
3. recomputed attention rows equal eager `output_attentions` rows at every layer, image-token rows included.
Methods that need the vision tower's [CLS] (hook V) are refused on entry: SigLIP has none.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_inputs, random_array_image
from reference import MaskReference, check_mask_reference, check_retention_one, greedy, image_blocks, \
    reference_stages, spy

import tpx
from tpx.methods import variant
from tpx.models import adapter_for, tiny_gemma3
from tpx.models.gemma3_text import Gemma3Decoder
from tpx.models.tiny_gemma3 import GEMMA3_4B, gemma3_4b_geometry

N_NEW = 3
QUESTIONS = ["<start_of_image> What is shown in the image?",
             "How many objects are there in the picture? <start_of_image> What colour is the square? Describe it."]
REFUSED = [(n, h) for n in tpx.list_methods() for h in tpx.get_method(n).hooks if h == "V"]
EVERY = [(n, h) for n in tpx.list_methods() for h in tpx.get_method(n).hooks if h != "V"]
RETENTION = {"pdrop": 0.5}  # pdrop's equivalent budget cannot go below ~N/n_layers on a 4-layer model


def gemma3_inputs(processor, batch: int, seed: int = 0, token_types: bool = True) -> dict[str, torch.Tensor]:
    """Tiny Gemma 3 inputs: one 96-pixel image per row (36 tokens, a 6×6 grid), rows of different lengths."""
    images = [[random_array_image(seed + i, (96, 96))] for i in range(batch)]
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(images=images, text=QUESTIONS[:batch], return_tensors="pt", padding=True))
    if batch > 1:
        assert bool((inputs["attention_mask"] == 0).any())
    if not token_types:
        del inputs["token_type_ids"]
    return inputs


def at_layer(name: str, k: int):
    """The registry entry pruning before decoder layer `k` instead of its default."""
    return variant(name, name, layers=(k,))


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict = {}

    def get(attn: str):
        if attn not in cache:
            cache[attn] = tiny_gemma3(attn_implementation=attn, seed=1)
        return cache[attn]

    return get


def test_the_tiny_model_exercises_what_makes_gemma3_differ(built):
    model, processor = built("sdpa")
    inputs = gemma3_inputs(processor, 2, seed=3)
    text = model.config.text_config
    assert inputs["input_ids"].shape[1] > 3 * text.sliding_window  # the window cuts every prompt
    assert set(text.layer_types) == {"sliding_attention", "full_attention"}
    base = {k: v["rope_theta"] for k, v in text.rope_parameters.items()}
    assert base["sliding_attention"] != base["full_attention"]
    assert text.query_pre_attn_scalar != text.head_dim
    assert any(bool(layer.self_attn.q_norm.weight.abs().gt(0).all()) for layer in model.model.language_model.layers)
    layout = tpx.models.layout(model, inputs)
    assert layout.grids == ((6, 6),) and layout.n_visual == 36 and layout.bidirectional
    assert not tpx.models.layout(model, gemma3_inputs(processor, 2, seed=3, token_types=False)).bidirectional
    bad = dict(inputs, token_type_ids=torch.zeros_like(inputs["token_type_ids"]))
    with pytest.raises(ValueError, match="token_type_ids must be 1 exactly at the image tokens"):
        tpx.models.layout(model, bad)


@pytest.mark.parametrize(("name", "hook"), EVERY, ids=[f"{n}-{h}" for n, h in EVERY])
def test_retention_one_is_exact(built, name, hook):
    model, processor = built("sdpa")
    run = check_retention_one(model, gemma3_inputs(processor, 2, seed=2), name, hook, N_NEW)
    assert len(run.trace) == 2 * len(run.plan.stages)


@pytest.mark.parametrize(("name", "hook"), EVERY, ids=[f"{n}-{h}" for n, h in EVERY])
def test_matches_mask_reference(built, name, hook):
    model, processor = built("sdpa")
    check_mask_reference(model, gemma3_inputs(processor, 2, seed=10), name, hook, RETENTION.get(name, 0.25), N_NEW)


KS = [(a, n, k) for a in ("sdpa", "eager") for n in ("fastv", "random", "pooling", "dart") for k in (1, 2, 3)]


@pytest.mark.parametrize(("attn", "name", "k"), KS, ids=[f"{a}-{n}-K{k}" for a, n, k in KS])
def test_every_k_before_and_after_sliding_and_global_layers(built, attn, name, k):
    """Layers 0, 1 slide and layer 2 is global: K = 1, 2, 3 cut after each kind; batch 1 and a padded batch."""
    model, processor = built(attn)
    method = at_layer(name, k)
    check_retention_one(model, gemma3_inputs(processor, 1, seed=20 + k), method, "L", N_NEW)
    run = check_mask_reference(model, gemma3_inputs(processor, 2, seed=30 + k), method, "L", 0.25, N_NEW)
    assert run.trace[0].layer == k


def test_without_token_type_ids_the_image_is_causal(built):
    """A call without `token_type_ids` gets Gemma's causal masks, and so does the pruned sequence."""
    model, processor = built("sdpa")
    inputs = gemma3_inputs(processor, 2, seed=11, token_types=False)
    check_retention_one(model, inputs, "fastv", "L", N_NEW)
    check_mask_reference(model, inputs, "fastv", "L", 0.25, N_NEW)


@pytest.mark.parametrize("positions", ["keep", "renumber"])
def test_hook_e_equals_the_model_on_the_shortened_sequence(built, positions):
    """Hook E is exactly the model run on the shortened prompt: its embeddings, image blocks and position ids
    (the kept ones, or 0 … L'−1 renumbered); the window then counts kept tokens by construction."""
    model, processor = built("eager")
    inputs = gemma3_inputs(processor, 1, seed=12)
    with torch.no_grad():
        with tpx.pruning(model, "random", retention=0.25, positions=positions, seed=4) as run:
            logits = model(**inputs).logits
        ids, types = inputs["input_ids"], inputs["token_type_ids"]
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        embeds = model.get_input_embeddings()(ids).masked_scatter((ids == model.config.image_token_id)[..., None],
                                                                   features)
        kept = run.kept_positions[0]
        extra = {"position_ids": kept[None]} if positions == "keep" else {}
        ref = model(inputs_embeds=embeds[:, kept], attention_mask=torch.ones(1, kept.numel(), dtype=torch.long),
                    token_type_ids=types[:, kept], **extra).logits
    assert kept.numel() < ids.shape[1] - 20
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "hook"), REFUSED, ids=[f"{n}-{h}" for n, h in REFUSED])
def test_cls_methods_are_refused_on_entry_with_the_reason(built, name, hook):
    model, processor = built("sdpa")
    before = {id(h) for layer in model.model.language_model.layers for h in layer._forward_pre_hooks.values()}
    why = r"(no \[CLS\] token|does not record the attention patches receive)"
    with pytest.raises(ValueError, match=r"needs '(cls_attn|vision_received)'.*" + why):
        with tpx.pruning(model, name, retention=0.25, hook=hook):
            pass
    after = {id(h) for layer in model.model.language_model.layers for h in layer._forward_pre_hooks.values()}
    assert before == after and not model._forward_pre_hooks
    assert re.search(why, tpx.engine.reachable(model, name, 0.25, hook=hook))
    assert tpx.engine.reachable(model, "fastv", 0.25) is None


def _layer_inputs(model):
    """Pre-hooks recording what every decoder layer receives: its rotary and its mask."""
    seen: dict = {}
    handles = [layer.register_forward_pre_hook(
        lambda m, a, k, i=i: seen.setdefault(i, (k["position_embeddings"], k["attention_mask"])) and None,
        with_kwargs=True) for i, layer in enumerate(model.model.language_model.layers)]
    return seen, handles


@pytest.mark.parametrize("family", ["gemma3", "llava_gemma3"])
@pytest.mark.parametrize("batch", [1, 2])
def test_recomputed_rows_equal_eager_attention(built, family, batch):
    model, processor = built("eager") if family == "gemma3" else tiny_llava_gemma3("eager")
    inputs = gemma3_inputs(processor, batch, seed=40) if family == "gemma3" else make_inputs(processor, batch, 40)
    decoder = adapter_for(model).decoder
    assert isinstance(decoder, Gemma3Decoder)
    seen, handles = _layer_inputs(model)
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, output_hidden_states=True, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    length = inputs["input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(length, generator=g)[:6] for _ in range(batch)])
    image = (inputs["input_ids"] == model.config.image_token_id).nonzero()[:, 1].view(batch, -1)
    rows[:, 0], rows[:, 1], rows[:, 2] = length - 1, image[:, 0], image[:, image.shape[1] // 2]  # image rows too
    real = inputs["attention_mask"].gather(1, rows).bool()  # padded query rows are meaningless in both
    for i in range(decoder.n_layers):
        pe, mask = seen[i]
        want = out.attentions[i].gather(2, rows[:, None, :, None].expand(-1, out.attentions[i].shape[1], -1, length))
        for cache in (None, out.cache):  # keys recomputed, or read from the cache where it holds them all
            got = decoder.attention_rows(i, out.hidden_states[i], pe, rows, inputs["attention_mask"], cache=cache,
                                         mask=mask)
            torch.testing.assert_close(got.permute(0, 2, 1, 3)[real], want.permute(0, 2, 1, 3)[real], atol=1e-6,
                                       rtol=0)
        keys = decoder.keys(i, out.hidden_states[i], pe)
        if out.cache.layers[i].keys.shape[-2] == length:
            torch.testing.assert_close(decoder.keys(i, out.hidden_states[i], pe, cache=out.cache), keys, atol=1e-6,
                                       rtol=0)
    if family == "gemma3":  # image rows look ahead inside their image: the bidirectional block is in the rows
        first = decoder.attention_rows(0, out.hidden_states[0], seen[0][0], image[:, :1], inputs["attention_mask"],
                                       mask=seen[0][1])
        assert bool((first[..., image[0, 1]] > 0).all())


def test_rotary_needs_the_layer_type(built):
    model, _ = built("sdpa")
    decoder = adapter_for(model).decoder
    h = torch.randn(1, 5, model.config.text_config.hidden_size)
    pos = torch.arange(5)[None]
    local, global_ = decoder.rotary(h, pos, layer_idx=0), decoder.rotary(h, pos, layer_idx=2)
    assert not torch.equal(local[0], global_[0])
    with pytest.raises(ValueError, match="one rotary embedding per layer type"):
        decoder.rotary(h, pos)


# ---- LLaVA with a Gemma 3 language model (the deep organism's shape) ------------------------------------------

_LLAVA: dict = {}


def tiny_llava_gemma3(attn: str = "sdpa", seed: int = 1):
    """The tiny LLaVA's CLIP tower and processor with a random 4-layer Gemma 3 text model (window 32 < the
    ~165-token prompts; layers sliding, sliding, global, sliding), its RMSNorm weights drawn at random, no
    end-of-sequence token."""
    if attn in _LLAVA:
        return _LLAVA[attn]
    from transformers import Gemma3TextConfig, LlavaConfig, LlavaForConditionalGeneration

    base, processor = tpx.models.tiny(seed=seed)
    tok = processor.tokenizer
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                            sliding_window=32, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=None,  # greedy runs compare every step: no row may stop early
                            layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                         "sliding_attention"])
    config = LlavaConfig(vision_config=base.config.vision_config.to_dict(), text_config=text.to_dict(),
                         image_token_id=base.config.image_token_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=144)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        with torch.no_grad():
            for name, param in model.model.language_model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, 0.3)
    model.set_attn_implementation(attn)
    _LLAVA[attn] = (model.eval(), processor)
    return _LLAVA[attn]


LLAVA_CASES = ([("sdpa", n, h) for n, h in (("fastv", "L"), ("random", "E"), ("pooling", "L"), ("dart", "L"),
                                             ("fastervlm", "V"), ("visionzip", "V"), ("sparsevlm", "L"))]
               + [("eager", n, h) for n, h in (("fastv", "L"), ("visionzip", "V"))])


@pytest.mark.parametrize(("attn", "name", "hook"), LLAVA_CASES, ids=["-".join(c) for c in LLAVA_CASES])
def test_llava_with_gemma3_text_is_exact(one_thread, attn, name, hook):
    model, processor = tiny_llava_gemma3(attn)
    assert isinstance(adapter_for(model).decoder, Gemma3Decoder)
    check_retention_one(model, make_inputs(processor, 2, seed=5), name, hook, N_NEW)
    check_mask_reference(model, make_inputs(processor, 2, seed=6), name, hook, 0.25, N_NEW)


@pytest.mark.parametrize("k", [1, 3])
def test_llava_with_gemma3_text_at_other_k(one_thread, k):
    model, processor = tiny_llava_gemma3("sdpa")
    check_mask_reference(model, make_inputs(processor, 2, seed=7 + k), at_layer("fastv", k), "L", 0.25, N_NEW)


def test_load_tiny_gemma3(one_thread):
    model, processor = tpx.load("tiny-gemma3")
    assert type(adapter_for(model)).__name__ == "Gemma3Adapter"
    assert processor.tokenizer.padding_side == "left"
    inputs = gemma3_inputs(processor, 1, seed=1)
    with torch.no_grad(), tpx.pruning(model, "fastv", retention=0.25, layer=2) as run:
        tokens, _ = greedy(model, inputs, 2)
    assert run.trace[0].grid == (6, 6) and run.trace[0].n_keep == 9 and tokens.shape == (1, 2)


# ---- real-size geometry: google/gemma-3-4b-it's widths and processor, a real photo, 1 SigLIP + 2 text layers ----

@pytest.fixture(scope="module")
def real(one_thread):
    """The 4B geometry in eager attention, the Grace Hopper photo through the 896-pixel processor, and its image
    features computed once (every forward below reuses them: `mm_encoder_outputs`)."""
    from tpx.data import sample_picture

    model, processor = gemma3_4b_geometry(attn_implementation="eager", seed=2)
    inputs = dict(processor(images=[[sample_picture()]], text=["<start_of_image> Describe this image in detail."],
                            return_tensors="pt"))
    pixels = inputs.pop("pixel_values")
    with torch.no_grad():
        inputs["mm_encoder_outputs"] = {"image": model.model.get_image_features(pixel_values=pixels)}
    return model, processor, inputs, pixels


def _masked_run(model, inputs, method, hook, retention, **kw):
    """A pruned forward and the unpruned forward with the reference masks of its stages (tests/reference.py)."""
    outputs: list = []
    spied = tpx.methods.variant(method, method, selector=spy(tpx.get_method(method).selector, outputs))
    with tpx.pruning(model, spied, retention=retention, hook=hook, **kw) as run:
        pruned = model(**inputs).logits
    stages = reference_stages(run, outputs, tpx.models.layout(model, inputs).positions)
    ref = MaskReference(model, stages, inputs["input_ids"].shape[1], blocks=image_blocks(inputs["token_type_ids"]))
    try:
        full = model(**inputs).logits
    finally:
        ref.remove()
    return run, pruned, full.gather(1, run.kept_positions[..., None].expand(-1, -1, full.shape[-1]))


def test_real_size_geometry_and_oracles(real):
    model, processor, inputs, pixels = real
    tokens = GEMMA3_4B["mm_tokens_per_image"]
    assert pixels.shape == (1, 3, 896, 896) and processor.image_seq_length == tokens
    assert inputs["mm_encoder_outputs"]["image"].last_hidden_state.shape == (1, 64 * 64, 1152)  # 896 / 14 = 64
    layout = tpx.models.layout(model, inputs)
    assert layout.grids == ((16, 16),) and int(inputs["token_type_ids"].sum()) == tokens and layout.bidirectional
    seen, handles = _layer_inputs(model)
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    decoder, length = adapter_for(model).decoder, inputs["input_ids"].shape[1]
    image = layout.positions[0]
    rows = torch.tensor([[length - 1, image[0], image[137], image[-1], length - 5]])
    for i in range(decoder.n_layers):  # 3. rows = eager maps (a sliding layer, then a global one)
        got = decoder.attention_rows(i, out.hidden_states[i], seen[i][0], rows, inputs["attention_mask"],
                                     mask=seen[i][1])
        want = out.attentions[i][:, :, rows[0]]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with torch.no_grad():
        with tpx.pruning(model, "fastv", retention=1.0, layer=1) as run:  # 1. retention 1.0 is bit-exact
            assert torch.equal(model(**inputs).logits, out.logits)
        assert run.trace[0].grid == (16, 16) and run.trace[0].n_keep == tokens
        for method, hook, kw in (("fastv", "L", {"layer": 1}), ("pooling", "E", {})):  # 2. mask reference
            run, pruned, want = _masked_run(model, inputs, method, hook, 0.25, **kw)
            assert run.trace[0].grid == (16, 16) and run.trace[0].n_keep == 64
            torch.testing.assert_close(pruned, want, atol=1e-5, rtol=0)
