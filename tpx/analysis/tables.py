"""The study's comparison tables from `tpx.evaluate.evaluate` rows: method × task, relative to unpruned.

Wen et al. report every method at a fixed budget as per-benchmark scores plus an "Avg." column: the mean over
benchmarks of the score relative to the unpruned model (pruned / unpruned × 100), with grounding (RefCOCO)
in a table of its own. `evaluate_methods` runs that grid — every method at every retention it can reach,
seeded methods over several seeds, deterministic ones once — and `method_table` turns its rows into the
table, with the spread over seeds (mean ± std) that the study's random baseline lacks. `spatial_table` is the
matching per-method summary of where kept tokens sit (`tpx.analysis.spatial.spatial_stats`).

Reference: Wen et al., Token Pruning in MLLMs: Are We Solving the Right Problem?, Findings of ACL 2025,
arXiv 2502.11501, Table 1 (relative scores, Avg.) and the RefCOCO table (Q1).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = ["compare", "evaluate_methods", "format_table", "method_table", "reachable", "seeded", "spatial_table",
           "task_columns"]

UNPRUNED = "unpruned"


def seeded(method: str) -> bool:
    """Whether a method's kept set depends on the seed: its scorer draws from the run's generator (`random`).

    Selectors that take an optional generator (DART's `pivot="random"`) use it only for a non-default rule.
    """
    from tpx.methods import get_method

    scorer = get_method(method).scorer
    return scorer is not None and "generator" in inspect.signature(scorer).parameters


def _kwargs(method: str, layer: int | None) -> dict[str, Any]:
    """`layer` reaches single-stage hook-L methods only: hook E/V act before layer 0, multi-stage methods
    keep their own (scaled) stage layers."""
    from tpx.methods import get_method

    m = get_method(method)
    return {"layer": layer} if layer is not None and m.hook == "L" and m.schedule is None else {}


def reachable(model: Any, method: str, retention: float, n_visual: int, grid: tuple[int, int] | None = None,
              **pruning_kwargs: Any) -> str | None:
    """Why `method` cannot run at `retention` on `n_visual` tokens, or None if it can: the plan's answer
    (`tpx.engine.reachable`: the model's depth, its own compression first, every error `tpx.pruning` raises).

    Args:
        model: from `tpx.load`. method: registry name. retention: in (0, 1]. n_visual: visual tokens N.
        grid: `(rows, cols)` of the image (for pooling's exact grid); default: none checked.
        **pruning_kwargs: as for `tpx.pruning` (layer, method parameters).

    Returns:
        None, or the plan's error message.
    """
    from tpx.engine import reachable as why_not
    from tpx.layout import Layout

    layout = Layout(grids=(grid,)) if grid is not None else Layout(n_visual=n_visual)
    return why_not(model, method, retention, layout=layout, **pruning_kwargs)


def evaluate_methods(model: Any, processor: Any, samples: Sequence[Any], methods: Sequence[str],
                     retentions: Sequence[float], seeds: Sequence[int] = (0,), *, layer: int | None = None,
                     progress: bool = True, **evaluate_kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every method at every retention it can reach, plus the unpruned baseline, in one table.

    One `evaluate` call per method (with the retentions it reaches); seeded methods (`seeded`) run every seed,
    deterministic ones the first. A (method, retention) the method cannot reach is skipped and listed with the
    reason, never dropped silently.

    Args:
        model, processor: from `tpx.load`. samples: from `tpx.data.load_samples`.
        methods: registry names (the unpruned baseline is always added).
        retentions: kept shares, each in (0, 1]. seeds: pruning seeds.
        layer: decoder layer K of single-stage in-LLM methods; None: each method's default.
        progress: a `tqdm.auto` bar over methods.
        **evaluate_kwargs: passed to `evaluate` (batch_size, max_new_tokens, cache_dir, ...).

    Returns:
        `(rows, skipped)`: the `evaluate` rows of all calls, and a DataFrame (method, retention, reason).
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import evaluate, model_inputs
    from tpx.models import adapter_for

    samples = list(samples)
    if not samples:
        raise ValueError("samples must not be empty")
    ids = model_inputs(processor, samples[:1], model)["input_ids"]
    n_visual = int((ids == model.config.image_token_id).sum())
    try:
        grid = adapter_for(model).grid(n_visual)
    except (ValueError, AttributeError):
        grid = None  # several grids (AnyRes, several images): pooling's grid is checked by the engine
    frames = [evaluate(model, processor, samples, methods=[None], progress=False, **evaluate_kwargs)]
    skipped = []
    for method in tqdm(list(methods), desc="methods", unit="method", disable=not progress):
        kwargs = _kwargs(method, layer)
        ok = []
        for r in retentions:
            reason = reachable(model, method, r, n_visual, grid, **kwargs)
            ok += [r] if reason is None else []
            skipped += [] if reason is None else [{"method": method, "retention": r, "reason": reason}]
        if ok:
            chosen = list(seeds) if seeded(method) else list(seeds)[:1]
            frames.append(evaluate(model, processor, samples, methods=[method], retentions=ok, seeds=chosen,
                                   progress=False, **evaluate_kwargs, **kwargs))
    return (pd.concat(frames, ignore_index=True),
            pd.DataFrame(skipped, columns=["method", "retention", "reason"]))


def _per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Benchmark-level scores (`summarize`), one column per task (organism) or benchmark, one row per
    (retention, method, seed)."""
    from tpx.evaluate import summarize

    s = summarize(df)
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


def compare(df: pd.DataFrame, column: str, method: str, reference: str, retention: float) -> dict[str, float]:
    """Mean of a per-answer column (kept_row, coverage, score) for `method` against `reference` at one
    retention, seeds pooled, with the standard error of the difference (independent samples).

    Returns:
        `{"method": mean, "reference": mean, "diff": method − reference, "se": standard error of diff}`.

    Raises:
        ValueError: either method has no rows at `retention`.
    """
    at = df[(df["retention"] - retention).abs() < 1e-9]
    a, b = at.loc[at["method"] == method, column], at.loc[at["method"] == reference, column]
    if a.empty or b.empty:
        raise ValueError(f"need rows of {method!r} and {reference!r} at retention {retention:.4g}")
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else math.nan
    return {"method": float(a.mean()), "reference": float(b.mean()), "diff": float(a.mean() - b.mean()), "se": se}
