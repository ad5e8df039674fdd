"""The α sweep (Q4) over result rows: grid variants, the Table 6 layout, and the task-dependence rule on
hand-made rows whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tpx.analysis import findings, stats, sweep
from tpx.grid import grid

ALPHAS = (0.0, 0.5, 1.0)
SWEEP = sweep.variants(ALPHAS, ["dup"])


def _rows(acc: dict[str, dict[float, float]], n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Rows of the unpruned model and the dup-reading sweep: per task and α, a share `acc` of correct answers
    (placed at random among the samples, so two α differ on a random subset)."""
    rng = np.random.default_rng(seed)
    out = []
    for task, by_alpha in acc.items():
        for a, p in [(None, 1.0), *by_alpha.items()]:
            correct = np.zeros(n)
            correct[rng.permutation(n)[:round(p * n)]] = 1.0
            label = "unpruned" if a is None else f"{sweep._label(a, None if a == 1.0 else 'dup')} @L2"
            out += [{"benchmark": "organism", "task": task, "id": f"{task}/{i}", "label": label,
                     "method": "unpruned" if a is None else "alpha", "hook": "" if a is None else "L",
                     "layer": None if a is None else 2, "retention": 1.0 if a is None else 0.25, "seed": 0,
                     "score": s} for i, s in enumerate(correct)]
    return pd.DataFrame(out)


def test_variants_share_alpha_one_and_become_grid_entries():
    v = sweep.variants([0.0, 0.5, 1.0], ["last", "dup"])
    assert list(v) == ["alpha=0 last", "alpha=0.5 last", "alpha=1", "alpha=0 dup", "alpha=0.5 dup"]
    assert v["alpha=0.5 dup"] == {"method": "alpha", "alpha": 0.5, "uniqueness": "dup"}
    cells = grid(v, [0.25], hooks=["L"], layers=[2], label_depth=True)
    assert [c.label for c in cells][1:] == [f"{k} @L2" for k in v] and all(c.layer == 2 for c in cells[1:])
    for bad in ([1.5], [0.0, 0.0], []):
        with pytest.raises(ValueError, match="alphas"):
            sweep.variants(bad)
    with pytest.raises(ValueError, match="readings"):
        sweep.variants([0.0], ["cos"])


def test_alpha_table_and_mean_relative():
    rows = _rows({"exist": {0.0: 0.9, 0.5: 0.8, 1.0: 0.5}, "count": {0.0: 0.5, 0.5: 0.6, 1.0: 0.9}}, n=10)
    assert sweep.label_alphas(rows, SWEEP, "dup") == {0.0: "alpha=0 dup @L2", 0.5: "alpha=0.5 dup @L2",
                                                      1.0: "alpha=1 @L2"}
    table = sweep.alpha_table(rows, SWEEP, "dup")
    assert list(table.index) == ["exist", "count"] and list(table.columns) == ["unpruned", 0.0, 0.5, 1.0]
    assert table.loc["exist"].tolist() == pytest.approx([100, 90, 80, 50])
    assert sweep.mean_relative(table).tolist() == pytest.approx([70, 70, 70])
    with pytest.raises(ValueError, match="uniqueness='last'"):
        sweep.label_alphas(rows, SWEEP, "last")


def test_task_dependent_optimum_is_found_and_agrees():
    # exist prefers redundancy (alpha = 0), count prefers importance (alpha = 1): no single alpha fits both
    rows = _rows({"exist": {0.0: 0.9, 0.5: 0.85, 1.0: 0.5}, "count": {0.0: 0.5, 0.5: 0.55, 1.0: 0.9}})
    sets, comps = sweep.task_sets(rows, SWEEP, "dup", n_boot=2000)
    assert sets.loc["exist", "best_alpha"] == 0.0 and sets.loc["count", "best_alpha"] == 1.0
    assert sets.loc["exist", "near"] == [0.0, 0.5] and sets.loc["count", "near"] == [1.0]
    assert sets["level"].iloc[0] == pytest.approx(stats.bonferroni_level(4))  # 2 tasks x 2 alphas vs the best
    assert sweep.common_alphas(sets) == []
    dep = sweep.task_dependence(sets, comps)
    assert dep["alpha"] == 0.5 and dep["task"] == "count"  # 0.5 is in exist's set; count is where it falls short
    assert dep["estimate"].ci_high < 0 and dep["estimate"].estimate == pytest.approx(-35)
    rec = findings.finding("04", "dep", "Q4", "no single α", "m", {}, dep["estimate"], direction=-1, study="Table 6")
    assert rec.verdict == "agrees"


def test_one_alpha_for_every_task_is_inconclusive():
    rows = _rows({"exist": {0.0: 0.8, 0.5: 0.8, 1.0: 0.8}, "count": {0.0: 0.6, 0.5: 0.62, 1.0: 0.6}})
    sets, comps = sweep.task_sets(rows, SWEEP, "dup", n_boot=2000)
    assert sweep.common_alphas(sets) == [0.0, 0.5, 1.0]
    dep = sweep.task_dependence(sets, comps)
    assert dep["estimate"].ci_low <= 0 <= dep["estimate"].ci_high
    assert stats.verdict(dep["estimate"].ci_low, dep["estimate"].ci_high, -1) == "inconclusive"


def test_an_alpha_best_everywhere_gives_a_zero_estimate():
    rows = _rows({"exist": {0.0: 0.9, 0.5: 0.5, 1.0: 0.4}, "count": {0.0: 0.9, 0.5: 0.4, 1.0: 0.3}})
    sets, comps = sweep.task_sets(rows, SWEEP, "dup", n_boot=2000)
    dep = sweep.task_dependence(sets, comps)
    assert dep["alpha"] == 0.0 and dep["task"] is None and sweep.common_alphas(sets) == [0.0]
    assert (dep["estimate"].ci_low, dep["estimate"].ci_high) == (0.0, 0.0)
    assert stats.verdict(0.0, 0.0, -1) == "inconclusive"


def test_first_per_task_keeps_order_and_nests():
    from types import SimpleNamespace

    samples = [SimpleNamespace(task=t, id=f"{t}/{i}") for t in ("a", "b") for i in range(4)]
    assert [s.id for s in sweep.first_per_task(samples, 2)] == ["a/0", "a/1", "b/0", "b/1"]
    with pytest.raises(ValueError, match="n must be"):
        sweep.first_per_task(samples, 0)


def test_undefined_intervals_do_not_crash_the_task_rule():
    """NaN scores (nothing answerable) give NaN CIs: the rule reports them, it does not raise."""
    comps = pd.DataFrame([{"task": "a", "alpha": 0.5, "label": "alpha=0.5 dup", "best_label": "alpha=0 dup",
                           "estimate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "level": 0.95,
                           "n_per_task": 3, "in_set": True,
                           "_est": stats.Estimate(float("nan"), float("nan"), float("nan"), 0.95, float("nan"),
                                                  {"a": 3}, np.zeros(0), "undefined")}])
    sets = pd.DataFrame({"best_alpha": [0.0], "best_score": [float("nan")], "near": [[0.0, 0.5]], "spread": [0.0],
                         "n": [3], "level": [0.95]}, index=["a"])
    dep = sweep.task_dependence(sets, comps)
    assert dep["alpha"] in (0.0, 0.5) and dep["common"] == [0.0, 0.5]


def test_a_task_without_any_score_is_carried_not_raised():
    """A task whose answers all score NaN has no best α by value: it ties to the smallest α, and its CIs are NaN."""
    rows = _rows({"a": {0.0: 0.9, 0.5: 0.5, 1.0: 0.2}, "b": {0.0: 0.5, 0.5: 0.5, 1.0: 0.5}}, n=40)
    rows.loc[rows.task == "b", "score"] = np.nan
    sets, comps = sweep.task_sets(rows, SWEEP, "dup", n_boot=200)
    assert sets.loc["b", "best_alpha"] == 0.0 and comps[comps.task == "b"].ci_high.isna().all()
    dep = sweep.task_dependence(sets, comps)
    assert dep["alpha"] in ALPHAS
