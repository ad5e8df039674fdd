"""Timing repeats: one time per (repeat, configuration), configurations interleaved."""

import pytest


def test_timing_repeats_rows_interleaved(tiny, one_thread):
    from tpx.timing import timing_repeats

    model, processor = tiny
    configs = {"unpruned": {"method": None}, "fastv": {"method": "fastv", "retention": 0.5, "layer": 1}}
    reps = timing_repeats(model, processor, configs, repeats=2, max_new_tokens=2, progress=False)
    assert reps["label"].tolist() == ["unpruned", "fastv"] * 2 and reps["repeat"].tolist() == [0, 0, 1, 1]
    assert (reps[["prefill_ms", "e2e_ms"]] > 0).all().all() and set(reps["method"]) == {"unpruned", "fastv"}
    # the engine's choosing time is its own column, a part of the prefill it was timed in (0 unpruned)
    pruned = reps[reps["label"] == "fastv"]
    assert (reps.loc[reps["label"] == "unpruned", "select_ms"] == 0).all() and (pruned["select_ms"] > 0).all()
    assert (pruned["select_ms"] < pruned["prefill_ms"]).all()
    with pytest.raises(ValueError, match="repeats"):
        timing_repeats(model, processor, configs, repeats=1)
