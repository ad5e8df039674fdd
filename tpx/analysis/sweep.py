"""The α sweep of the study's Q4: how much importance, how much uniqueness, task by task.

The study scores each visual token by Score = α·importance + (1 − α)·uniqueness (Eq. 6; the `alpha` method,
`tpx.dedup.alpha_mix`) and sweeps α from 0 (pure de-duplication) to 1 (FastV) at 144 of 576 tokens (Table 6).
Its claim: the best α depends on the task. These functions run that sweep with `tpx.evaluate.evaluate`
(one call per (uniqueness reading, α) over all tasks), pivot it into the Table 6 layout and find each task's
best α, with ties judged against the sampling noise of the scores.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q4 (Eq. 6, Table 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = ["ALPHAS", "READINGS", "alpha_sweep", "alpha_table", "best_alpha", "common_alphas", "mean_relative",
           "tolerance"]

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))   # Table 6's grid, completed to every 0.1
READINGS = ("last", "dup")                               # the two readings of uniqueness (`alpha_mix`)


def _check(alphas: Sequence[float], readings: Sequence[str]) -> tuple[list[float], list[str]]:
    alphas, readings = [float(a) for a in alphas], list(readings)
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct values in [0, 1], got {alphas}")
    if not readings or any(r not in READINGS for r in readings) or len(set(readings)) != len(readings):
        raise ValueError(f"readings must be distinct values of {READINGS}, got {readings}")
    return alphas, readings


def _per_task(df: pd.DataFrame) -> pd.DataFrame:
    """Benchmark-level score (`summarize`), answers, standard error and mean coverage / kept row per task."""
    from tpx.evaluate import summarize

    out = summarize(df).drop(columns=["method", "retention", "seed"])
    key = df.assign(task=df["task"].where(df["benchmark"] == "organism", ""))  # as summarize: a benchmark is one row
    stats = key.groupby(["benchmark", "task"], sort=False).agg(
        se=("score", lambda s: 100 * s.std(ddof=1) / math.sqrt(len(s)) if len(s) > 1 else math.nan),
        coverage=("coverage", "mean"), kept_row=("kept_row", "mean")).reset_index()
    out = out.merge(stats, on=["benchmark", "task"], how="left")
    return out.assign(task=out["task"].where(out["task"] != "", out["benchmark"]))


def alpha_sweep(model: Any, processor: Any, samples: Sequence[Any], alphas: Sequence[float] = ALPHAS,
                readings: Sequence[str] = READINGS, *, retention: float = 0.25, seed: int = 0, progress: bool = True,
                **evaluate_kwargs: Any) -> pd.DataFrame:
    """Score every task under the `alpha` method for each (uniqueness reading, α), next to the unpruned score.

    One `evaluate` call per configuration over all samples (batched across tasks), plus one unpruned call.
    α = 1 is FastV under either reading (`alpha_mix` returns the importance top-k before it looks at
    uniqueness), so it is evaluated once and its rows are shared by every reading.

    Args:
        model, processor: from `tpx.load`.
        samples: from `tpx.data.load_samples` (several tasks or benchmarks may be mixed).
        alphas: importance weights, each in [0, 1] (default 0, 0.1, …, 1).
        readings: uniqueness readings, a subset of `READINGS`.
        retention: kept share of visual tokens (the study: 144 of 576 = 0.25).
        seed: pruning seed (the `alpha` method is deterministic; kept for the cache key).
        progress: show a `tqdm.auto` bar over configurations.
        **evaluate_kwargs: passed to `evaluate` (batch_size, max_new_tokens, layer, cache_dir, …).

    Returns:
        Tidy DataFrame, one row per (reading, α, task): benchmark, task (the organism task, else the
        benchmark), uniqueness, alpha, score (the benchmark's number, ×100 for accuracies), n (answers), se
        (standard error of the mean per-answer score ×100), coverage and kept_row (means over answers, see
        `evaluate`), unpruned (the unpruned score of the task).

    Raises:
        ValueError: for an α outside [0, 1], an unknown reading, or anything `evaluate` rejects.
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import evaluate

    alphas, readings = _check(alphas, readings)
    configs = [(u, a) for u in readings for a in alphas if a < 1.0 or u == readings[0]]
    common = dict(retentions=[retention], seeds=[seed], progress=False, **evaluate_kwargs)
    base = _per_task(evaluate(model, processor, samples, methods=[None], **common))
    frames: dict[tuple[str, float], pd.DataFrame] = {}
    for u, a in tqdm(configs, desc="α sweep (reading, α)", unit="config", disable=not progress):
        rows = _per_task(evaluate(model, processor, samples, methods=["alpha"], alpha=a, uniqueness=u, **common))
        frames.update({(r, a): rows.assign(uniqueness=r, alpha=a) for r in (readings if a == 1.0 else [u])})
    out = pd.concat([frames[u, a] for u in readings for a in alphas], ignore_index=True).merge(
        base[["benchmark", "task", "score"]].rename(columns={"score": "unpruned"}), on=["benchmark", "task"])
    return out[["benchmark", "task", "uniqueness", "alpha", "score", "n", "se", "coverage", "kept_row", "unpruned"]]


def alpha_table(sweep: pd.DataFrame, uniqueness: str) -> pd.DataFrame:
    """The Table 6 layout for one reading: rows = tasks (in sweep order), columns "unpruned" then each α.

    Args:
        sweep: from `alpha_sweep`.
        uniqueness: which reading to show.

    Raises:
        ValueError: the reading is not in `sweep`.
    """
    part = sweep[sweep["uniqueness"] == uniqueness]
    if part.empty:
        raise ValueError(f"uniqueness={uniqueness!r} not in the sweep; has {sorted(sweep['uniqueness'].unique())}")
    tasks = list(dict.fromkeys(part["task"]))
    table = part.pivot(index="task", columns="alpha", values="score").reindex(tasks)
    table.insert(0, "unpruned", part.groupby("task", sort=False)["unpruned"].first().reindex(tasks))
    table.columns.name = "alpha"
    return table


def tolerance(sweep: pd.DataFrame) -> pd.Series:
    """Per task, the margin within which two scores of the sweep count as tied.

    One standard error of the task's score (the median over the sweep of `se`), but never less than one
    answer (100 / n points), the resolution of an accuracy: a single answer that flips is never a finding.
    The samples are shared by every α, so a difference is usually less noisy than two independent scores;
    one (not √2) standard error reflects that. Meant for mean-of-answers scores ×100 (accuracy, VQA, POPE's
    F1 approximately); MME's perception score is on another scale, so pass a margin of its own there.
    """
    by_task = sweep.groupby("task", sort=False)
    return by_task["se"].median().fillna(0.0).clip(lower=100 / by_task["n"].median())


def _tol(table: pd.DataFrame, tol: float | pd.Series) -> pd.Series:
    return tol.reindex(table.index).fillna(0.0) if isinstance(tol, pd.Series) else pd.Series(float(tol), table.index)


def best_alpha(table: pd.DataFrame, tol: float | pd.Series = 0.0) -> pd.DataFrame:
    """Each task's best α and how sharp the optimum is.

    Args:
        table: from `alpha_table` (an "unpruned" column is ignored).
        tol: score margin (same units) within which an α counts as tied with the best; a number or a Series
            per task (e.g. `tolerance(sweep)`).

    Returns:
        DataFrame indexed by task: best_alpha (the α of the highest score; exact ties go to the smallest α),
        best_score, ties (every α with the highest score), near (every α within `tol` of it), spread (best
        minus worst score over α), preference ("flat" when spread ≤ tol, else "redundancy first" /
        "importance first" / "either" as the mean of `near` is below / above / at 0.5).
    """
    scores = table.drop(columns=["unpruned"], errors="ignore")
    tol = _tol(scores, tol)
    rows = {}
    for task, row in scores.iterrows():
        best = row.max()
        near = [a for a, v in row.items() if v >= best - tol[task]]
        spread = best - row.min()
        centre = sum(near) / len(near)
        pref = ("flat" if spread <= tol[task] else "redundancy first" if centre < 0.5
                else "importance first" if centre > 0.5 else "either")
        rows[task] = dict(best_alpha=row.idxmax(), best_score=best, ties=[a for a, v in row.items() if v == best],
                          near=near, spread=spread, preference=pref)
    return pd.DataFrame.from_dict(rows, orient="index")


def common_alphas(table: pd.DataFrame, tol: float | pd.Series = 0.0) -> list[float]:
    """The α values within `tol` of the best score of every task at once: empty means no single α is best,
    the study's claim."""
    scores = table.drop(columns=["unpruned"], errors="ignore")
    ok = scores.ge(scores.max(axis=1) - _tol(scores, tol), axis=0).all(axis=0)
    return [float(a) for a in ok.index[ok]]


def mean_relative(table: pd.DataFrame) -> pd.Series:
    """Mean over tasks of score / unpruned score (×100) at each α: the study's "relative score" average.

    Tasks whose unpruned score is 0 are left out (their ratio is undefined).
    """
    scores = table.drop(columns=["unpruned"])
    ok = table["unpruned"] > 0
    return (100 * scores[ok].div(table.loc[ok, "unpruned"], axis=0)).mean(axis=0)
