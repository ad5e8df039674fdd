"""One suite for every model family: each registered method × each hook it supports (V included), against the
oracles of tests/reference.py.

1. retention 1.0 reproduces the unpruned model bit for bit (logits and greedy tokens);
2. a pruned run equals the unpruned model with the dropped positions masked (and merged tokens substituted):
   logits ≤ 1e-5 and the same greedy tokens, prefill and every decode step;
3. recomputed attention rows equal eager `output_attentions` rows, at every layer.

LLaVA-1.5 runs the full matrix (attention kernels × batch shapes) in tests/test_engine.py; here LLaVA-NeXT
(AnyRes: two grids per image, never-pruned newlines) and Qwen2-VL (merged grid, 3-D M-RoPE) run every method
with SDPA and a left-padded batch, plus the eager kernel, batch 1 and Qwen2.5-VL (windowed vision tower) on a
few. A new family is one entry in FAMILIES; a new method is covered without new test code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import llava_next_inputs, make_inputs, qwen2_vl_inputs
from reference import MaskReference, generate_positions, reference_generate, reference_stages, spy

import tpx
from tpx.models import adapter_for, layout, tiny, tiny_llava_next, tiny_qwen2_vl

N_NEW = 3
# family: (builder, inputs, 1-D positions in the reference loop)
FAMILIES = {
    "llava_next": (tiny_llava_next, llava_next_inputs, True),
    "qwen2_vl": (tiny_qwen2_vl, qwen2_vl_inputs, False),
    "qwen2_5_vl": (lambda **kw: tiny_qwen2_vl(version="2.5", **kw), qwen2_vl_inputs, False),
}
EVERY = [(name, hook) for name in tpx.list_methods() for hook in tpx.get_method(name).hooks]
SOME = [("fastv", "L"), ("pooling", "E"), ("fastervlm", "V")]
MASKED = ([(f, "sdpa", n, h) for f in ("llava_next", "qwen2_vl") for n, h in EVERY]
          + [(f, "eager", n, h) for f in ("llava_next", "qwen2_vl") for n, h in SOME[:2]]
          + [("qwen2_5_vl", "eager", n, h) for n, h in SOME])
EXACT = ([(f, a, 2, n, h) for f, a, n, h in MASKED]
         + [(f, "sdpa", 1, n, h) for f in ("llava_next", "qwen2_vl") for n, h in (("fastv", "L"), ("random", "E"))])
RETENTION = {"pdrop": 0.5}  # pdrop's equivalent budget cannot go below ~N/n_layers on a 4-layer model


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict = {}

    def get(family: str, attn: str):
        if (family, attn) not in cache:
            cache[family, attn] = FAMILIES[family][0](attn_implementation=attn, seed=1)
        return cache[family, attn]

    return get


def _generate(model, inputs):
    out = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits


@pytest.mark.parametrize(("family", "attn", "batch", "name", "hook"), EXACT, ids=["-".join(map(str, c)) for c in EXACT])
def test_retention_one_is_exact(built, family, attn, batch, name, hook):
    model, processor = built(family, attn)
    inputs = FAMILIES[family][1](processor, batch, seed=batch)
    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref_tokens, ref_steps = _generate(model, inputs)
        with tpx.pruning(model, name, retention=1.0, hook=hook, seed=3) as run:
            logits = model(**inputs).logits
            tokens, steps = _generate(model, inputs)
    n = layout(model, inputs).n_visual
    assert [e.n_keep for e in run.trace] == [n] * len(run.trace) and len(run.trace) == 2 * len(run.plan.stages)
    assert torch.equal(logits, ref_logits) and torch.equal(tokens, ref_tokens)
    assert all(torch.equal(a, b) for a, b in zip(steps, ref_steps, strict=True))


@pytest.mark.parametrize(("family", "attn", "name", "hook"), MASKED, ids=["-".join(c) for c in MASKED])
def test_matches_mask_reference(built, family, attn, name, hook):
    model, processor = built(family, attn)
    inputs = FAMILIES[family][1](processor, 2, seed=10)
    method = tpx.get_method(name)
    outputs: list = []
    spied = dataclasses.replace(method, selector=spy(method.selector, outputs))
    retention = RETENTION.get(name, 0.25)
    # 1-D RoPE: the positions generate() uses, so both prefills see identical inputs (key norms depend on them)
    positions = {"position_ids": generate_positions(inputs["attention_mask"])} if FAMILIES[family][2] else {}
    with torch.no_grad():
        with tpx.pruning(model, spied, retention=retention, hook=hook, seed=7) as run:
            logits = model(**inputs, **positions).logits
        with tpx.pruning(model, spied, retention=retention, hook=hook, seed=7) as again:
            tokens, steps = _generate(model, inputs)
        kept = run.kept_positions
        assert torch.equal(again.kept_positions, kept)  # same seed, same prefill: same selection
        visual = layout(model, inputs).positions
        stages = reference_stages(run, outputs[: len(outputs) // 2], visual)
        ref = MaskReference(model, stages, inputs["input_ids"].shape[1])
        try:
            full = model(**inputs, **positions).logits
            ref_tokens, ref_steps = reference_generate(model, inputs, ref, N_NEW, positions=FAMILIES[family][2])
        finally:
            ref.remove()
    entry = run.trace[-1]
    assert logits.shape[1] == inputs["input_ids"].shape[1] - entry.n_visual + entry.n_keep
    ref_logits = full.gather(1, kept[..., None].expand(-1, -1, full.shape[-1]))
    real = inputs["attention_mask"].gather(1, kept).bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=0)
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


ROWS = [("llava", 1), ("llava", 2), ("llava_next", 2), ("qwen2_vl", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 2)]


@pytest.mark.parametrize(("family", "batch"), ROWS, ids=[f"{f}-{b}" for f, b in ROWS])
def test_recomputed_rows_equal_eager_attention(built, family, batch):
    if family == "llava":
        model, processor = tiny(attn_implementation="eager", seed=1)
        inputs = make_inputs(processor, batch, seed=40)
    else:
        model, processor = built(family, "eager")
        inputs = FAMILIES[family][1](processor, batch, seed=40)
    decoder = adapter_for(model).decoder
    seen = {}
    hook = decoder.layers[0].register_forward_pre_hook(
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
    real = mask2d.gather(1, rows).bool()  # padded query rows are meaningless in both
    for i in range(decoder.n_layers):
        got = decoder.attention_rows(i, out.hidden_states[i], seen["pe"], rows, mask2d)
        want = out.attentions[i].gather(2, rows[:, None, :, None].expand(-1, got.shape[1], -1, length))
        torch.testing.assert_close(got.permute(0, 2, 1, 3)[real], want.permute(0, 2, 1, 3)[real], atol=1e-6, rtol=0)


def test_every_adapter_satisfies_the_protocol(built):
    from tpx.models.base import Adapter, Decoder

    for family in FAMILIES:
        adapter = adapter_for(built(family, "eager")[0])
        assert isinstance(adapter, Adapter) and isinstance(adapter.decoder, Decoder)
    assert isinstance(adapter_for(tiny(seed=1)[0]), Adapter)
