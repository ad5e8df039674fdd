"""Agreement with the unpruned answer and the difficult subset, on hand-made rows whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from tpx.analysis import measures

TASKS = np.repeat(["a", "b"], 4)
TRUTH = ["cat", "2", "red", "yes", "dog", "3", "blue", "no"]


def _rows(answers: dict[str, list[str]], retention: float = 0.25, seeds: dict[str, int] | None = None) -> pd.DataFrame:
    out = []
    for label, ans in answers.items():
        for s in range((seeds or {}).get(label, 1)):
            a = ans[s] if isinstance(ans[0], list) else ans
            out.append(pd.DataFrame({
                "benchmark": "organism", "task": TASKS, "id": [f"{t}/{i}" for i, t in enumerate(TASKS)], "label": label,
                "method": label.split(" ")[0], "hook": "E" if label != "unpruned" else "", "layer": None,
                "retention": 1.0 if label == "unpruned" else retention, "seed": s, "answer": a,
                "score": [float(x.strip().lower() == t) for x, t in zip(a, TRUTH)]}))
    return pd.concat(out, ignore_index=True)


UNPRUNED = ["cat", "2", "red", "yes", "dog", "3", "blue", "yes"]     # a 4/4, b 3/4
DOWN = ["cat", "1", "red", "no", "dog", "3", "green", "yes"]        # wrong: a/1, a/3, b/6, b/7
METHOD = ["The Cat.", "two", "blue", "yes", "dog", "4", "blue", "no"]  # normalised: cat, 2, blue, yes | dog, 4, blue, no


def test_agreement_compares_normalised_answers_with_the_unpruned_ones():
    rows = measures.add_agreement(_rows({"unpruned": UNPRUNED, "m": METHOD}))
    mine = rows[rows["label"] == "m"][measures.AGREEMENT].tolist()
    assert mine == [1, 1, 0, 1, 1, 0, 1, 0]  # "The Cat." = "cat", "two" = "2"
    assert (rows[rows["label"] == "unpruned"][measures.AGREEMENT] == 1).all()
    with pytest.raises(ValueError, match="needs the 'unpruned' rows"):
        measures.add_agreement(_rows({"m": METHOD}))


def test_difficult_subset_is_what_the_reference_gets_wrong():
    rows = _rows({"unpruned": UNPRUNED, "down": DOWN, "m": METHOD})
    hard = measures.difficult_subset(rows, "down")
    assert sorted(set(hard["id"])) == ["a/1", "a/3", "b/6", "b/7"] and set(hard["label"]) == {"unpruned", "down", "m"}
    # a seeded reference counts its mean over seeds: wrong once in two seeds is not correct
    seeded = _rows({"down": [DOWN, TRUTH]}, seeds={"down": 2})
    assert sorted(set(measures.difficult_subset(seeded, "down")["id"])) == ["a/1", "a/3", "b/6", "b/7"]
    assert measures.difficult_subset(seeded, "down", correct=0.5).empty
    with pytest.raises(ValueError, match="no rows labelled 'nope'"):
        measures.difficult_subset(rows, "nope")


def test_measures_table_matches_hand_computation():
    rows = _rows({"unpruned": UNPRUNED, "down": DOWN, "m": METHOD})
    table = measures.measures_table(rows, "down", n_boot=200).set_index("label")
    m, base, down = table.loc["m"], table.loc["unpruned"], table.loc["down"]
    # scores are exact matches (not normalised): m is right on a/3 | b/4, b/6, b/7: a 1/4, b 3/4
    assert m["score"] == pytest.approx(100 * (0.25 / 1.0 + 0.75 / 0.75) / 2)
    assert m["agreement"] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)  # answers are compared normalised
    # on the subset {a/1, a/3, b/6, b/7}: m is right on a/3, b/6, b/7
    assert m["difficult"] == pytest.approx(100 * (1 / 2 + 2 / 2) / 2) and down["difficult"] == pytest.approx(0.0)
    assert base["difficult"] == pytest.approx(100 * (2 / 2 + 1 / 2) / 2)  # the ceiling: b/7 wrong unpruned
    assert (table["n_difficult"] == 4).all() and (table["n_per_task"] == 4).all()
    assert m["agreement_low"] <= m["agreement"] <= m["agreement_high"]
    assert list(table.index) == ["unpruned", "down", "m"] and (table["retention"] == 0.25).all()
