"""Token accounting of training-aware compression (FastV†: TRR = TACR × TFRR)."""

import pandas as pd
import pytest

from tpx.accounting import reduction, token_table


def test_fastv_dagger_reading():
    # Qwen2-VL-like: 2x2 merge (TACR 4), then keep 4/9 of the merged tokens -> raw / 9: the study's "↓88.9%"
    r = reduction(576, 144, 64)
    assert r["TACR"] == 4 and r["TFRR"] == pytest.approx(2.25) and r["TRR"] == pytest.approx(9)
    assert r["reduction_pct"] == pytest.approx(88.888, abs=1e-2)
    plain = reduction(144, 144, 16)  # the same kept count without a training-time merge
    assert plain["TACR"] == 1 and plain["TRR"] == r["TRR"]


@pytest.mark.parametrize("args", [(144, 200, 16), (144, 36, 40), (144, 36, 0), (144.0, 36, 9), (True, 1, 1)])
def test_reduction_rejects_inconsistent_counts(args):
    with pytest.raises(ValueError, match="raw|native|kept"):
        reduction(*args)


def test_token_table_accounts_each_model():
    def frame(method, retention, kept, scores):
        return pd.DataFrame([dict(task=t, method=method, retention=retention, seed=0, n_keep=kept, score=s)
                             for t, s in scores])

    full = pd.concat([frame("unpruned", 1.0, 144, [("a", 1), ("a", 0), ("b", 1)]),
                      frame("fastv", 1 / 9, 16, [("a", 0), ("a", 0), ("b", 1)])])
    pooled = frame("fastv", 1 / 9, 16, [("a", 1), ("a", 1), ("b", 0)])
    t = token_table({"full": full, "pooled": pooled}, raw=144, natives={"full": 144, "pooled": 36})
    row = t[(t.model == "pooled") & (t.task == "a")].iloc[0]
    assert (row.kept, row.TACR, row.TFRR, row.TRR, row.score, row.n) == (16, 4, 2.25, 9, 100, 2)
    avg = t[(t.model == "full") & (t.method == "unpruned") & (t.task == "Avg")].iloc[0]
    assert avg.score == pytest.approx(75) and avg.TRR == 1  # mean of task means (50, 100), not of samples
    with pytest.raises(ValueError, match="natives"):
        token_table({"x": full}, 144, {})
