"""Q1 measures from result rows: how much the model needs its image at each depth, same-depth comparisons,
and whether FastV's position bias has the mechanism the study gives it.

Wen et al. (2025, Q1) explain why random and pooling match FastV: the last token's attention favours the last
visual tokens (the bottom rows) because of causal attention and RoPE's long-range decay. Three computed checks
make that a testable mechanism (`mechanism`): the bias exists on real images, it persists on content-free
images (blank, noise), and it follows the position ids (reversing the image tokens' ids moves the kept tokens
up). All functions here are pure over rows from `tpx.evaluate.evaluate` / `tpx.probes.kept_under_positions`.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q1; FastV: Chen et al., ECCV 2024,
arXiv 2403.06764; RoPE decay: Su et al., arXiv 2104.09864, Sec. 3.4.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tpx.analysis import stats
from tpx.analysis.findings import configs_of
from tpx.grid import UNPRUNED

__all__ = ["MECHANISM_PARTS", "depth_table", "estimate_table", "kept_row_excess", "mechanism"]

MECHANISM_PARTS = ("bias on real images", "bias on blank images", "bias on noise images", "follows position ids")


def estimate_table(rows: pd.DataFrame, labels: Sequence[str] | None = None, *, baseline: str | None = UNPRUNED,
                   n_boot: int = stats.N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Each configuration's score (relative to `baseline` when given) with its paired bootstrap CI and seeds.

    A configuration is a (label, retention) pair, so one label may be evaluated at several retentions.

    Args:
        rows: result rows. labels: which labels (default: every label but the baseline), in order.

    Returns:
        One row per (label, retention): method, hook, layer, retention, label, estimate, ci_low, ci_high,
        n_per_task, n_keep, n_seeds, seed_min, seed_max (the per-seed range; equal for one seed).
    """
    if labels is None:
        labels = [lab for lab in dict.fromkeys(rows["label"]) if lab != baseline]
    out = []
    for label in labels:
        for r in dict.fromkeys(rows.loc[rows["label"] == label, "retention"]):
            sub = rows[(rows["retention"] == r) | (rows["label"] == baseline)]
            est = stats.score(sub, label, baseline=baseline, n_boot=n_boot, seed=seed)
            spread = stats.seed_spread(sub, label, baseline=baseline)
            mine = sub[sub["label"] == label]
            out.append({**configs_of(mine, label), "estimate": est.estimate, "ci_low": est.ci_low,
                        "ci_high": est.ci_high, "n_per_task": min(est.n_per_task.values()),
                        "n_keep": int(mine["n_keep"].iloc[0]), "n_seeds": spread["n_seeds"],
                        "seed_min": spread["min"], "seed_max": spread["max"]})
    return pd.DataFrame(out)


def depth_table(rows: pd.DataFrame, *, baseline: str = UNPRUNED, n_boot: int = stats.N_BOOT) -> pd.DataFrame:
    """The vision-need-by-depth curve: relative score of every pruned configuration, by K and kept-token count.

    Args:
        rows: `evaluate` rows of the baseline and of configurations keeping very few tokens from layer K on.

    Returns:
        `estimate_table` rows plus K (hook "E" counts as K = 0), sorted by n_keep and K.
    """
    table = estimate_table(rows, baseline=baseline, n_boot=n_boot)
    table["K"] = table["layer"].where(table["hook"] == "L", 0).astype(int)
    return table.sort_values(["n_keep", "K"]).reset_index(drop=True)


def kept_row_excess(rows: pd.DataFrame, label: str, *, n_boot: int = stats.N_BOOT, seed: int = 0,
                    level: float = stats.LEVEL) -> stats.Estimate:
    """Mean kept row − 0.5 (× 100: % of the image height), with its CI: any position-blind rule has 0.

    `kept_row` is (row + 0.5) / rows averaged over the kept tokens, so a uniform choice has expectation 0.5;
    positive means the kept tokens sit below the middle of the image (the study's bottom-row bias).
    """
    matrix, tasks = stats.paired_matrix(rows, [label], "kept_row")
    return stats.bootstrap(matrix, tasks, lambda m: 100 * (m[..., 0].mean(-1) - 0.5), n_boot, seed, level)


def mechanism(rows: pd.DataFrame, method: str = "fastv", *, n_boot: int = stats.N_BOOT,
              level: float = stats.LEVEL) -> dict[str, Any]:
    """The study's position-bias mechanism, checked by the rule fixed here.

    Reproduced iff all four hold, each judged by its CI (Bonferroni over the four, family level `level`):
    the kept-row excess of `method` is > 0 on real, blank and noise images at natural positions, and
    reversing the image tokens' position ids lowers it (natural − reverse > 0, paired over samples).

    Args:
        rows: `tpx.probes.kept_under_positions` rows of `method` at one (hook, K, retention), orders
            "natural" and "reverse", blind "" / "blank" / "noise".

    Returns:
        {"parts": {part: Estimate}, "holds": {part: bool}, "verdict": "mechanism reproduced" or
        "mechanism not reproduced", "level": per-part level}.
    """
    part_level = stats.bonferroni_level(len(MECHANISM_PARTS), level)
    sub = rows[rows["method"] == method]
    label = {(o, b): f"{method} {o}" + (f" {b}" if b else "") for o in ("natural", "reverse") for b in ("", "blank", "noise")}
    parts = {
        "bias on real images": kept_row_excess(sub, label["natural", ""], n_boot=n_boot, level=part_level),
        "bias on blank images": kept_row_excess(sub, label["natural", "blank"], n_boot=n_boot, level=part_level),
        "bias on noise images": kept_row_excess(sub, label["natural", "noise"], n_boot=n_boot, level=part_level),
        "follows position ids": stats.compare(sub, label["natural", ""], label["reverse", ""], value="kept_row",
                                              n_boot=n_boot, level=part_level),
    }
    holds = {k: bool(np.isfinite(v.ci_low) and v.ci_low > 0) for k, v in parts.items()}
    verdict = "mechanism reproduced" if all(holds.values()) else "mechanism not reproduced"
    return {"parts": parts, "holds": holds, "verdict": verdict, "level": part_level}
