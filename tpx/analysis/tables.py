"""The study's comparison tables from `tpx.evaluate.evaluate` rows: method × task, relative to unpruned.

Wen et al. report every method at a fixed budget as per-benchmark scores plus an "Avg." column: the mean over
benchmarks of the score relative to the unpruned model (pruned / unpruned × 100), with grounding (RefCOCO)
in a table of its own. `method_table` turns the grid runner's rows (`tpx.evaluate.evaluate(configs=...)`) into
that table, with the spread over seeds (mean ± std) that the study's random baseline lacks; differences and
their confidence intervals come from `tpx.analysis.stats`. `spatial_table` is the
matching per-method summary of where kept tokens sit (`tpx.analysis.spatial.spatial_stats`).

Reference: Wen et al., Token Pruning in MLLMs: Are We Solving the Right Problem?, Findings of ACL 2025,
arXiv 2502.11501, Table 1 (relative scores, Avg.) and the RefCOCO table (Q1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

__all__ = ["format_table", "method_table", "spatial_table", "task_columns"]

UNPRUNED = "unpruned"


def _per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Benchmark-level scores (`summarize`), one column per task (organism) or benchmark, one row per
    (retention, method, seed)."""
    from tpx.evaluate import summarize

    s = summarize(df, by_seed=True)
    s = s.assign(column=s["task"].where(s["task"] != "", s["benchmark"]))
    return s.pivot_table(index=["retention", "method", "seed"], columns="column", values="score", sort=False)


def task_columns(df: pd.DataFrame) -> list[str]:
    """The columns `method_table` can show: organism tasks, or benchmark names, in order of appearance."""
    col = df["task"].where(df["benchmark"] == "organism", df["benchmark"])
    return list(dict.fromkeys(col))


def method_table(df: pd.DataFrame, tasks: Sequence[str] | None = None, average: Sequence[str] | None = None,
                 relative: bool = True) -> pd.DataFrame:
    """The study's Table 1 layout: one row per (retention, method), one column per task, plus "Avg".

    Scores are first computed per seed (`tpx.evaluate.summarize`), then averaged over seeds; "std" is their
    standard deviation over seeds (NaN for a single seed). "Avg" is the study's: the mean over the `average`
    columns of the relative score pruned / unpruned × 100, computed per seed before its mean and std.

    Args:
        df: `evaluate` rows holding the unpruned baseline (method "unpruned").
        tasks: columns to show, in order (organism tasks or benchmark names); default: all, in order of appearance.
        average: columns averaged into "Avg"; default: `tasks`.
        relative: task columns as relative scores (%); False: the raw scores (×100, as `summarize`).

    Returns:
        DataFrame indexed by (retention, method), the unpruned row first at retention 1, then retentions in
        descending order; columns a MultiIndex (stat, column) with stat "mean", "std" and "n_seeds".

    Raises:
        ValueError: no unpruned rows, or a requested column missing.
    """
    wide = _per_seed(df)
    tasks = list(wide.columns) if tasks is None else list(tasks)
    average = tasks if average is None else list(average)
    missing = sorted(set(tasks + average) - set(wide.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the results; present: {list(wide.columns)}")
    base = wide[wide.index.get_level_values("method") == UNPRUNED]
    if base.empty:
        raise ValueError("method_table needs the unpruned baseline: evaluate with methods=[None, ...]")
    base = base.iloc[0]
    rel = 100 * wide / base.where(base != 0)
    out = (rel if relative else wide)[tasks].copy()
    out["Avg"] = rel[average].mean(axis=1)
    g = out.groupby(level=["retention", "method"], sort=False)
    n_seeds = pd.DataFrame({c: g.size() for c in out.columns})
    table = pd.concat({"mean": g.mean(), "std": g.std(ddof=1), "n_seeds": n_seeds}, axis=1)
    order = sorted(table.index, key=lambda k: (k[1] != UNPRUNED, -k[0]))
    return table.loc[order]


def format_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """`method_table` as strings, "mean ± std" where there are several seeds and "mean" otherwise."""
    mean, std = table["mean"], table["std"]

    def cell(m: float, s: float) -> str:
        if math.isnan(m):
            return "–"
        return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"

    return pd.DataFrame([[cell(m, s) for m, s in zip(mean.loc[i], std.loc[i])] for i in mean.index],
                        index=mean.index, columns=mean.columns)


def spatial_table(df: pd.DataFrame, grid: tuple[int, int]) -> pd.DataFrame:
    """Spatial statistics of the kept positions per (retention, method), seeds pooled.

    Args:
        df: `evaluate` rows (unpruned rows are ignored). grid: `(rows, cols)` of the image grid.

    Returns:
        DataFrame indexed by (retention, method) with n_keep and the columns of `tpx.analysis.spatial.spatial_stats`
        (mean_row, mean_col, coverage_2x2, coverage_3x3, entropy); retentions in descending order.
    """
    from tpx.analysis import spatial

    rows = []
    pruned = df[df["method"] != UNPRUNED]
    for (r, m), g in pruned.groupby(["retention", "method"], sort=False):
        kept = spatial.kept_matrix(list(g["kept"]))
        rows.append({"retention": r, "method": m, "n_keep": kept.shape[1], **spatial.spatial_stats(kept, grid)})
    out = pd.DataFrame(rows).set_index(["retention", "method"])
    return out.loc[sorted(out.index, key=lambda k: -k[0])]
