"""The packed-sequence trap (issue 15, item 3).

transformers reads gaps in position ids as the boundaries of packed sequences whenever a call carries neither a
2-D attention mask nor a cache, and then builds a block-diagonal mask: every token after a gap stops seeing the
tokens before it. Kept tokens after pruning carry exactly such gaps (`positions="keep"`), so every mask the
engine builds is made without position ids (`Decoder.causal_mask`, `Gemma3Decoder.causal_mask`), and a pruned
call without mask and cache must equal the same call with an all-ones mask and a cache, on every family.

1. the premise, measured on the explicitly shortened sequence: gapped ids without mask or cache change the
   logits (the trap is real in the installed transformers, so test 2 can fail);
2. the guard, per family, at hook E (the LLM's input is gapped from layer 0) and hook L (gapped from K = 2).
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
from test_gemma3 import gemma3_inputs

import tpx
from tpx.models import (
    tiny,
    tiny_gemma3,
    tiny_internvl,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_qwen2_vl,
    tiny_qwen3_vl,
)

FAMILIES = {
    "llava": (tiny, make_inputs),
    "llava_next": (tiny_llava_next, llava_next_inputs),
    "qwen2_vl": (tiny_qwen2_vl, qwen2_vl_inputs),
    "qwen3_vl": (tiny_qwen3_vl, qwen3_vl_inputs),
    "internvl": (tiny_internvl, internvl_inputs),
    "llava_onevision": (tiny_llava_onevision, llava_onevision_inputs),
    "gemma3": (tiny_gemma3, gemma3_inputs),
}
CASES = [(f, n, h) for f in FAMILIES for n, h in (("random", "E"), ("fastv", "L"))]


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = FAMILIES[family][0](attn_implementation="sdpa", seed=1)
        return cache[family]

    return get


def test_gapped_ids_without_mask_or_cache_are_read_as_packed_sequences(built):
    """The trap itself: the language model on a shortened sequence with its original (gapped) position ids gives
    other logits without a mask and cache than with an all-ones mask."""
    model, processor = built("llava")
    inputs = make_inputs(processor, 1, seed=21)
    g = torch.Generator().manual_seed(3)
    length = inputs["input_ids"].shape[1]
    kept = torch.sort(torch.randperm(length, generator=g)[: length // 3]).values
    kept[-1] = length - 1
    assert bool((kept.diff() > 1).any())
    lm = model.model.language_model
    embeds = torch.randn(1, kept.numel(), lm.config.hidden_size, generator=g)
    with torch.no_grad():
        bare = lm(inputs_embeds=embeds, position_ids=kept[None], use_cache=False).last_hidden_state
        masked = lm(inputs_embeds=embeds, position_ids=kept[None], use_cache=False,
                    attention_mask=torch.ones(1, kept.numel(), dtype=torch.long)).last_hidden_state
    assert (bare - masked).abs().max() > 1e-3, "transformers no longer reads gapped position ids as packed sequences"


@pytest.mark.parametrize(("family", "name", "hook"), CASES, ids=["-".join(c) for c in CASES])
def test_pruned_call_without_mask_or_cache_is_not_read_as_packed(built, family, name, hook):
    """A pruned call with neither a 2-D mask nor a cache equals the same call with an all-ones mask and a cache:
    the kept tokens' gapped position ids never reach a mask builder."""
    model, processor = built(family)
    inputs = FAMILIES[family][1](processor, 1, seed=21)
    assert bool(inputs["attention_mask"].all())
    bare = {k: v for k, v in inputs.items() if k != "attention_mask"}
    with torch.no_grad():
        with tpx.pruning(model, name, retention=0.25, hook=hook, seed=5) as run:
            got = model(**bare, use_cache=False).logits
        with tpx.pruning(model, name, retention=0.25, hook=hook, seed=5) as again:
            want = model(**inputs, use_cache=True).logits
    kept = run.kept_positions[0]
    assert torch.equal(kept, again.kept_positions[0])
    assert bool((kept.diff() > 1).any()), "the kept tokens must carry gapped positions"
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
