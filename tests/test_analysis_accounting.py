"""Token accounting of training-aware compression (FastV†: TRR = TACR × TFRR)."""

import pandas as pd
import pytest

from tpx.analysis.accounting import reduction, token_table


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


def test_tacr_and_pruning_retention_per_model_family():
    from types import SimpleNamespace as NS

    from tpx.analysis.accounting import pruning_retention, tacr

    llava = NS(config=NS(model_type="llava", vision_config=NS()))
    pooled = NS(config=NS(model_type="llava", tpx_compression={"method": "pooling", "retention": 0.25, "hook": "E"}))
    qwen = NS(config=NS(model_type="qwen2_vl", vision_config=NS(spatial_merge_size=2)))
    assert (tacr(llava), tacr(pooled), tacr(qwen)) == (1, 4, 4)
    assert pruning_retention(llava, 1 / 9) == pytest.approx(1 / 9)
    assert pruning_retention(pooled, 1 / 9) == pytest.approx(1 / 9)  # nested inside tpx: counts raw tokens
    assert pruning_retention(qwen, 1 / 9) == pytest.approx(4 / 9)    # the merger acts before tpx
    with pytest.raises(ValueError, match="TACR 4"):
        pruning_retention(qwen, 1 / 3)
    with pytest.raises(ValueError, match="total retention"):
        pruning_retention(llava, 0)
