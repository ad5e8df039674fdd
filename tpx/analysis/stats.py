"""Paired bootstrap confidence intervals over samples, and the one verdict rule.

Every reported difference between two configurations (method, hook, K, retention) is computed from the
same samples answered twice, so its uncertainty is estimated by resampling *samples*, not answers of each
configuration independently: one bootstrap draw picks, within each task, as many samples as the task has
(with replacement), and every configuration is read on those same samples (a paired, task-stratified
bootstrap; Efron & Tibshirani 1993, ch. 16). Seeded methods are first averaged over their seeds per sample,
so the interval covers sample noise; the seed spread is reported beside it (`seed_spread`).

The statistic is the study's: a mean over tasks of per-task accuracies (optionally relative to the unpruned
model, pruned / unpruned × 100, the "Avg." of Wen et al. 2025, Table 1), so every task weighs the same.

The verdict rule is fixed here, before any data is looked at (`RULE`): a finding agrees with the study when
the confidence interval of its effect excludes 0 on the side the study reports, disagrees when it excludes 0
on the other side, and is inconclusive otherwise. A family of m comparisons (an α sweep, a K sweep) is judged
with Bonferroni-adjusted intervals (level 1 − 0.05 / m), so the family-wise error stays at 5 %; Holm's
adjusted p-values are reported beside them (`holm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

__all__ = ["EQUIVALENCE", "LEVEL", "N_BOOT", "RULE", "Estimate", "bonferroni_level", "bootstrap", "compare", "difference", "holm",
           "paired_matrix", "score", "seed_spread", "verdict"]

LEVEL = 0.95
N_BOOT = 2000
KEY = ("benchmark", "task", "id")
VERDICTS = ("agrees", "disagrees", "inconclusive")
EQUIVALENCE = 2.0  # points: the margin within which a "no difference" claim counts as shown
RULE = ("paired bootstrap over samples, stratified by task (seeded methods averaged over seeds per sample): "
        "agrees if the CI of the effect excludes 0 on the study's side, disagrees if it excludes 0 on the other "
        "side, inconclusive otherwise; a claim of no difference agrees if the CI lies within ±2 points, "
        "disagrees if it excludes 0, else inconclusive; families use Bonferroni-adjusted CIs (level 1 - 0.05/m)")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval.

    Attributes:
        estimate: the statistic on the observed samples.
        ci_low, ci_high: percentile interval at `level`.
        level: confidence level of the interval.
        p: two-sided bootstrap p-value of "the statistic is 0" (share of draws on the far side of 0, doubled).
        n_per_task: samples per task that entered (after pairing).
        draws: the bootstrap draws (kept for tests and figures).
        note: why the estimate is degenerate ("" when it is not): undefined (NaN, e.g. a relative score over a
            baseline that answers nothing right) — reported, never raised.
    """

    estimate: float
    ci_low: float
    ci_high: float
    level: float
    p: float
    n_per_task: dict[str, int]
    draws: np.ndarray = field(repr=False, compare=False)
    note: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.estimate:+.1f} [{self.ci_low:+.1f}, {self.ci_high:+.1f}]"


def _label_column(rows: pd.DataFrame) -> pd.Series:
    return rows["label"] if "label" in rows.columns else rows["method"]


def paired_matrix(rows: pd.DataFrame, labels: Sequence[str], value: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Per-sample values of each configuration, aligned on the same samples.

    Args:
        rows: result rows with columns benchmark, task, id, `value` and label (or method) — one row per
            sample × configuration × seed.
        labels: the configurations, by label (or method name when rows carry no label).
        value: the per-answer column (score, kept_row, ...).

    Returns:
        `(matrix, tasks)`: `(n_samples, len(labels))` values, each configuration's seeds averaged per sample,
        and the task of each sample row.

        NaN values stay NaN (the estimate is then undefined and says so).

    Raises:
        ValueError: a label has no rows, or the configurations did not answer the same samples.
    """
    label = _label_column(rows)
    columns, answered = [], []
    for name in labels:
        part = rows[label == name]
        if part.empty:
            raise ValueError(f"no rows labelled {name!r}; present: {sorted(set(label))}")
        columns.append(part.groupby(list(KEY), sort=True)[value].mean().rename(name))
        answered.append(part.groupby(list(KEY), sort=True).size().rename(name))
    wide = pd.concat(columns, axis=1)
    present = pd.concat(answered, axis=1)  # a NaN value (e.g. no duplication of one kept token) is not a missing row
    if present.isna().any().any():
        missing = present.columns[present.isna().any()].tolist()
        raise ValueError(f"configurations {missing} did not answer the same samples as the others; "
                         "a paired comparison needs every configuration on every sample")
    return wide.to_numpy(dtype=float), wide.index.get_level_values("task").to_numpy()


def bootstrap(matrix: np.ndarray, strata: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
              n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Task-stratified paired bootstrap of a statistic of per-task means.

    Args:
        matrix: `(n_samples, C)` per-sample values of C configurations (see `paired_matrix`).
        strata: `(n_samples,)` task of each sample; resampling keeps each task's sample count.
        statistic: maps per-task means `(..., T, C)` (tasks in sorted order) to `(...)`; NaN entries are
            allowed (e.g. a relative score over a zero baseline) and ignored by the interval.
        n_boot: bootstrap draws (≥ 100). seed: seed of the resampling. level: confidence level in (0, 1).

    Returns:
        The `Estimate` (percentile interval).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int ≥ 100, got {n_boot!r}")
    matrix = np.asarray(matrix, dtype=float)
    strata = np.asarray(strata)
    if matrix.ndim != 2 or len(matrix) != len(strata) or len(matrix) == 0:
        raise ValueError(f"matrix must be (n_samples, C) with one stratum per sample, got {matrix.shape} and "
                         f"{strata.shape}")
    rng = np.random.default_rng(seed)
    tasks = sorted(set(strata.tolist()))
    observed, draws = [], []
    for task in tasks:
        block = matrix[strata == task]
        observed.append(block.mean(0))
        pick = rng.integers(0, len(block), size=(n_boot, len(block)))
        draws.append(block[pick].mean(1))
    point = float(statistic(np.stack(observed)[None])[0])
    boot = np.asarray(statistic(np.stack(draws, axis=1)), dtype=float)
    finite = boot[np.isfinite(boot)]
    if finite.size == 0 or not math.isfinite(point):
        nan = float("nan")
        return Estimate(point, nan, nan, level, nan, _counts(strata), boot,
                        "undefined: the statistic has no finite value on these samples")
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float((finite <= 0).mean()), float((finite >= 0).mean())))
    return Estimate(point, float(low), float(high), level, p, _counts(strata), boot)


def _counts(strata: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(strata, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def _relative(means: np.ndarray, index: int, base: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(means[..., base] > 0, 100 * means[..., index] / means[..., base], np.nan)


def compare(rows: pd.DataFrame, a: str, b: str, *, baseline: str | None = None, value: str = "score",
            scale: float = 100.0, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """The effect a − b: mean over tasks of the per-task difference, with its paired bootstrap CI.

    Args:
        rows: result rows (see `paired_matrix`).
        a, b: the two configurations' labels.
        baseline: a third label (the unpruned model): the effect is then the difference of relative scores,
            100 · (a − b) / baseline per task, in points of the study's "Avg." column. Tasks whose baseline is
            0 drop out of that mean.
        value: the per-answer column compared. scale: multiplier of absolute differences (100: points).
        n_boot, seed, level: see `bootstrap`.
    """
    labels = [a, b] + ([baseline] if baseline is not None else [])
    matrix, tasks = paired_matrix(rows, labels, value)
    if baseline is None:
        def statistic(m: np.ndarray) -> np.ndarray:
            return scale * (m[..., 0] - m[..., 1]).mean(-1)
    else:
        def statistic(m: np.ndarray) -> np.ndarray:
            return _nanmean(_relative(m, 0, 2) - _relative(m, 1, 2))
    return _explained(bootstrap(matrix, tasks, statistic, n_boot, seed, level), matrix, labels, value, baseline)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without numpy's warning) where every entry is NaN."""
    count = np.isfinite(values).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(values, axis=-1) / np.maximum(count, 1), np.nan)


def _explained(est: Estimate, matrix: np.ndarray, labels: Sequence[str], value: str,
               baseline: str | None) -> Estimate:
    """Name the cause of an undefined estimate: values that do not exist, or a baseline that answers nothing right."""
    if not est.note:
        return est
    empty = [name for j, name in enumerate(labels) if np.isnan(matrix[:, j]).any()]
    if empty:
        return replace(est, note=f"undefined: {value!r} has no value for {empty} on some samples (e.g. the "
                                 "duplication of a single kept token)")
    if baseline is not None and not (matrix[:, -1] > 0).any():
        return replace(est, note=f"undefined: the baseline {baseline!r} answers no sample right, so there is no "
                                 "relative score (% of baseline)")
    return est


def score(rows: pd.DataFrame, label: str, *, baseline: str | None = None, value: str = "score",
          scale: float = 100.0, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """One configuration's mean over tasks (×`scale`), or its relative score (% of `baseline`), with a CI.

    Deterministic methods get their uncertainty from here: the samples, not seeds, are what varies.
    """
    labels = [label] + ([baseline] if baseline is not None else [])
    matrix, tasks = paired_matrix(rows, labels, value)
    if baseline is None:
        def statistic(m: np.ndarray) -> np.ndarray:
            return scale * m[..., 0].mean(-1)
    else:
        def statistic(m: np.ndarray) -> np.ndarray:
            return _nanmean(_relative(m, 0, 1))
    return _explained(bootstrap(matrix, tasks, statistic, n_boot, seed, level), matrix, labels, value, baseline)


def seed_spread(rows: pd.DataFrame, label: str, *, baseline: str | None = None, value: str = "score",
                scale: float = 100.0) -> dict[str, float]:
    """How much a seeded configuration's score moves between seeds: per-seed scores, their mean, std, range.

    Returns:
        {"n_seeds", "mean", "std" (NaN for one seed), "min", "max"} of the per-seed mean over tasks
        (relative to `baseline` when given).
    """
    part = rows[_label_column(rows) == label]
    if part.empty:
        raise ValueError(f"no rows labelled {label!r}")
    if baseline is not None:
        base = rows[_label_column(rows) == baseline].groupby("task")[value].mean()
    values = []
    for _, g in part.groupby("seed", sort=True):
        per_task = g.groupby("task")[value].mean()
        values.append(float((100 * per_task / base[per_task.index]).mean()) if baseline is not None
                      else float(scale * per_task.mean()))
    arr = np.asarray(values)
    return {"n_seeds": len(arr), "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else math.nan,
            "min": float(arr.min()), "max": float(arr.max())}


def verdict(ci_low: float, ci_high: float, direction: int) -> str:
    """The study-agreement verdict of one effect, by the rule in `RULE`.

    Args:
        ci_low, ci_high: the effect's confidence interval.
        direction: +1 if the study reports the effect positive, −1 if negative, 0 if it reports no difference
            (then the interval must lie within ±`EQUIVALENCE` to agree).

    Returns:
        "agrees", "disagrees" or "inconclusive" (also for a NaN interval).
    """
    if direction not in (1, -1, 0):
        raise ValueError(f"direction must be +1, -1 or 0, got {direction!r}")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if ci_low > ci_high:
        raise ValueError(f"ci_low must be ≤ ci_high, got [{ci_low}, {ci_high}]")
    if direction == 0:
        if -EQUIVALENCE < ci_low and ci_high < EQUIVALENCE:
            return "agrees"
        return "disagrees" if ci_low > 0 or ci_high < 0 else "inconclusive"
    low, high = (ci_low, ci_high) if direction == 1 else (-ci_high, -ci_low)
    if low > 0:
        return "agrees"
    if high < 0:
        return "disagrees"
    return "inconclusive"


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a − b for estimates from *independent* samples (e.g. two tasks), from their bootstrap draws."""
    if a.level != b.level or len(a.draws) != len(b.draws):
        raise ValueError("a and b need the same level and number of draws")
    draws = a.draws - b.draws
    finite = draws[np.isfinite(draws)]
    counts = {**{f"a:{k}": v for k, v in a.n_per_task.items()}, **{f"b:{k}": v for k, v in b.n_per_task.items()}}
    point = a.estimate - b.estimate
    if finite.size == 0 or not math.isfinite(point):
        nan = float("nan")
        why = "; ".join(dict.fromkeys(n for n in (a.note, b.note) if n)) or \
            "undefined: the difference has no finite value on these samples"
        return Estimate(point, nan, nan, a.level, nan, counts, draws, why)
    low, high = np.quantile(finite, [(1 - a.level) / 2, (1 + a.level) / 2])
    p = min(1.0, 2 * min(float((finite <= 0).mean()), float((finite >= 0).mean())))
    return Estimate(point, float(low), float(high), a.level, p, counts, draws)


def bonferroni_level(m: int, level: float = LEVEL) -> float:
    """Per-comparison confidence level of a family of m comparisons with family-wise level `level`."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int ≥ 1, got {m!r}")
    return 1 - (1 - level) / m


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
