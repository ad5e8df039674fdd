"""Token accounting of training-aware compression (FastV†: TRR = TACR × TFRR)."""

import numpy as np
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


def test_token_counts_and_operating_points_per_model():
    """raw / native from each model's own layout count, and the FastV† design refused with its reason, not raised."""
    from types import SimpleNamespace as NS

    from tpx.analysis.accounting import operating_points, token_counts

    llava = NS(config=NS(model_type="llava", vision_config=NS()))
    pooled = NS(config=NS(model_type="llava", tpx_compression={"method": "pooling", "retention": 0.25, "hook": "E"}))
    qwen = NS(config=NS(model_type="qwen2_vl", vision_config=NS(spatial_merge_size=2)))
    assert token_counts(llava, 144) == (144, 144)
    assert token_counts(pooled, 144) == (144, 36)   # the compression acts inside tpx on the layout's tokens
    assert token_counts(qwen, 9) == (36, 9)         # the merger acted before: the layout holds merged tokens
    same = operating_points(llava, pooled, [36, 16, 9], 144, 144)
    assert same.full.tolist() == pytest.approx([0.25, 16 / 144, 9 / 144])
    assert same.trained.isna().tolist() == [True, False, False] and "not below" in same.trained_reason[0]
    other = operating_points(qwen, pooled, [36, 16, 9], 36, 144)
    assert other.full.isna().tolist() == [True, True, False] and "TACR 4" in other.full_reason[0]
    assert other.trained.isna().all() and "different raw tokens (36 vs 144)" in other.trained_reason[2]
    t = token_table({"q": pd.DataFrame([dict(task="a", method="unpruned", retention=1.0, seed=0, n_keep=9, score=1)]),
                     "p": pd.DataFrame([dict(task="a", method="unpruned", retention=1.0, seed=0, n_keep=36, score=0)])},
                    raw={"q": 36, "p": 144}, natives={"q": 9, "p": 36})
    assert t.set_index("model").loc["q", "TACR"].tolist() == [4, 4] and t.set_index("model").loc["p", "TRR"].tolist() == [4, 4]


# ---- Q5a: time against FLOPs over timing repeats ------------------------------------------------------------

def _reps(times: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"repeat": r, "label": k, "prefill_ms": t, "e2e_ms": 2 * t}
                         for k, ts in times.items() for r, t in enumerate(ts)])


def test_repeat_shares_pair_each_repeat_with_its_reference():
    from tpx.analysis.accounting import repeat_shares

    shares = repeat_shares(_reps({"unpruned": [100, 200], "fastv": [50, 80]}), "unpruned")
    assert shares["fastv"].tolist() == [50, 40] and shares["unpruned"].tolist() == [100, 100]
    assert repeat_shares(_reps({"unpruned": [100, 200], "fastv": [50, 80]}), "unpruned", "e2e_ms")["fastv"].tolist() == [50, 40]
    with pytest.raises(ValueError, match="no timing rows labelled 'x'"):
        repeat_shares(_reps({"unpruned": [1, 2]}), "x")


def test_time_flops_gap_and_maps_cost_have_the_known_sign():
    from tpx.analysis import stats
    from tpx.analysis.accounting import maps_cost, repeat_shares, time_flops_gap

    rng = np.random.default_rng(0)
    n = 20
    shares = repeat_shares(_reps({"unpruned": list(100 + rng.normal(0, 5, n)),
                                  "fastv": list(50 + rng.normal(0, 2, n)),
                                  "fastv maps": list(70 + rng.normal(0, 2, n))}), "unpruned")
    gap = time_flops_gap(shares, "fastv", 30.0)
    assert gap.n_per_task == {"repeats": n} and 15 < gap.estimate < 25 and gap.ci_low > 0
    assert stats.verdict(gap.ci_low, gap.ci_high, 1) == "agrees"
    cost = maps_cost(shares, "fastv maps", "fastv")
    assert cost.ci_low > 0 and cost.estimate == pytest.approx((shares["fastv maps"] - shares["fastv"]).mean())
    same = maps_cost(shares, "fastv", "fastv")
    assert same.estimate == 0 and stats.verdict(same.ci_low, same.ci_high, 1) == "inconclusive"


def test_stage_excess_fits_a_line_per_repeat():
    from tpx.analysis.accounting import repeat_shares, stage_excess

    # every repeat: time = 20 + 0.8 FLOPs for unpruned (100) and random (25); fastv on the line, pdrop 8 above
    reps = _reps({"unpruned": [100, 120, 90], "random": [40, 48, 36], "fastv": [52, 62.4, 46.8], "pdrop": [60, 72, 54]})
    flops = {"unpruned": 100, "random": 25, "fastv": 40, "pdrop": 40}
    est = stage_excess(repeat_shares(reps, "unpruned"), flops, ["pdrop"], "fastv", ["unpruned", "random"], n_boot=200)
    assert est.estimate == pytest.approx(60 - 52) and est.ci_low == pytest.approx(8) and est.ci_high == pytest.approx(8)
    with pytest.raises(ValueError, match="two FLOPs values"):
        stage_excess(repeat_shares(reps, "unpruned"), flops, ["pdrop"], "fastv", ["fastv", "pdrop"])


def test_measured_config_names_hook_and_k():
    from tpx.analysis.accounting import measured_config

    measured = pd.DataFrame([dict(method="fastv", attn_implementation="sdpa", retention=0.25, stages=[(2, 144)]),
                             dict(method="pooling", attn_implementation="sdpa", retention=0.25, stages=[(0, 144)]),
                             dict(method="pdrop", attn_implementation="eager", retention=0.25, stages=[(2, 300), (4, 100)])])
    fv = measured_config(measured, "fastv")
    assert (fv["hook"], fv["layer"], fv["retention"], fv["label"]) == ("L", 2, 0.25, "fastv (sdpa)")
    assert measured_config(measured, "pooling")["hook"] == "E" and measured_config(measured, "pooling")["layer"] is None
    assert measured_config(measured, "pdrop", "eager", "x")["params"]["stages"] == [(2, 300), (4, 100)]
    with pytest.raises(ValueError, match="no measured row"):
        measured_config(measured, "pdrop")
