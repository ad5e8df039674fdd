"""The α sweep (Q4): one evaluate call per configuration, the Table 6 layout, best α with ties and noise."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tpx import evaluate as ev
from tpx.analysis import sweep
from tpx.data import load_samples


pytestmark = pytest.mark.usefixtures("one_thread")


def _table(rows: dict[str, list[float]], alphas=(0.0, 0.5, 1.0), unpruned=None) -> pd.DataFrame:
    t = pd.DataFrame.from_dict(rows, orient="index", columns=list(alphas))
    t.insert(0, "unpruned", unpruned or [100.0] * len(rows))
    return t


def test_sweep_calls_evaluate_once_per_config_and_shares_fastv(tiny, monkeypatch):
    model, processor = tiny
    samples = load_samples("organism", n=2, tasks=["exist", "count"])
    calls = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: calls.append(k) or real(*a, **k))
    df = sweep.alpha_sweep(model, processor, samples, alphas=[0.0, 0.5, 1.0], batch_size=4, max_new_tokens=2,
                           progress=False)
    # unpruned once, then (last, 0), (last, .5), (last, 1), (dup, 0), (dup, .5): alpha = 1 is shared
    assert len(calls) == 1 + 5 and calls[0]["methods"] == [None]
    assert [(k.get("uniqueness"), k.get("alpha")) for k in calls[1:]] == [
        ("last", 0.0), ("last", 0.5), ("last", 1.0), ("dup", 0.0), ("dup", 0.5)]
    assert len(df) == 2 * 3 * 2 and list(df.columns) == ["benchmark", "task", "uniqueness", "alpha", "score", "n",
                                                          "se", "coverage", "kept_row", "unpruned"]
    assert list(df.uniqueness.unique()) == ["last", "dup"] and set(df.n) == {2}
    one = df[df.alpha == 1.0].set_index(["uniqueness", "task"]).score
    assert (one["last"] == one["dup"]).all()
    fastv = ev.summarize(real(model, processor, samples, methods=["fastv"], batch_size=4, max_new_tokens=2,
                              progress=False)).set_index("task").score
    assert one["dup"].to_dict() == fastv.to_dict()  # alpha = 1 is FastV
    base = ev.summarize(real(model, processor, samples, methods=[None], batch_size=4, max_new_tokens=2,
                             progress=False)).set_index("task").score
    assert df.groupby("task").unpruned.first().to_dict() == base.to_dict()
    table = sweep.alpha_table(df, "dup")
    assert list(table.index) == ["exist", "count"] and list(table.columns) == ["unpruned", 0.0, 0.5, 1.0]


@pytest.mark.parametrize("kwargs", [dict(alphas=[1.5]), dict(alphas=[]), dict(alphas=[0.1, 0.1]),
                                    dict(readings=["first"]), dict(readings=[])])
def test_sweep_validates_before_work(tiny, monkeypatch, kwargs):
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluate ran"))
    with pytest.raises(ValueError, match="alphas|readings"):
        sweep.alpha_sweep(*tiny, load_samples("organism", n=1, tasks=["exist"]), progress=False, **kwargs)


def test_per_task_real_benchmark_is_one_row():
    df = pd.DataFrame(dict(benchmark="gqa", task=["a", "b", "b", "a"], method="alpha", retention=0.25, seed=0,
                           score=[1.0, 0.0, 1.0, 1.0], coverage=[1.0, 0.5, 0.5, 1.0], kept_row=0.5))
    out = sweep._per_task(df)
    assert len(out) == 1 and out.task[0] == "gqa" and out.score[0] == 75.0 and out.coverage[0] == 0.75
    assert out.se[0] == pytest.approx(100 * 0.5 / 2)  # std 0.5 over 4 answers


def test_alpha_table_layout_and_unknown_reading():
    rows = [dict(benchmark="organism", task=t, uniqueness=u, alpha=a, score=10 * a + i, n=4, se=1.0, coverage=1.0,
                 kept_row=0.5, unpruned=50.0 + i) for u in ("last", "dup") for a in (0.0, 1.0)
            for i, t in enumerate(["read", "exist"])]
    table = sweep.alpha_table(pd.DataFrame(rows), "last")
    assert list(table.index) == ["read", "exist"] and list(table.columns) == ["unpruned", 0.0, 1.0]
    assert table.loc["exist", 1.0] == 11.0 and table.loc["exist", "unpruned"] == 51.0
    with pytest.raises(ValueError, match="uniqueness='x'"):
        sweep.alpha_table(pd.DataFrame(rows), "x")


def test_best_alpha_ties_noise_and_preference():
    table = _table({"low": [80, 70, 60], "high": [60, 70, 80], "flat": [90, 90, 90], "mid": [70, 80, 70],
                    "tie": [75, 60, 75]})
    best = sweep.best_alpha(table)
    assert best.best_alpha.to_dict() == {"low": 0.0, "high": 1.0, "flat": 0.0, "mid": 0.5, "tie": 0.0}
    assert best.loc["tie", "ties"] == [0.0, 1.0] and best.loc["high", "spread"] == 20
    assert best.preference.to_dict() == {"low": "redundancy first", "high": "importance first", "flat": "flat",
                                         "mid": "either", "tie": "either"}
    noisy = sweep.best_alpha(table, tol=pd.Series({"low": 10.0, "high": 25.0}))
    assert noisy.loc["low", "near"] == [0.0, 0.5] and noisy.loc["high", "preference"] == "flat"
    assert noisy.loc["mid", "near"] == [0.5]  # tasks missing from the Series get no margin


def test_common_alphas():
    table = _table({"a": [80, 75, 60], "b": [60, 75, 80]})
    assert sweep.common_alphas(table) == []  # the study's claim: no single alpha is best everywhere
    assert sweep.common_alphas(table, tol=5.0) == [0.5]
    assert sweep.common_alphas(table, tol=pd.Series({"a": 20.0, "b": 20.0})) == [0.0, 0.5, 1.0]


def test_mean_relative_and_tolerance():
    table = _table({"a": [50, 100, 25], "b": [100, 50, 50], "z": [0, 0, 0]}, unpruned=[100.0, 50.0, 0.0])
    assert sweep.mean_relative(table).to_dict() == {0.0: 125.0, 0.5: 100.0, 1.0: 62.5}  # z: undefined, left out
    df = pd.DataFrame(dict(task=["a", "a", "a", "b", "c"], se=[11.0, 13.0, 12.0, math.nan, 0.0], n=[10, 10, 10, 1, 20]))
    assert sweep.tolerance(df).to_dict() == {"a": 12.0, "b": 100.0, "c": 5.0}  # floor: one answer
