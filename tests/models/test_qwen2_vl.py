"""The Qwen2-VL / Qwen2.5-VL adapter on tiny random models: merged-grid layout, M-RoPE, engine oracles.

A 168×224 image gives `image_grid_thw = [1, 12, 16]`: 192 vision patches, merged 2×2 into a 6×8 grid of 48
`<|image_pad|>` tokens with 3-D (t, h, w) positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import MaskReference

import tpx
from tpx import select
from tpx.models import Qwen2VLAdapter, adapter_for, tiny_qwen2_vl

N_NEW = 3
PROMPT = "<|im_start|>user\n{}{}<|im_end|>\n<|im_start|>assistant\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QUESTIONS = ["What is shown in the image?", "How many objects are there in the picture, and what colour is the square?"]
METHODS = [(name, hook) for name in ("random", "pooling", "fastv", "dart") if name in tpx.list_methods()
           for hook in tpx.get_method(name).hooks if hook != "V"]
# every method under SDPA with a left-padded batch; the eager kernel and batch 1 on a subset (CPU time)
EXACT = [("eager", 2, n, h) for n, h in METHODS] + [("sdpa", 1, "random", "E"), ("sdpa", 1, "fastv", "L")]
MASKED = [("sdpa", n, h) for n, h in METHODS] + [("eager", "pooling", "E"), ("eager", "fastv", "L")]


@pytest.fixture(scope="module")
def models():
    built = {attn: tiny_qwen2_vl(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}
    built["2.5"] = tiny_qwen2_vl(version="2.5", attn_implementation="eager", seed=1)
    return built


def _image(seed: int, size: tuple[int, int] = (168, 224)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def make_inputs(processor, batch: int, seed: int = 0, sizes=None, per_row: int = 1) -> dict[str, torch.Tensor]:
    sizes = sizes or [(168, 224)] * (batch * per_row)
    images = [_image(seed + i, size) for i, size in enumerate(sizes)]
    texts = [PROMPT.format(IMAGE * per_row, QUESTIONS[i % 2]) for i in range(batch)]
    inputs = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    if batch > 1:
        assert bool((inputs["attention_mask"] == 0).any())
    return inputs


def _generate(model, inputs):
    out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits


def reference_generate(model, inputs, n_new):
    """Greedy decoding without a cache; the model recomputes the M-RoPE positions of the whole sequence each step."""
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
    tokens, logits = [], []
    for _ in range(n_new):
        out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"], use_cache=False)
        step = out.logits[:, -1]
        logits.append(step)
        nxt = step.argmax(-1, keepdim=True)
        tokens.append(nxt)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        types = torch.cat([types, torch.zeros_like(nxt, dtype=types.dtype)], 1)
    return torch.cat(tokens, 1), logits


def reference_stages(model, layout, entry, kept, inputs, pool):
    """`MaskReference` stages of a one-stage run (pooling: merged per image segment from layer K's input)."""
    subs = None
    if pool:
        with torch.no_grad():
            hs = model(**inputs, output_hidden_states=True).hidden_states[entry.layer]
        d, sizes = hs.shape[-1], [r * c for r, c in layout.grids]
        slots, feats, start = [], [], 0
        for grid, size, share in zip(layout.grids, sizes, select.split_budget(entry.n_keep, sizes), strict=True):
            visual = layout.positions[:, start:start + size]
            merged = select.pool2d(hs.gather(1, visual[..., None].expand(-1, -1, d)), share, grid)
            slots.append(visual.gather(1, merged.index))
            feats.append(merged.features)
            start += size
        subs = (torch.cat(slots, 1), torch.cat(feats, 1))
    return [(entry.layer, kept, subs)]


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


# ---- engine oracles ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("attn", "batch", "name", "hook"), EXACT, ids=["-".join(map(str, c)) for c in EXACT])
def test_retention_one_is_exact(models, attn, batch, name, hook):
    model, processor = models[attn]
    inputs = make_inputs(processor, batch, seed=batch)
    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref_tokens, ref_steps = _generate(model, inputs)
        with tpx.pruning(model, name, retention=1.0, hook=hook, seed=3) as run:
            logits = model(**inputs).logits
            tokens, steps = _generate(model, inputs)
    assert [e.n_keep for e in run.trace] == [48, 48]
    assert torch.equal(logits, ref_logits) and torch.equal(tokens, ref_tokens)
    assert all(torch.equal(a, b) for a, b in zip(steps, ref_steps, strict=True))


def _check_mask_reference(model, processor, name, hook):
    inputs = make_inputs(processor, 2, seed=10)
    layout = adapter_for(model).layout(inputs["input_ids"], **_call(inputs))
    with torch.no_grad():
        with tpx.pruning(model, name, retention=0.25, hook=hook, seed=7) as run:
            logits = model(**inputs).logits
        with tpx.pruning(model, name, retention=0.25, hook=hook, seed=7) as again:
            tokens, steps = _generate(model, inputs)
        kept, entry = run.kept_positions, run.trace[0]
        assert torch.equal(again.kept_positions, kept)  # same seed, same prefill: same selection
        stages = reference_stages(model, layout, entry, kept, inputs, pool=name == "pooling")
        ref = MaskReference(model, stages, inputs["input_ids"].shape[1])
        try:
            full = model(**inputs).logits
            ref_tokens, ref_steps = reference_generate(model, inputs, N_NEW)
        finally:
            ref.remove()
    assert entry.n_keep == 12
    ref_logits = full.gather(1, kept[..., None].expand(-1, -1, full.shape[-1]))
    real = inputs["attention_mask"].gather(1, kept).bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=0)
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("attn", "name", "hook"), MASKED, ids=["-".join(c) for c in MASKED])
def test_matches_mask_reference(models, attn, name, hook):
    """Pruned logits and greedy tokens equal the unpruned model with dropped positions masked: the kept
    tokens keep their 3-D M-RoPE positions (hook E included, where generate's prefill prunes at layer 0)."""
    _check_mask_reference(*models[attn], name, hook)


@pytest.mark.parametrize(("name", "hook"), [("fastv", "L"), ("pooling", "E")])
def test_qwen2_5_matches_mask_reference(models, name, hook):
    _check_mask_reference(*models["2.5"], name, hook)


@pytest.mark.parametrize(("key", "batch"), [("eager", 1), ("eager", 2), ("2.5", 2)])
def test_recomputed_rows_equal_eager_attention(models, key, batch):
    model, processor = models[key]
    inputs = make_inputs(processor, batch, seed=40)
    adapter = adapter_for(model)
    seen = {}
    hook = adapter.layers[0].register_forward_pre_hook(
        lambda m, a, k: seen.setdefault("pe", k["position_embeddings"]) and None, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        hook.remove()
    length = inputs["input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(length, generator=g)[:5] for _ in range(batch)])
    rows[:, 0] = length - 1
    mask2d = inputs["attention_mask"]
    real = mask2d.gather(1, rows).bool()
    for layer in range(adapter.n_layers):
        got = adapter.decoder.attention_rows(layer, out.hidden_states[layer], seen["pe"], rows, mask2d)
        want = out.attentions[layer].gather(2, rows[:, None, :, None].expand(-1, got.shape[1], -1, length))
        torch.testing.assert_close(got.permute(0, 2, 1, 3)[real], want.permute(0, 2, 1, 3)[real], atol=1e-6, rtol=0)


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
