"""Evaluation-protocol tables on hand-made rows with known answers, and the runs on the tiny model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tpx.analysis import protocol


def rows(spec: dict[tuple[str, float, int], dict[str, list[float]]], blind: str = "") -> pd.DataFrame:
    """evaluate-like rows: (method, retention, seed) → task → per-answer scores; ids are task-index."""
    out = []
    for (method, retention, seed), tasks in spec.items():
        for task, scores in tasks.items():
            out += [dict(id=f"{task}-{i}", benchmark="organism", task=task, method=method, retention=retention,
                         seed=seed, blind=blind, answer=f"a{s}", reference="a1.0", score=s)
                    for i, s in enumerate(scores)]
    return pd.DataFrame(out)


BASE = {"exist": [1, 1], "locate": [1, 1], "count": [1, 0]}                         # 100, 100, 50 -> mean 83.3
GRID = rows({
    ("unpruned", 1.0, 0): BASE,
    ("fastv", 0.25, 0): {"exist": [1, 1], "locate": [0, 0], "count": [1, 0]},       # locate -100, mean -33.3
    ("random", 0.25, 0): {"exist": [1, 0], "locate": [1, 1], "count": [1, 0]},      # exist -50
    ("random", 0.25, 1): {"exist": [1, 1], "locate": [1, 0], "count": [0, 0]},      # locate -50, count -50
})


def test_task_scores_mean_is_unweighted_over_tasks():
    scores = protocol.task_scores(GRID)
    assert list(scores.columns) == ["exist", "locate", "count", "mean"]
    assert scores.loc[("unpruned", 1.0, 0), "mean"] == pytest.approx(250 / 3)
    assert scores.loc[("fastv", 0.25, 0)].tolist()[:3] == [100, 0, 50]


def test_task_drops_and_what_the_average_hides():
    drops = protocol.task_drops(GRID)
    assert list(drops.index) == [("fastv", 0.25), ("random", 0.25)]
    assert drops.loc[("fastv", 0.25)].tolist() == pytest.approx([0, -100, 0, -100 / 3])
    assert drops.loc[("random", 0.25)].tolist() == pytest.approx([-25, -25, -25, -25])  # seeds averaged
    hides = protocol.average_hides(GRID, task="locate")
    assert hides.loc[("fastv", 0.25), "worst_task"] == "locate"
    assert hides.loc[("fastv", 0.25), "worst_over_mean"] == pytest.approx(3.0)
    assert hides.loc[("fastv", 0.25), "locate_drop"] == -100
    with pytest.raises(ValueError, match="task 'grounding' is not in the rows"):
        protocol.average_hides(GRID, task="grounding")


def test_seed_spread():
    spread = protocol.seed_spread(GRID, "random")
    assert spread.loc[(0.25, "exist")].to_dict() == pytest.approx(
        dict(n_seeds=2, mean=75, std=math.sqrt(2 * 25 ** 2), min=50, max=100, range=50))
    assert spread.loc[(0.25, "mean"), "range"] == pytest.approx(200 / 3 - 50)  # seed 0: 66.7, seed 1: 50
    with pytest.raises(ValueError, match="method 'dart' is not in the rows"):
        protocol.seed_spread(GRID, "dart")


def test_vision_need_sorted_with_mean_last():
    unpruned = ("unpruned", 1.0, 0)
    blind = pd.concat([rows({unpruned: BASE}), rows({unpruned: {"exist": [1, 1], "locate": [0, 0], "count": [0, 0]}},
                                                     "no_image"),
                       rows({unpruned: {"exist": [1, 0], "locate": [0, 1], "count": [0, 0]}}, "blank")])
    table = protocol.vision_need(blind)
    assert list(table.index) == ["locate", "count", "exist", "mean"]
    assert table.loc["locate"].tolist() == [100, 50, 0, 50]
    assert table.loc["exist", "need"] == 0 and table.loc["count", "need"] == 50
    with pytest.raises(ValueError, match="no blind='blank' run"):
        protocol.vision_need(blind[blind.blind != "blank"])


def test_batch_size_table_agreement():
    one = GRID[GRID.method.isin(["unpruned", "fastv"])]
    other = one.copy()
    other.loc[(other.method == "fastv") & (other.id == "locate-0"), ["answer", "score"]] = ["a1.0", 1.0]
    table = protocol.batch_size_table(pd.concat([one.assign(batch_size=1), other.assign(batch_size=8)]))
    assert table.loc[("unpruned", 8)].tolist() == pytest.approx([250 / 3, 0, 100, 0])
    assert table.loc[("fastv", 8), "n_changed"] == 1 and table.loc[("fastv", 8), "agree"] == pytest.approx(500 / 6)
    assert table.loc[("fastv", 8), "change"] == pytest.approx(50 / 3)


def test_padding_table_keeps_the_error():
    ok = GRID[GRID.method == "unpruned"].assign(error="")
    right = ok.assign(answer="junk", score=0.0)
    refused = ok.assign(method="fastv", answer=None, score=math.nan, error="batches must be left-padded")
    table = protocol.padding_table(pd.concat([ok.assign(side="left"), right.assign(side="right"),
                                              refused.assign(side="right")]))
    assert table.loc[("unpruned", "left"), "agree"] == 100 and table.loc[("unpruned", "right"), "agree"] == 0
    assert table.loc[("unpruned", "right"), "score"] == 0 and math.isnan(table.loc[("fastv", "right"), "score"])
    assert table.loc[("fastv", "right"), "error"] == "batches must be left-padded"


def measured(method, impl, stages, prefill, flops, n_visual=576):
    return dict(method=method, attn_implementation=impl, stages=stages, n_keep=stages[-1][1] if stages else n_visual,
                n_visual=n_visual, prefill_ms=prefill, prefill_iqr_ms=prefill / 20, decode_ms_per_token=prefill / 10,
                e2e_ms=2 * prefill, e2e_iqr_ms=prefill / 10,
                select_ms=0.0 if not stages else 0.5, peak_mem_mb=100.0, flops=flops, kv_bytes=flops)


def test_summary_table_against_the_first_unpruned_run():
    df = pd.DataFrame([measured("unpruned", "sdpa", [], 100, 1000), measured("fastv", "sdpa", [(2, 192)], 50, 400),
                       measured("unpruned", "eager", [], 150, 1000), measured("fastv", "eager", [(2, 192)], 90, 400)])
    table = protocol.summary_table(df)
    assert table.loc[("sdpa", "fastv"), "FLOPs %"] == 40 and table.loc[("sdpa", "fastv"), "time/FLOPs"] == 1.25
    assert table.loc[("eager", "unpruned"), "prefill time %"] == 150  # eager's cost against the SDPA baseline
    assert table.loc[("eager", "fastv"), "stages"] == 1 and table.loc[("eager", "fastv"), "KV cache %"] == 40


def test_time_fit_and_excess():
    df = pd.DataFrame([measured("unpruned", "sdpa", [], 100, 1000), measured("random", "sdpa", [(0, 100)], 40, 250),
                       measured("pdrop", "sdpa", [(2, 300), (4, 100)], 60, 400)])
    table = protocol.summary_table(df)
    intercept, slope = protocol.time_fit(table)  # through (100, 100) and (25, 40): time = 20 + 0.8 FLOPs
    assert (intercept, slope) == pytest.approx((20, 0.8))
    assert protocol.excess_time(table, (intercept, slope)).tolist() == pytest.approx([0, 0, 60 - 52])
    with pytest.raises(ValueError, match="two FLOPs values"):
        protocol.time_fit(table, calibrate=("unpruned",))
    assert table["prefill IQR %"].tolist() == pytest.approx([5, 2, 3])


def test_visual_per_layer():
    df = pd.DataFrame([measured("pdrop", "sdpa", [(1, 8), (3, 2)], 1, 1, n_visual=16)])
    per_layer = protocol.visual_per_layer(df, 4)
    assert per_layer.n_visual.tolist() == [16, 8, 8, 2] and per_layer.layer.tolist() == [0, 1, 2, 3]
