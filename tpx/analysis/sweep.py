"""The α sweep of the study's Q4 over result rows: how much importance, how much uniqueness, task by task.

The study scores each visual token by Score = α·importance + (1 − α)·uniqueness (Eq. 6; the `alpha` method,
`tpx.dedup.alpha_mix`) and sweeps α from 0 (pure de-duplication) to 1 (FastV) at 144 of 576 tokens (Table 6).
Its claim: the best α depends on the task. The sweep is a grid of labelled variants (`variants`, run by
`tpx.evaluate.evaluate(configs=tpx.grid.grid(variants(...), ...))`); everything here is pure over its rows.

The task-dependence rule, fixed before looking at the data (`task_sets`, `task_dependence`): for each task,
the α values *not significantly below* that task's best α form its set — an α leaves the set when the paired
bootstrap CI of score(α) − score(best α) on that task's samples lies below 0, with Bonferroni-adjusted CIs over
every (task, α) comparison of the family. "No single α is best" (the study's claim) ↔ no α lies in every task's
set. The record of that claim takes the most universal α (the one whose worst task is least clearly below its
best) and reports its CI against that task's best: the CI excludes 0 below exactly when no α is in every set.
Selecting each task's best on the same samples favours finding differences; the Bonferroni family and the
paired CI are the guard against that, stated here rather than hidden.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q4 (Eq. 6, Table 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tpx.analysis import stats

__all__ = ["ALPHAS", "READINGS", "alpha_table", "base_label", "common_alphas", "first_per_task", "label_alphas",
           "mean_relative", "task_dependence", "task_sets", "variants"]

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))   # Table 6's grid, completed to every 0.1
READINGS = ("last", "dup")                               # the two readings of uniqueness (`alpha_mix`)
N_BOOT_FAMILY = 10000                                    # Bonferroni tails are small: more draws resolve them


def _label(alpha: float, reading: str | None) -> str:
    return f"alpha={alpha:g}" if reading is None else f"alpha={alpha:g} {reading}"


def variants(alphas: Sequence[float] = ALPHAS, readings: Sequence[str] = READINGS) -> dict[str, dict[str, Any]]:
    """The α sweep as labelled grid variants `{label: {"method": "alpha", "alpha": a, "uniqueness": u}}`.

    α = 1 is FastV under either reading (`alpha_mix` returns the importance top-k before it looks at
    uniqueness), so it is one variant, labelled "alpha=1", shared by every reading.

    Raises:
        ValueError: an α outside [0, 1] or repeated, an unknown or repeated reading.
    """
    alphas, readings = [float(a) for a in alphas], list(readings)
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct values in [0, 1], got {alphas}")
    if not readings or any(r not in READINGS for r in readings) or len(set(readings)) != len(readings):
        raise ValueError(f"readings must be distinct values of {READINGS}, got {readings}")
    out = {}
    for u in readings:
        for a in alphas:
            out[_label(a, None if a == 1.0 else u)] = {"method": "alpha", "alpha": a, "uniqueness": u}
    return out


def first_per_task(samples: Sequence[Any], n: int) -> list[Any]:
    """The first `n` samples of each task, in order: a coarser sample nested in the headline one, so a curve
    measured on it is paired with the headline rows of the same samples."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int ≥ 1, got {n!r}")
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        seen[s.task] = seen.get(s.task, 0) + 1
        if seen[s.task] <= n:
            out.append(s)
    return out


def base_label(label: str) -> str:
    """A row label without the hook / K suffix that `tpx.grid.grid(label_depth=True)` appends ("… @L2")."""
    return label.split(" @", 1)[0]


def label_alphas(rows: pd.DataFrame, sweep: Mapping[str, Mapping[str, Any]], reading: str) -> dict[float, str]:
    """α → the row label of that α under `reading` (the shared α = 1 included), in increasing α.

    Raises:
        ValueError: the reading has no rows.
    """
    out = {}
    for label in dict.fromkeys(rows["label"]):
        v = sweep.get(base_label(label))
        if v is not None and (v["uniqueness"] == reading or float(v["alpha"]) == 1.0):
            out[float(v["alpha"])] = label
    if not any(a < 1.0 for a in out):
        raise ValueError(f"no rows of uniqueness={reading!r}; labels: {sorted(set(rows['label']))}")
    return dict(sorted(out.items()))


def alpha_table(rows: pd.DataFrame, sweep: Mapping[str, Mapping[str, Any]], reading: str, *,
                baseline: str | None = "unpruned", value: str = "score") -> pd.DataFrame:
    """The Table 6 layout for one reading: rows = tasks (in row order), columns "unpruned" then each α (×100).

    Seeds (if any) are averaged; every score is the mean per-answer value of the task ×100.
    """
    labels = label_alphas(rows, sweep, reading)
    tasks = list(dict.fromkeys(rows["task"]))
    cols = {} if baseline is None else {"unpruned": baseline}
    cols |= {a: lab for a, lab in labels.items()}
    table = pd.DataFrame({k: 100 * rows[rows["label"] == lab].groupby("task")[value].mean() for k, lab in cols.items()})
    table = table.reindex(tasks)
    table.columns.name = "alpha"
    return table


def mean_relative(table: pd.DataFrame) -> pd.Series:
    """Mean over tasks of score / unpruned score (×100) at each α: the study's "relative score" average.

    Tasks whose unpruned score is 0 are left out (their ratio is undefined).
    """
    scores = table.drop(columns=["unpruned"])
    ok = table["unpruned"] > 0
    return (100 * scores[ok].div(table.loc[ok, "unpruned"], axis=0)).mean(axis=0)


def task_sets(rows: pd.DataFrame, sweep: Mapping[str, Mapping[str, Any]], reading: str, *,
              n_boot: int = N_BOOT_FAMILY, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per task, the α values not significantly below that task's best α (the rule in the module docstring).

    Args:
        rows: result rows of the sweep (labels from `variants`, with or without a depth suffix).
        sweep: the `variants` dict. reading: the uniqueness reading judged.
        n_boot, seed: bootstrap draws and seed (the Bonferroni level needs many draws).

    Returns:
        `(sets, comparisons)`. sets, indexed by task: best_alpha (highest mean; ties to the smallest α),
        best_score (×100), near (the set: α whose CI against the best reaches 0), spread (best − worst, points),
        n (samples of the task), level (the Bonferroni-adjusted CI level).
        comparisons: task, alpha, label, best_alpha, best_label, estimate, ci_low, ci_high, level, n_per_task,
        in_set — one row per (task, α ≠ best), score(α) − score(best) in points.
    """
    labels = label_alphas(rows, sweep, reading)
    alphas = list(labels)
    tasks = list(dict.fromkeys(rows["task"]))
    level = stats.bonferroni_level(max(1, len(tasks) * (len(alphas) - 1)))
    table = alpha_table(rows, sweep, reading, baseline=None)
    sets, comps = {}, []
    for task in tasks:
        part = rows[rows["task"] == task]
        scores = table.loc[task, alphas]
        best = float(scores.fillna(-np.inf).idxmax())  # a task without any finite score: ties to the smallest α
        near = [best]
        for a in alphas:
            if a == best:
                continue
            est = stats.compare(part, labels[a], labels[best], n_boot=n_boot, seed=seed, level=level)
            keep = not est.ci_high < 0
            near += [a] if keep else []
            comps.append({"task": task, "alpha": a, "label": labels[a], "best_alpha": best, "best_label": labels[best],
                          "estimate": est.estimate, "ci_low": est.ci_low, "ci_high": est.ci_high, "level": level,
                          "n_per_task": min(est.n_per_task.values()), "in_set": keep, "_est": est})
        sets[task] = {"best_alpha": best, "best_score": float(scores.max()), "near": sorted(near),
                      "spread": float(scores.max() - scores.min()), "n": int(part["id"].nunique()), "level": level}
    return pd.DataFrame.from_dict(sets, orient="index"), pd.DataFrame(comps)


def common_alphas(sets: pd.DataFrame) -> list[float]:
    """The α values in every task's set (`task_sets`): empty means no single α is best, the study's claim."""
    common = None
    for near in sets["near"]:
        common = set(near) if common is None else common & set(near)
    return sorted(common or [])


def task_dependence(sets: pd.DataFrame, comparisons: pd.DataFrame) -> dict[str, Any]:
    """The evidence for "no single α is best": the most universal α and its worst task, with the CI.

    For each α, its worst task is the one where its CI against that task's best reaches least high (an α that
    is a task's best counts 0 there). The most universal α is the one whose worst task is least clearly below;
    its CI excludes 0 below exactly when no α lies in every task's set (`common_alphas` is empty).

    Returns:
        {"alpha", "task", "label", "best_label", "estimate", "common" (`common_alphas`)}: the estimate is a
        `stats.Estimate` of score(α) − score(best α) on that task in points; when the most universal α is the
        best of every task, task and labels are None and the estimate is 0 with the interval [0, 0].
    """
    alphas = sorted({a for near in sets["near"] for a in near} | set(comparisons.get("alpha", pd.Series()).tolist()))
    worst: dict[float, tuple[float, str | None]] = {}
    for a in alphas:
        mine = comparisons[comparisons["alpha"] == a] if len(comparisons) else comparisons
        if len(mine) == 0:
            worst[a] = (float("inf"), None)
            continue
        row = mine.loc[mine["ci_high"].fillna(np.inf).idxmin()]  # an undefined CI shows nothing below
        worst[a] = (float(row["ci_high"]), str(row["task"]))
    alpha = max(alphas, key=lambda a: (worst[a][0], -a))
    task = worst[alpha][1]
    level = float(sets["level"].iloc[0])
    zero = stats.Estimate(0.0, 0.0, 0.0, level, 1.0, {str(t): int(n) for t, n in sets["n"].items()}, np.zeros(0))
    out = {"alpha": alpha, "task": task, "label": None, "best_label": None, "estimate": zero,
           "common": common_alphas(sets)}
    if task is not None:
        row = comparisons[(comparisons["alpha"] == alpha) & (comparisons["task"] == task)].iloc[0]
        out |= {"label": row["label"], "best_label": row["best_label"], "estimate": row["_est"]}
    return out
