"""`tpx.models.prefix.reuse_prefix`: decoder layers before a configuration's first cut are replayed from an earlier
configuration only when their inputs are bit-for-bit the same, and a replayed run equals the computed one bit for
bit (logits of every generated step, tokens, kept sets) — on LLaVA, Qwen3-VL (DeepStack adds features after the
first layers) and Gemma 3 (sliding-window cache layers)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, qwen3_vl_inputs
from test_gemma3 import gemma3_inputs

import tpx
from tpx.models import adapter_for, tiny, tiny_gemma3, tiny_qwen3_vl
from tpx.models.prefix import reuse_prefix

FAMILIES = {"llava": (tiny, make_inputs), "qwen3_vl": (tiny_qwen3_vl, qwen3_vl_inputs),
            "gemma3": (tiny_gemma3, gemma3_inputs)}


@pytest.fixture(scope="module")
def built(one_thread):
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            model, processor = FAMILIES[family][0](attn_implementation="sdpa", seed=1)
            cache[family] = model, processor, FAMILIES[family][1](processor, 2, seed=31)
        return cache[family]

    return get


def answer(model, inputs, method=None, **kw):
    """Greedy tokens, every step's logits and the kept positions of one configuration."""
    with torch.inference_mode(), tpx.pruning(model, method, **kw) as run:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences, torch.stack(out.logits), run.kept_positions


@pytest.mark.parametrize("family", list(FAMILIES))
def test_replayed_layers_give_the_computed_run(built, family):
    model, _, inputs = built(family)
    configs = [dict(method="fastv", retention=0.25, layer=2), dict(method="fastv", retention=0.25, layer=1),
               dict(method="random", retention=0.25, hook="L", layer=2, seed=4)]
    alone = [answer(model, inputs, **c) for c in configs]
    with reuse_prefix(model) as stats:
        answer(model, inputs)  # the unpruned run records every layer
        calls = []
        for c, want in zip(configs, alone):
            before = dict(stats)
            got = answer(model, inputs, **c)
            calls.append(stats["reused"] - before["reused"])
            for g, w in zip(got, want):
                assert torch.equal(g, w)
    assert calls == [2, 1, 2]  # exactly the layers before each configuration's cut
    assert not any("forward" in vars(layer) for layer in adapter_for(model).decoder.layers)


def test_other_inputs_hook_e_and_decode_steps_are_computed(built):
    model, processor, inputs = built("llava")
    other = make_inputs(processor, 2, seed=32)
    with reuse_prefix(model) as stats:
        answer(model, inputs)
        n = stats["calls"]
        answer(model, inputs, "random", retention=0.25, hook="E", seed=1)  # the pruned sequence enters layer 0
        answer(model, other)  # other images
        assert stats["reused"] == 0 and stats["calls"] == 3 * n  # prefill calls only: decode steps are not counted


def test_a_hook_inside_a_layer_stops_reuse(built):
    model, _, inputs = built("llava")
    fired = []
    layer0 = adapter_for(model).decoder.layers[0]
    handle = layer0.self_attn.register_forward_hook(lambda *a: fired.append(1))
    try:
        with reuse_prefix(model) as stats:
            answer(model, inputs)
            answer(model, inputs, "fastv", retention=0.25, layer=2)
    finally:
        handle.remove()
    assert stats["reused"] == 1  # layer 1 only
    assert len(fired) == 2 * 3  # layer 0's attention ran at both prefills and every decode step


def test_cannot_nest(built):
    model, _, _ = built("llava")
    with reuse_prefix(model):
        with pytest.raises(RuntimeError, match="cannot nest"):
            with reuse_prefix(model):
                pass
    assert not any("forward" in vars(layer) for layer in adapter_for(model).decoder.layers)


def test_only_the_layers_before_upto_are_recorded_and_the_longest_call_is_kept(built):
    """`upto` bounds the memory: layers from `upto` on run untouched. One call is kept per layer, replaced by a
    longer one: after a K = 1 configuration (layer 1 saw the pruned sequence) the unpruned run's full-length
    layer 1 replaces it, so a K = 2 configuration then shares both layers."""
    model, _, inputs = built("llava")
    layers = adapter_for(model).decoder.layers
    want = answer(model, inputs, "fastv", retention=0.25, layer=2)
    with reuse_prefix(model, upto=2) as stats:
        assert ["forward" in vars(layer) for layer in layers] == [True, True, False, False]
        answer(model, inputs, "fastv", retention=0.25, layer=1)
        answer(model, inputs)  # layer 0 replayed; layer 1 computed at full length, replacing the pruned call
        assert stats["reused"] == 1
        got = answer(model, inputs, "fastv", retention=0.25, layer=2)
        assert stats["reused"] == 3
    for g, w in zip(got, want):
        assert torch.equal(g, w)
