"""Q1 measures on hand-made rows: the depth table, per-configuration CIs, the kept-row excess and the mechanism rule."""

import numpy as np
import pandas as pd
import pytest

from tpx.analysis import position


def _answers(labels, n=100, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for label, p, hook, layer, r, n_keep, seeds in labels:
        for s in range(seeds):
            for task in ("a", "b"):
                out.append(pd.DataFrame({"benchmark": "organism", "task": task, "id": [f"{task}/{i}" for i in range(n)],
                                         "label": label, "method": label.split()[0], "hook": hook, "layer": layer,
                                         "retention": r, "seed": s, "n_keep": n_keep,
                                         "score": (rng.random(n) < p).astype(float)}))
    return pd.concat(out, ignore_index=True)


def test_depth_table_orders_by_tokens_and_k():
    rows = _answers([("unpruned", 0.9, "", None, 1.0, 144, 1), ("random @L0", 0.3, "L", 0, 1 / 144, 1, 3),
                     ("random @L2", 0.85, "L", 2, 1 / 144, 1, 3), ("random @L2", 0.88, "L", 2, 4 / 144, 4, 3)])
    t = position.depth_table(rows, n_boot=200)
    assert t[["K", "n_keep"]].values.tolist() == [[0, 1], [2, 1], [2, 4]]
    assert t.loc[0, "estimate"] < 50 < t.loc[1, "estimate"]
    assert (t["ci_low"] <= t["estimate"]).all() and (t["estimate"] <= t["ci_high"]).all()
    assert set(t["n_seeds"]) == {3} and (t["seed_min"] <= t["seed_max"]).all()


def _kept(label, order, blind, rows, n=120, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"benchmark": "organism", "task": np.repeat(["a", "b"], n // 2), "id": [f"x/{i}" for i in range(n)],
                         "label": label, "method": "fastv", "order": order, "blind": blind, "seed": 0,
                         "kept_row": np.clip(rows + 0.02 * rng.standard_normal(n), 0, 1)})


def test_mechanism_rule():
    def frame(real, blank, noise, reverse):
        return pd.concat([_kept("fastv natural", "natural", "", real), _kept("fastv natural blank", "natural", "blank", blank),
                          _kept("fastv natural noise", "natural", "noise", noise), _kept("fastv reverse", "reverse", "", reverse),
                          _kept("fastv reverse blank", "reverse", "blank", 0.5), _kept("fastv reverse noise", "reverse", "noise", 0.5)])
    yes = position.mechanism(frame(0.6, 0.58, 0.57, 0.4), n_boot=300)
    assert yes["verdict"] == "mechanism reproduced" and all(yes["holds"].values())
    assert yes["parts"]["bias on real images"].estimate == pytest.approx(10.0, abs=1.0)
    no = position.mechanism(frame(0.6, 0.58, 0.45, 0.4), n_boot=300)
    assert no["verdict"] == "mechanism not reproduced" and not no["holds"]["bias on noise images"]
    assert no["holds"]["follows position ids"]
