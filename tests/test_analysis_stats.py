"""The paired bootstrap and the verdict rule on hand-made rows whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from tpx.analysis import stats


def _rows(values: dict[str, np.ndarray], tasks: np.ndarray, seeds: dict[str, int] | None = None) -> pd.DataFrame:
    out = []
    for label, v in values.items():
        for s in range((seeds or {}).get(label, 1)):
            out.append(pd.DataFrame({"benchmark": "organism", "task": tasks, "id": np.arange(len(tasks)),
                                     "label": label, "method": label.split("@")[0], "seed": s,
                                     "score": v if v.ndim == 1 else v[s]}))
    return pd.concat(out, ignore_index=True)


def test_constant_difference_has_a_degenerate_interval():
    rng = np.random.default_rng(0)
    tasks = np.repeat(["a", "b"], 50)
    b = rng.random(100)
    est = stats.compare(_rows({"x": b + 0.1, "y": b}, tasks), "x", "y")
    assert est.estimate == pytest.approx(10.0)
    assert est.ci_low == pytest.approx(10.0) and est.ci_high == pytest.approx(10.0)
    assert est.n_per_task == {"a": 50, "b": 50}


def test_pairing_narrows_the_interval_when_answers_are_correlated():
    rng = np.random.default_rng(1)
    tasks = np.repeat(["a", "b", "c"], 200)
    common = (rng.random(600) < 0.6).astype(float)
    flip = rng.random(600) < 0.05
    other = np.where(flip, 1 - common, common)
    est = stats.compare(_rows({"x": common, "y": other}, tasks), "x", "y")
    width = est.ci_high - est.ci_low
    # independent-samples standard error of the same difference, ×100
    se = 100 * math.sqrt(common.var() / 600 + other.var() / 600)
    assert width < 2 * 1.96 * se / 2  # paired: less than half the independent interval


def test_task_mean_weighs_tasks_equally():
    tasks = np.array(["a"] * 10 + ["b"] * 90)
    x = np.concatenate([np.ones(10), np.zeros(90)])
    est = stats.score(_rows({"x": x}, tasks), "x")
    assert est.estimate == pytest.approx(50.0)  # (100 + 0) / 2, not 10


def test_relative_difference_matches_hand_computation():
    tasks = np.repeat(["a", "b"], 4)
    base = np.array([1, 1, 1, 1, 1, 1, 0, 0], float)   # per task: a 1.0, b 0.5
    x = np.array([1, 1, 1, 0, 1, 0, 0, 0], float)      # a 0.75, b 0.25
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0], float)      # a 0.25, b 0.25
    est = stats.compare(_rows({"x": x, "y": y, "u": base}, tasks), "x", "y", baseline="u")
    # relative: x a 75 %, b 50 %; y a 25 %, b 50 % → mean of (50, 0) = 25 points
    assert est.estimate == pytest.approx(25.0)
    assert stats.score(_rows({"x": x, "u": base}, tasks), "x", baseline="u").estimate == pytest.approx(62.5)


def test_seeds_are_averaged_per_sample_and_their_spread_reported():
    tasks = np.repeat(["a"], 4)
    seeded = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], float)  # per seed 50, 25, 75
    rows = _rows({"r": seeded, "u": np.ones(4)}, tasks, seeds={"r": 3})
    est = stats.score(rows, "r")
    assert est.estimate == pytest.approx(50.0)
    spread = stats.seed_spread(rows, "r")
    assert spread["n_seeds"] == 3 and spread["min"] == 25 and spread["max"] == 75
    assert spread["std"] == pytest.approx(25.0)


def test_unpaired_configurations_are_refused():
    tasks = np.repeat(["a"], 4)
    rows = _rows({"x": np.ones(4), "y": np.zeros(4)}, tasks)
    rows = rows[~((rows["label"] == "y") & (rows["id"] == 3))]
    with pytest.raises(ValueError, match="same samples"):
        stats.compare(rows, "x", "y")
    with pytest.raises(ValueError, match="no rows labelled 'z'"):
        stats.compare(rows, "x", "z")


def test_interval_covers_the_truth_at_about_its_level():
    rng = np.random.default_rng(3)
    tasks = np.repeat(["a", "b"], 100)
    hits = 0
    for trial in range(60):
        x = (rng.random(200) < 0.7).astype(float)
        y = (rng.random(200) < 0.6).astype(float)
        est = stats.compare(_rows({"x": x, "y": y}, tasks), "x", "y", n_boot=400, seed=trial)
        hits += est.ci_low <= 10.0 <= est.ci_high
    assert hits >= 51  # ≥ 85 % of 60 at a nominal 95 %


@pytest.mark.parametrize(("low", "high", "direction", "expected"), [
    (0.5, 2.0, 1, "agrees"), (-2.0, -0.5, 1, "disagrees"), (-0.5, 2.0, 1, "inconclusive"),
    (-2.0, -0.5, -1, "agrees"), (0.5, 2.0, -1, "disagrees"), (0.0, 2.0, 1, "inconclusive"),
    (float("nan"), 1.0, 1, "inconclusive"),
    (-1.5, 1.5, 0, "agrees"), (0.5, 2.5, 0, "disagrees"), (-3.0, 1.0, 0, "inconclusive"),
])
def test_verdict_rule(low, high, direction, expected):
    assert stats.verdict(low, high, direction) == expected


def test_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(0.0, 1.0, 2)
    with pytest.raises(ValueError, match="ci_low"):
        stats.verdict(2.0, 1.0, 1)


def test_holm_and_bonferroni():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([0.01, float("nan")])[1])
    assert stats.bonferroni_level(5) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="m must be"):
        stats.bonferroni_level(0)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(4)
    tasks = np.repeat(["a", "b"], 30)
    rows = _rows({"x": rng.random(60), "y": rng.random(60)}, tasks)
    a, b = stats.compare(rows, "x", "y", seed=7), stats.compare(rows, "x", "y", seed=7)
    c = stats.compare(rows, "x", "y", seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_difference_of_independent_estimates():
    rng = np.random.default_rng(5)
    tasks = np.repeat(["a"], 100)
    a = stats.score(_rows({"x": (rng.random(100) < 0.8).astype(float)}, tasks), "x", seed=1)
    b = stats.score(_rows({"x": (rng.random(100) < 0.5).astype(float)}, tasks), "x", seed=2)
    d = stats.difference(a, b)
    assert d.estimate == pytest.approx(a.estimate - b.estimate)
    assert d.ci_low < d.estimate < d.ci_high
    # independent: the CI is wider than either one's
    assert d.ci_high - d.ci_low > max(a.ci_high - a.ci_low, b.ci_high - b.ci_low)


def test_a_baseline_that_answers_nothing_right_is_reported_not_raised():
    """A random tiny model scores 0 everywhere: relative scores are undefined, and every function says so."""
    from tpx.analysis import findings

    tasks = np.repeat(["a", "b"], 5)
    zeros = np.zeros(10)
    rows = _rows({"x": zeros, "y": zeros, "unpruned": zeros}, tasks)
    est = stats.compare(rows, "x", "y", baseline="unpruned")
    assert math.isnan(est.estimate) and math.isnan(est.ci_low) and "answers no sample right" in est.note
    one = stats.score(rows, "x", baseline="unpruned")
    assert math.isnan(one.estimate) and "no relative score" in one.note
    both = stats.difference(est, one)
    assert math.isnan(both.estimate) and "answers no sample right" in both.note
    plain = stats.compare(rows, "x", "y")  # no baseline: a defined zero with no spread
    assert (plain.estimate, plain.ci_low, plain.ci_high, plain.note) == (0.0, 0.0, 0.0, "")
    rec = findings.finding("nb", "k", "Q1", "claim", "tiny", {"a": findings.config("x")}, est, direction=1,
                           study="s", notes="mine")
    assert rec.verdict == "inconclusive" and rec.notes.startswith("undefined: the baseline") and rec.notes.endswith("; mine")


def test_a_value_that_does_not_exist_is_undefined_not_unpaired():
    """One kept token has no duplication (NaN): the comparison is undefined and says why; a missing row still raises."""
    tasks = np.repeat(["a"], 4)
    rows = _rows({"x": np.array([0.2, np.nan, 0.3, 0.1]), "y": np.array([0.1, 0.2, 0.3, 0.4])}, tasks)
    est = stats.compare(rows, "x", "y")
    assert math.isnan(est.estimate) and "has no value for ['x']" in est.note
    with pytest.raises(ValueError, match="did not answer the same samples"):
        stats.compare(rows[~((rows.label == "y") & (rows.id == 0))], "x", "y")
