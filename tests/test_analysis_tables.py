"""Method × task tables: relative scores, Avg, seed spread, reachability and the evaluation grid."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tpx.analysis import tables


def _rows(method, retention, seed, task, scores, kept=None):
    return [{"id": f"{task}{i}", "benchmark": "organism", "task": task, "method": method, "retention": retention,
             "seed": seed, "score": float(s), "kept": kept} for i, s in enumerate(scores)]


@pytest.fixture
def df():
    rows = _rows("unpruned", 1.0, 0, "a", [1, 1, 1, 1]) + _rows("unpruned", 1.0, 0, "b", [1, 1, 0, 0])
    rows += _rows("fastv", 0.25, 0, "a", [1, 1, 0, 0]) + _rows("fastv", 0.25, 0, "b", [1, 1, 0, 0])
    for seed, (sa, sb) in enumerate([([1, 1, 1, 0], [1, 0, 0, 0]), ([1, 0, 0, 0], [1, 1, 0, 0])]):
        rows += _rows("random", 0.25, seed, "a", sa) + _rows("random", 0.25, seed, "b", sb)
    return pd.DataFrame(rows)


def test_relative_scores_avg_and_seed_spread(df):
    t = tables.method_table(df)
    mean, std = t["mean"], t["std"]
    assert list(mean.columns) == ["a", "b", "Avg"]
    assert list(t.index) == [(1.0, "unpruned"), (0.25, "fastv"), (0.25, "random")]
    assert mean.loc[(1.0, "unpruned")].tolist() == [100.0, 100.0, 100.0]
    assert mean.loc[(0.25, "fastv")].tolist() == [50.0, 100.0, 75.0]
    # random: seed 0 → a 75 %, b 50 % of 50 = 50 %; seed 1 → a 25 %, b 100 %; Avg per seed 62.5 and 62.5
    assert mean.loc[(0.25, "random")].tolist() == [50.0, 75.0, 62.5]
    assert std.loc[(0.25, "random"), "a"] == pytest.approx(math.sqrt(2) * 25)
    assert std.loc[(0.25, "random"), "Avg"] == 0.0
    assert math.isnan(std.loc[(0.25, "fastv"), "a"])
    assert t["n_seeds"].loc[(0.25, "random"), "a"] == 2


def test_raw_scores_avg_over_a_subset(df):
    t = tables.method_table(df, tasks=["b", "a"], average=["a"], relative=False)["mean"]
    assert list(t.columns) == ["b", "a", "Avg"]
    assert t.loc[(0.25, "fastv")].tolist() == [50.0, 50.0, 50.0]  # raw scores; Avg is relative over a only


def test_format_table_marks_spread(df):
    text = tables.format_table(tables.method_table(df), digits=1)
    assert text.loc[(0.25, "fastv"), "a"] == "50.0"
    assert text.loc[(0.25, "random"), "a"] == "50.0 ± 35.4"


def test_method_table_errors(df):
    with pytest.raises(ValueError, match="unpruned baseline"):
        tables.method_table(df[df["method"] != "unpruned"])
    with pytest.raises(ValueError, match=r"columns \['c'\]"):
        tables.method_table(df, tasks=["a", "c"])


def test_spatial_table_per_method():
    kept_bottom, kept_top = [2, 3], [0, 1]   # 2x2 grid
    df = pd.DataFrame(_rows("fastv", 0.5, 0, "a", [1, 1], kept_bottom) + _rows("random", 0.5, 0, "a", [1], kept_top)
                      + _rows("unpruned", 1.0, 0, "a", [1]))
    t = tables.spatial_table(df, (2, 2))
    assert t.loc[(0.5, "fastv"), "mean_row"] == 1.0 and t.loc[(0.5, "random"), "mean_row"] == 0.0
    assert t.loc[(0.5, "fastv"), "n_keep"] == 2 and (1.0, "unpruned") not in t.index


def test_seeded():
    from tpx.grid import seeded

    assert seeded("random") and not seeded("fastv") and not seeded("pooling")
    assert not seeded("dart")


def test_task_columns_in_order(df):
    mixed = pd.concat([df, df.assign(benchmark="pope", task="adversarial")])
    assert tables.task_columns(mixed) == ["a", "b", "pope"]
