"""One suite for every model family: each registered method × each hook it supports (V included), against the
oracles of tests/reference.py.

1. retention 1.0 reproduces the unpruned model bit for bit (logits and greedy tokens);
2. a pruned run equals the unpruned model with the dropped positions masked (and merged tokens substituted):
   logits ≤ 1e-5 and the same greedy tokens, prefill and every decode step;
3. recomputed attention rows equal eager `output_attentions` rows, at every layer.

LLaVA-1.5 runs the full matrix (attention kernels × batch shapes) in tests/test_engine.py; here LLaVA-NeXT
(AnyRes: two grids per image, never-pruned newlines), Qwen2-VL (merged grid, 3-D M-RoPE), Qwen3-VL (q/k
norms, DeepStack features added after the first three layers, where the default K = 2 cuts), InternVL3 (dynamic
tiles and a thumbnail, 2×2 pixel shuffle, [CLS] pooled to the token grid) and LLaVA-OneVision (AnyRes-Max: the
canvas shrunk by interpolation, SigLIP without [CLS]) run every method with SDPA and a left-padded batch, plus
the eager kernel, batch 1 and Qwen2.5-VL (windowed vision tower) on a few. A new family is one entry in
FAMILIES; a new method is covered without new test code.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    internvl_inputs,
    llava_next_inputs,
    llava_onevision_inputs,
    make_inputs,
    qwen2_vl_inputs,
    qwen3_vl_inputs,
)
from reference import check_mask_reference, check_retention_one

import tpx
from tpx.engine import reachable
from tpx.models import (
    adapter_for,
    tiny,
    tiny_internvl,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_qwen2_vl,
    tiny_qwen3_vl,
)

N_NEW = 3
# family: (builder, inputs, 1-D positions in the reference loop)
FAMILIES = {
    "llava_next": (tiny_llava_next, llava_next_inputs, True),
    "qwen2_vl": (tiny_qwen2_vl, qwen2_vl_inputs, False),
    "qwen2_5_vl": (lambda **kw: tiny_qwen2_vl(version="2.5", **kw), qwen2_vl_inputs, False),
    "qwen3_vl": (tiny_qwen3_vl, qwen3_vl_inputs, False),
    "internvl": (tiny_internvl, internvl_inputs, True),
    "llava_onevision": (tiny_llava_onevision, llava_onevision_inputs, True),
}
EVERY_FAMILY = ("llava_next", "qwen2_vl", "qwen3_vl", "internvl", "llava_onevision")  # every method × hook
EVERY = [(name, hook) for name in tpx.list_methods() for hook in tpx.get_method(name).hooks]
# methods a family's adapter cannot feed: refused on entering tpx.pruning (test_refused_on_entry), not run
REFUSED = {(f, "hiprune"): "vision_received, vision_received_object from the vision tower"
           for f in ("qwen2_vl", "qwen3_vl", "internvl", "llava_onevision")}
SOME = [("fastv", "L"), ("pooling", "E"), ("fastervlm", "V")]
MASKED = ([(f, "sdpa", n, h) for f in EVERY_FAMILY for n, h in EVERY if (f, n) not in REFUSED]
          + [(f, "eager", n, h) for f in EVERY_FAMILY for n, h in SOME[:2]]
          + [(f, "eager", "fastervlm", "V") for f in ("internvl", "llava_onevision")]
          + [("qwen2_5_vl", "eager", n, h) for n, h in SOME])
EXACT = ([(f, a, 2, n, h) for f, a, n, h in MASKED]
         + [(f, "sdpa", 1, n, h) for f in EVERY_FAMILY for n, h in (("fastv", "L"), ("random", "E"))]
         + [(f, "sdpa", 1, "visionzip", "V") for f in ("internvl", "llava_onevision")])
RETENTION = {"pdrop": 0.5}  # pdrop's equivalent budget cannot go below ~N/n_layers on a 4-layer model


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict = {}

    def get(family: str, attn: str):
        if (family, attn) not in cache:
            cache[family, attn] = FAMILIES[family][0](attn_implementation=attn, seed=1)
        return cache[family, attn]

    return get


@pytest.mark.parametrize(("family", "attn", "batch", "name", "hook"), EXACT, ids=["-".join(map(str, c)) for c in EXACT])
def test_retention_one_is_exact(built, family, attn, batch, name, hook):
    model, processor = built(family, attn)
    inputs = FAMILIES[family][1](processor, batch, seed=batch)
    run = check_retention_one(model, inputs, name, hook, N_NEW)
    assert len(run.trace) == 2 * len(run.plan.stages)  # the forward's prefill and generate's


@pytest.mark.parametrize(("family", "attn", "name", "hook"), MASKED, ids=["-".join(c) for c in MASKED])
def test_matches_mask_reference(built, family, attn, name, hook):
    model, processor = built(family, attn)
    inputs = FAMILIES[family][1](processor, 2, seed=10)
    check_mask_reference(model, inputs, name, hook, RETENTION.get(name, 0.25), N_NEW, positions=FAMILIES[family][2])


@pytest.mark.parametrize(("family", "name"), sorted(REFUSED), ids=["-".join(c) for c in sorted(REFUSED)])
def test_refused_on_entry(built, family, name):
    model, _ = built(family, "sdpa")
    with pytest.raises(ValueError, match=f"{name} needs {REFUSED[family, name]}"):
        with tpx.pruning(model, name, retention=0.25):
            pytest.fail("entered the with block")
    assert not len(model._forward_pre_hooks)
    assert reachable(model, name, 0.25).startswith(f"{name} needs")


ROWS = [("llava", 1), ("llava", 2), ("llava_next", 2), ("qwen2_vl", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 2),
        ("internvl", 1), ("internvl", 2), ("llava_onevision", 1), ("llava_onevision", 2)]


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
