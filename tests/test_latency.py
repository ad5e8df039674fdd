"""Latency harness on the tiny model: table structure, analytic FLOPs vs FlopCounterMode, KV-cache bytes.
No test asserts a timing."""

from __future__ import annotations

import math

import pytest

from tpx.latency import kv_bytes, layer_lengths, layer_macs, llm_flops, measure

FAST = dict(rounds=1, min_run_time=0.01, max_new_tokens=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def table(tiny):
    model, processor = tiny
    return measure(model, processor, methods=["fastv", "pooling", "random"], retentions=[0.25], **FAST)


def test_structure(table):
    assert list(table.method) == ["unpruned", "fastv", "pooling", "random"]
    for column in ("prefill_ms", "prefill_iqr_ms", "decode_ms_per_token", "e2e_ms", "select_ms", "peak_mem_mb",
                   "flops", "flops_counted", "kv_bytes", "kv_bytes_measured", "prefill_speedup", "flops_rel"):
        assert table[column].map(math.isfinite).all(), column
    assert (table.prefill_ms > 0).all() and (table.e2e_ms > 0).all() and (table.peak_mem_mb > 0).all()
    base = table.iloc[0]
    assert base.prefill_speedup == 1.0 and base.flops_rel == 1.0 and base.select_ms == 0.0 and base.stages == []
    assert (table.select_ms[1:] > 0).all() and (table.select_ms < table.prefill_ms).all()  # a part of the prefill
    assert list(table.n_keep) == [144, 36, 36, 36] and table.stages[1] == [(2, 36)] and table.stages[2] == [(0, 36)]
    assert set(table.attn_implementation) == {"sdpa"} and set(table.device) == {"cpu"}


def test_analytic_flops_match_flop_counter(table):
    # unpruned and pre-LLM pruning: exact; FastV adds the recomputed attention row of layer K−1 (≈ 1.5 %)
    error = table.flops_counted / table.flops - 1
    assert error.abs().max() < 0.03, error.tolist()
    assert error[table.method != "fastv"].abs().max() < 1e-9


def test_eager_flops_match_and_implementation_restored(tiny):
    model, processor = tiny
    df = measure(model, processor, methods=["fastv"], retentions=[0.5], attn_implementation="eager", **FAST)
    assert set(df.attn_implementation) == {"eager"}
    assert (df.flops_counted / df.flops - 1).abs().max() < 0.03
    assert model.config.text_config._attn_implementation == "sdpa"


def test_kv_bytes_equal_the_cache_and_shrink(table):
    assert (table.kv_bytes == table.kv_bytes_measured).all()
    assert (table.kv_bytes[1:] < table.kv_bytes[0]).all() and (table.kv_rel[1:] < 1).all()
    # FastV keeps the full cache in layers 0..1 (K = 2): (2·162 + 2·54) / (4·162)
    fastv = table.set_index("method").loc["fastv"]
    assert fastv.kv_rel == pytest.approx((2 * fastv.n_tokens + 2 * (fastv.n_tokens - 108)) / (4 * fastv.n_tokens))


def test_formulas_by_hand(tiny):
    model, _ = tiny
    assert layer_macs(10, 8, 20) == 4 * 10 * 64 + 2 * 100 * 8 + 3 * 10 * 8 * 20
    assert layer_macs(10, 8, 20, d_kv=4) == 2 * 10 * 64 + 2 * 10 * 8 * 4 + 2 * 100 * 8 + 3 * 10 * 8 * 20
    assert layer_lengths(4, 100, 64, []) == [100] * 4
    assert layer_lengths(4, 100, 64, [(2, 16)]) == [100, 100, 52, 52]
    assert layer_lengths(4, 100, 64, [(0, 16)]) == [52] * 4
    assert layer_lengths(6, 100, 64, [(1, 32), (3, 16), (5, 8)]) == [100, 68, 68, 52, 52, 44]
    # tiny: d 64, MLP 128, 2 kv heads of 16 -> d_kv 32; 4 bytes per float
    assert llm_flops(model, [10] * 4, batch=2) == 2 * 2 * 4 * layer_macs(10, 64, 128, 32)
    assert kv_bytes(model, [10, 10, 5, 5], batch=3) == 2 * 3 * 2 * 16 * 4 * 30


def test_validation(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="max_new_tokens must be an int ≥ 2"):
        measure(model, processor, max_new_tokens=1)
    with pytest.raises(ValueError, match="retention must be in"):
        measure(model, processor, retentions=[0.0], **FAST)


def test_proxy_has_llava_15_geometry():
    from tpx.latency import proxy

    model, processor = proxy(hidden=64, layers=2)
    text = model.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size) == (64, 172, 2, 32000)
    assert model.config.text_config._attn_implementation == "sdpa" and not model.training
    df = measure(model, processor, methods=["fastv"], retentions=[0.25], flops=False, layer=1, clock="process", **FAST)
    assert df.n_visual.tolist() == [576, 576] and df.n_keep.tolist() == [576, 144]
    assert set(df.clock) == {"process"} and (df.prefill_ms > 0).all() and (df.decode_ms_per_token > 0).all()
    with pytest.raises(ValueError, match="clock must be one of"):
        measure(model, processor, clock="cpu", **FAST)
    with pytest.raises(ValueError, match="multiple of 64"):
        proxy(hidden=100)
