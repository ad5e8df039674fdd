"""Evaluation protocol (the study's Q5): latency tables, vision need, averages, seeds, batch size, padding.

The study asks that pruning be reported with measured latency rather than FLOPs alone (Q5a) and with a
protocol that does not hide failures (Q5c): per-task scores next to the average (grounding collapses under
pruning while the mean barely moves), random baselines over several seeds with their spread, and tasks that
need the image at all. This module turns `tpx.latency.measure` and `tpx.evaluate.evaluate` rows into those
tables; the runs that feed them (`tpx.probes.blind_runs`, `batch_size_runs`, `padding_check`) live with the
other model runs in `tpx.probes`.

Reference: Wen et al., Token Pruning in Multimodal Large Language Models: Are We Solving the Right Problem?,
Findings of ACL 2025, arXiv 2502.11501, Q5 (Table 7 for latency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

__all__ = ["MEAN", "average_hides", "batch_size_table", "excess_time", "grounding_gap", "padding_table",
           "seed_spread", "summary_table", "task_drops", "task_scores", "time_fit", "vision_need",
           "visual_per_layer"]

UNPRUNED = "unpruned"
MEAN = "mean"  # the label of the unweighted mean over tasks, as benchmark-suite averages take it


# ---- latency (Q5a) ------------------------------------------------------------------------------------------

def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The study's Table 7 columns from `tpx.latency.measure` rows (one or several calls concatenated).

    Times and memory as measured; FLOPs and KV cache analytic. Percentages are of the reference: the first
    unpruned row of `df` (measure SDPA first), so an eager run's cost shows against the SDPA baseline.
    `time/FLOPs` is prefill time % over FLOPs %: 1 when time follows FLOPs, above 1 when a method pays more
    than its FLOPs say (attention maps, selection, several stages).

    Args:
        df: rows of `measure`, with at least one unpruned row.

    Returns:
        One row per (attention, method).
    """
    base = df[df.method == UNPRUNED].iloc[0]
    flops_rel = df.flops / base.flops
    out = pd.DataFrame({
        "attention": df.attn_implementation, "method": df.method, "stages": df.stages.map(len), "n_keep": df.n_keep,
        "prefill ms": df.prefill_ms, "decode ms/token": df.decode_ms_per_token, "end-to-end ms": df.e2e_ms,
        "scoring ms": df.select_ms, "peak memory MB": df.peak_mem_mb, "FLOPs %": 100 * flops_rel,
        "prefill time %": 100 * df.prefill_ms / base.prefill_ms,
        "prefill IQR %": 100 * df.prefill_iqr_ms / base.prefill_ms,
        "decode time %": 100 * df.decode_ms_per_token / base.decode_ms_per_token,
        "end-to-end time %": 100 * df.e2e_ms / base.e2e_ms, "end-to-end IQR %": 100 * df.e2e_iqr_ms / base.e2e_ms,
        "KV cache MB": df.kv_bytes / 2 ** 20,
        "KV cache %": 100 * df.kv_bytes / base.kv_bytes,
    })
    out["time/FLOPs"] = out["prefill time %"] / out["FLOPs %"]
    return out.set_index(["attention", "method"])


def time_fit(table: pd.DataFrame, calibrate: Sequence[str] = ("unpruned", "random", "pooling"),
             attention: str = "sdpa", column: str = "prefill time %") -> tuple[float, float]:
    """Least-squares line time % = intercept + slope · FLOPs % through the cheapest configurations.

    Time is not even proportional to decoder FLOPs: the vision tower, embeddings, LM head and framework work
    cost the same at any budget. A line through the unpruned run and the pruning that costs nearly nothing
    to select (random, pooling: one gather before layer 0) separates that fixed cost from the per-FLOP cost;
    a method's distance above the line is what its selection costs beyond its FLOPs.

    Args:
        table: `summary_table`; calibrate: methods the line is fitted through (at least two FLOPs values).
        attention: the implementation whose rows are fitted; column: the time column.

    Returns:
        `(intercept, slope)` in % of the reference run and % per FLOPs %.

    Raises:
        ValueError: fewer than two distinct FLOPs values among the calibration rows.
    """
    rows = table.xs(attention, level="attention")
    rows = rows[rows.index.isin(list(calibrate))]
    if rows["FLOPs %"].round(6).nunique() < 2:
        raise ValueError(f"time_fit needs calibration rows at two FLOPs values at least; got {list(rows.index)} "
                         f"with attention={attention!r}")
    x, y = torch.tensor(rows["FLOPs %"].to_numpy()), torch.tensor(rows[column].to_numpy())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return float(y.mean() - slope * x.mean()), slope


def excess_time(table: pd.DataFrame, fit: tuple[float, float], column: str = "prefill time %") -> pd.Series:
    """Measured time minus the `time_fit` line at each row's FLOPs (% of the reference run; > 0: overhead)."""
    intercept, slope = fit
    return (table[column] - (intercept + slope * table["FLOPs %"])).rename(f"excess {column}")


def visual_per_layer(df: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Visual tokens each decoder layer sees, per `measure` row, from the stages it recorded.

    Args:
        df: rows of `measure` (method, n_visual, stages, attn_implementation).
        n_layers: decoder layers of the measured model.

    Returns:
        Long table: method, attn_implementation, layer, n_visual.
    """
    from tpx.latency import layer_lengths

    rows = []
    for r in df.itertuples():
        seen = layer_lengths(n_layers, r.n_visual, r.n_visual, r.stages)
        rows += [(r.method, r.attn_implementation, i, v) for i, v in enumerate(seen)]
    return pd.DataFrame(rows, columns=["method", "attn_implementation", "layer", "n_visual"])


# ---- tables (Q5c) -------------------------------------------------------------------------------------------

def _labelled(summary: pd.DataFrame) -> pd.DataFrame:
    """`summarize` output with `label`: the organism task, or the benchmark name for real benchmarks."""
    return summary.assign(label=[t if t else b for t, b in zip(summary.task, summary.benchmark)])


def task_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Scores (×100) per method, retention and seed, one column per task and the unweighted `mean` over tasks.

    Args:
        rows: `evaluate` rows (one `blind` mode).

    Returns:
        Wide table indexed by (method, retention, seed); columns in the order tasks first appear, then mean.
    """
    from tpx.evaluate import summarize

    long = _labelled(summarize(rows, by_seed=True))
    order = list(dict.fromkeys(long.label))
    wide = long.pivot_table(index=["method", "retention", "seed"], columns="label", values="score", sort=False)
    wide = wide[order]
    wide[MEAN] = wide.mean(axis=1)
    wide.columns.name = None
    return wide


def task_drops(rows: pd.DataFrame) -> pd.DataFrame:
    """Points lost against the unpruned model per task and in the mean, averaged over seeds.

    Returns:
        Indexed by (method, retention), pruned configurations only; columns as `task_scores`; negative = worse.
    """
    scores = task_scores(rows)
    base = scores.xs(UNPRUNED, level="method").iloc[0]
    pruned = scores.drop(index=UNPRUNED, level="method").groupby(level=["method", "retention"], sort=False).mean()
    return pruned - base


def average_hides(rows: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """What the mean over tasks hides: per pruned configuration, the mean drop next to the worst task's drop.

    Args:
        rows: `evaluate` rows with the unpruned baseline.
        task: a task to report beside the worst (e.g. "locate", the grounding task); None to skip.

    Returns:
        Indexed by (method, retention): mean_drop, worst_task, worst_drop, worst_over_mean (how many times
        the mean's drop the worst task loses), and `<task>_drop` when `task` is given (points; negative = worse).
    """
    drops = task_drops(rows)
    tasks = drops.drop(columns=MEAN)
    out = pd.DataFrame({"mean_drop": drops[MEAN], "worst_task": tasks.idxmin(axis=1), "worst_drop": tasks.min(axis=1)})
    out["worst_over_mean"] = out.worst_drop / out.mean_drop.where(out.mean_drop != 0)
    if task is not None:
        if task not in tasks.columns:
            raise ValueError(f"task {task!r} is not in the rows; tasks: {', '.join(tasks.columns)}")
        out[f"{task}_drop"] = tasks[task]
    return out


def seed_spread(rows: pd.DataFrame, method: str = "random") -> pd.DataFrame:
    """Spread over seeds of one method's scores (×100), per retention and task, and of the mean over tasks.

    Returns:
        Indexed by (retention, label): n_seeds, mean, std (sample, ddof 1), min, max, range (max − min).
    """
    scores = task_scores(rows)
    if method not in scores.index.get_level_values("method"):
        raise ValueError(f"method {method!r} is not in the rows")
    long = scores.xs(method, level="method").melt(ignore_index=False, var_name="label", value_name="score")
    g = long.reset_index().groupby(["retention", "label"], sort=False)["score"]
    out = g.agg(n_seeds="count", mean="mean", std="std", min="min", max="max")
    out["range"] = out["max"] - out["min"]
    return out


def vision_need(rows: pd.DataFrame) -> pd.DataFrame:
    """How much each task needs the image: unpruned scores (×100) with the image, a blank one, none, and noise.

    Args:
        rows: `tpx.probes.blind_runs` output (column `blind`: "", "no_image", "blank", and "noise" if run).

    Returns:
        Indexed by task (and `mean`): image, blank, no_image, [noise,] need = image − the best control (points
        the image adds over the better blind control), sorted by need, largest first; `mean` last.
    """
    cols = {}
    for blind, name in (("", "image"), ("blank", "blank"), ("no_image", "no_image"), ("noise", "noise")):
        part = rows[rows.blind == blind]
        if part.empty:
            if blind == "noise":
                continue
            raise ValueError(f"rows hold no blind={blind!r} run; use tpx.probes.blind_runs")
        cols[name] = task_scores(part).xs(UNPRUNED, level="method").iloc[0]
    table = pd.DataFrame(cols)
    table["need"] = table["image"] - table[[c for c in table.columns if c != "image"]].max(axis=1)
    tasks = table.drop(index=MEAN).sort_values("need", ascending=False)
    return pd.concat([tasks, table.loc[[MEAN]]])


def batch_size_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Scores and answer agreement across batch sizes, against the first batch size of the rows.

    Args:
        rows: `batch_size_runs` output.

    Returns:
        Indexed by (method, batch_size): score (mean over tasks, ×100), the change from the reference batch
        size (points), agree (% of answers identical to the reference's) and n_changed.
    """
    sizes = list(dict.fromkeys(rows.batch_size))
    ref = rows[rows.batch_size == sizes[0]].set_index(["method", "id"])["answer"]
    out = []
    for (method, size), g in rows.groupby(["method", "batch_size"], sort=False):
        same = g.set_index(["method", "id"])["answer"].eq(ref.reindex(g.set_index(["method", "id"]).index))
        mean = task_scores(g)[MEAN].mean()
        out.append({"method": method, "batch_size": size, "score": mean, "agree": 100 * same.mean(),
                    "n_changed": int((~same).sum())})
    table = pd.DataFrame(out).set_index(["method", "batch_size"])
    ref_score = table.xs(sizes[0], level="batch_size")["score"]
    table.insert(1, "change", table["score"] - ref_score.reindex(table.index.get_level_values("method")).values)
    return table


def padding_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Scores and agreement with left padding per (method, side), from `padding_check` rows.

    Returns:
        Indexed by (method, side): score (mean over tasks of the mean answer score, ×100), agree (% of answers
        identical to the left-padded ones), and error (the engine's message where it refused; score NaN).
    """
    left = rows[rows.side == "left"].set_index(["method", "id"])["answer"]
    out = []
    for (method, side), g in rows.groupby(["method", "side"], sort=False):
        error = g.error.iloc[0]
        keyed = g.set_index(["method", "id"])["answer"]
        same = keyed.eq(left.reindex(keyed.index))
        score = 100 * g.groupby("task", sort=False).score.mean().mean()
        out.append({"method": method, "side": side, "score": math.nan if error else score,
                    "agree": math.nan if error else 100 * same.mean(), "error": error})
    return pd.DataFrame(out).set_index(["method", "side"])


def grounding_gap(rows: pd.DataFrame, label: str, grounding: str, *, baseline: str = UNPRUNED,
                  n_boot: int | None = None, level: float | None = None) -> Any:
    """Relative score on the grounding task minus the mean relative score of the other tasks, with its CI.

    Negative: grounding loses more of its unpruned score than the suite average shows (the study's Q1/Q5c claim).

    Args:
        rows: result rows with `label` and `baseline` on the same samples, several tasks including `grounding`.
        label: the pruned configuration. grounding: the grounding task's name.
        n_boot, level: of the bootstrap (defaults: `tpx.analysis.stats`).

    Returns:
        A `tpx.analysis.stats.Estimate` in points of relative score.
    """
    import numpy as np

    from tpx.analysis import stats

    matrix, tasks = stats.paired_matrix(rows, [label, baseline])
    order = sorted(set(tasks.tolist()))
    if grounding not in order or len(order) < 2:
        raise ValueError(f"need the grounding task {grounding!r} and at least one other task; tasks: {order}")
    g = order.index(grounding)
    others = [i for i in range(len(order)) if i != g]

    def statistic(m: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(m[..., 1] > 0, 100 * m[..., 0] / m[..., 1], np.nan)
        return rel[..., g] - np.nanmean(rel[..., others], axis=-1)

    return stats.bootstrap(matrix, tasks, statistic, n_boot or stats.N_BOOT, 0, level or stats.LEVEL)
