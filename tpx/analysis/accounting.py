"""Cost and token accounting (study Q5): what a reduction really saves (Q5a) and really removes (Q5b).

**Q5a, time against FLOPs.** `tpx.timing.timing_repeats` times each configuration's prefill and end-to-end generation once
per repeat, interleaved (every configuration runs back to back within a repeat, so slow phases of a shared
machine hit all of them alike); `repeat_shares` turns the times into % of the reference run of the same repeat,
and `time_flops_gap`, `maps_cost` and `stage_excess` are the study's three latency claims as paired
bootstrap estimates over repeats (`tpx.analysis.stats.bootstrap`, one stratum: the repeats). The CIs cover the
timing noise of this machine, not the spread between machines or kernels.

**Q5b, training-aware compression.**

Qwen2-VL merges 2×2 patches into one token while it is trained, so its visual tokens are already 4× denser
than the image patches; pruning a share of them removes more information than the same share of
LLaVA's. Wen et al. (2025, arXiv 2502.11501, Sec. 5, "FastV†") count the training-time merge too:
TRR = TACR × TFRR. tpx's reading, stated once here and used by notebook 06:

- raw: visual tokens of the image before any compression (the vision tower's patches; 144 for the organism);
- native: tokens the LLM sees with no inference-time pruning (raw / 4 after a 2×2 merge; raw otherwise);
- kept: tokens the LLM sees after inference-time pruning;
- TACR = raw / native (training-aware compression ratio), TFRR = native / kept (training-free reduction
  ratio), TRR = TACR × TFRR = raw / kept (total reduction ratio); "↓x%" = 1 − 1 / TRR.

So FastV† ↓88.9% on a 2×2-merged model keeps raw / 9 tokens: TACR 4 × TFRR 2.25.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tpx.analysis import stats

__all__ = ["maps_cost", "measured_config", "operating_points", "pruning_retention", "reduction", "repeat_shares",
           "stage_excess", "tacr", "time_flops_gap", "token_counts", "token_table"]


def tacr(model: Any) -> float:
    """Training-aware compression ratio of a loaded model: raw patches per token its LLM sees unpruned.

    4 for Qwen2-VL / Qwen2.5-VL / Qwen3-VL (2×2 merger, `vision_config.spatial_merge_size`), 1 / retention for a checkpoint
    trained with a tpx compression always on (`config.tpx_compression`, e.g. the organism-pool2: 4), else 1.
    """
    config = model.config
    spec = getattr(config, "tpx_compression", None)
    if spec:
        return 1 / float(spec["retention"])
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    if getattr(config, "model_type", None) in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") and merge:
        return float(merge) ** 2
    return 1.0


def pruning_retention(model: Any, total: float) -> float:
    """The `retention` to give `tpx.pruning` so the LLM keeps `total` × raw patches (FastV†'s reading).

    A tpx compression (organism-pool2) acts inside tpx on the raw tokens, so nested pruning counts against
    them: `total`. Qwen2-VL's merger acts before tpx sees the tokens: `total × TACR`.

    Raises:
        ValueError: `total` outside (0, 1], or not below what training-time compression already keeps.
    """
    if isinstance(total, bool) or not isinstance(total, (int, float)) or not 0 < total <= 1:
        raise ValueError(f"total retention must be in (0, 1], got {total!r}")
    ratio = tacr(model)
    if total > 1 / ratio:
        raise ValueError(f"total retention {total:g} keeps more than the {1 / ratio:g} of raw tokens this model's "
                         f"training-time compression (TACR {ratio:g}) leaves; use total ≤ {1 / ratio:g}")
    return float(total) if getattr(model.config, "tpx_compression", None) else float(total * ratio)


def token_counts(model: Any, n_visual: int) -> tuple[int, int]:
    """`(raw, native)` of a model whose layout holds `n_visual` prunable visual tokens (`tpx.models.layout`, the
    `n_visual` of `tpx.evaluate.evaluate` rows): what the vision tower made and what the LLM sees unpruned.

    A merger before the LLM (Qwen2-VL's 2×2) already shrank the layout's tokens: raw = N · TACR, native = N.
    A tpx compression (`config.tpx_compression`, organism-pool2) acts inside tpx on the layout's tokens:
    raw = N, native = its budget of N. Otherwise raw = native = N.
    """
    from tpx.select import budget

    n = int(n_visual)
    spec = getattr(model.config, "tpx_compression", None)
    if spec:
        return n, budget(float(spec["retention"]), n)
    return round(n * tacr(model)), n


def operating_points(full: Any, trained: Any, kept: Sequence[int], raw: int, raw_trained: int) -> pd.DataFrame:
    """The FastV† design at each kept-token count: the retention each side is given, or why it cannot run.

    Args:
        full: the model trained on all tokens (FastV, free pooling). trained: the model trained with its
            compression (FastV†). kept: visual tokens the LLM keeps. raw, raw_trained: each model's raw tokens
            (`token_counts`).

    Returns:
        One row per count: kept, total (kept / raw), full (retention for `full`, NaN when unreachable),
        trained (retention for FastV† on `trained`: only below what its compression already keeps, and only
        when both models start from the same raw tokens), and the reasons ("" when runnable).
    """
    rows = []
    for k in kept:
        total = k / raw
        row = {"kept": int(k), "total": total, "full": float("nan"), "trained": float("nan"),
               "full_reason": "", "trained_reason": ""}
        try:
            row["full"] = pruning_retention(full, total)
        except ValueError as err:
            row["full_reason"] = str(err)
        if raw != raw_trained:
            row["trained_reason"] = (f"the models start from different raw tokens ({raw} vs {raw_trained}): "
                                     "no equal-token comparison")
        elif not total < 1 / tacr(trained):
            row["trained_reason"] = (f"{k} of {raw} tokens is not below what the trained compression keeps "
                                     f"({1 / tacr(trained):g} of raw)")
        else:
            row["trained"] = pruning_retention(trained, total)
        rows.append(row)
    return pd.DataFrame(rows, columns=["kept", "total", "full", "trained", "full_reason", "trained_reason"])


def reduction(raw: int, native: int, kept: int) -> dict[str, float]:
    """TACR, TFRR, TRR and the reduction in percent for one operating point (see the module docstring).

    Raises:
        ValueError: unless raw ≥ native ≥ kept ≥ 1 are ints.
    """
    for name, value in (("raw", raw), ("native", native), ("kept", kept)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
    if not raw >= native >= kept:
        raise ValueError(f"need raw ≥ native ≥ kept, got raw={raw}, native={native}, kept={kept}")
    tacr, tfrr = raw / native, native / kept
    return {"raw": raw, "native": native, "kept": kept, "TACR": tacr, "TFRR": tfrr, "TRR": tacr * tfrr,
            "reduction_pct": 100 * (1 - kept / raw)}


def token_table(frames: dict[str, pd.DataFrame], raw: int | Mapping[str, int], natives: dict[str, int]) -> pd.DataFrame:
    """Per-task accuracy (×100) of several models' evaluations, with each row's token accounting.

    Args:
        frames: model label → `tpx.evaluate.evaluate` output (columns task, method, retention, seed,
            n_keep, score).
        raw: visual tokens before any compression, one count for every model or model label → its count.
        natives: model label → tokens its LLM sees unpruned (raw for a full-token model).

    Returns:
        One row per (model, method, retention, task) plus an "Avg" task (mean over tasks), with columns
        model, method, retention, kept (median kept tokens), TACR, TFRR, TRR, reduction_pct, task, score, n.
        Seeds are averaged.

    Raises:
        ValueError: a frame without rows, or a model label missing from `natives`.
    """
    rows = []
    for label, df in frames.items():
        if label not in natives:
            raise ValueError(f"natives has no entry for model {label!r}")
        if df.empty:
            raise ValueError(f"frames[{label!r}] has no rows")
        for (method, retention), group in df.groupby(["method", "retention"], sort=False):
            acc = group.groupby("task", sort=False)["score"].agg(["mean", "size"])
            kept = int(group["n_keep"].median())
            info = reduction(raw if isinstance(raw, int) else raw[label], natives[label], kept)
            for task, (mean, n) in acc.iterrows():
                rows.append(dict(model=label, method=method, retention=retention, **info, task=task,
                                 score=100 * mean, n=int(n)))
            rows.append(dict(model=label, method=method, retention=retention, **info, task="Avg",
                             score=100 * acc["mean"].mean(), n=int(acc["size"].sum())))
    out = pd.DataFrame(rows)
    return out[["model", "method", "retention", "kept", "TACR", "TFRR", "TRR", "reduction_pct", "task", "score", "n"]]


# ---- Q5a: time against FLOPs, over timing repeats -------------------------------------------------------------

def measured_config(measured: pd.DataFrame, method: str, attention: str = "sdpa",
                    label: str | None = None) -> dict[str, Any]:
    """One side of a latency record, read off `tpx.latency.measure` rows: method, hook, K, retention, label, and
    the stages it pruned at [(layer, n_keep)] (K is the first stage's layer at hook "L").

    Raises:
        ValueError: no row of that method under that attention implementation.
    """
    from tpx.analysis.findings import config
    from tpx.methods import get_method

    part = measured[(measured["method"] == method) & (measured["attn_implementation"] == attention)]
    if part.empty:
        raise ValueError(f"no measured row of {method!r} with attention {attention!r}")
    row = part.iloc[0]
    hook = get_method(method).hooks[0] if method != "unpruned" else None
    stages = [tuple(int(x) for x in st) for st in row["stages"]]
    layer = stages[0][0] if hook == "L" and stages else None
    return config(method, hook=hook, layer=layer, retention=float(row["retention"]),
                  label=label or f"{method} ({attention})", stages=stages)


def repeat_shares(reps: pd.DataFrame, reference: str, column: str = "prefill_ms") -> pd.DataFrame:
    """Each configuration's time in % of the reference configuration's time in the same repeat.

    Returns:
        Wide table: index repeat, one column per label (the reference is 100 throughout).

    Raises:
        ValueError: the reference label has no rows.
    """
    wide = reps.pivot(index="repeat", columns="label", values=column)
    if reference not in wide.columns:
        raise ValueError(f"no timing rows labelled {reference!r}; labels: {list(wide.columns)}")
    return 100 * wide.div(wide[reference], axis=0)


def _over_repeats(values: pd.Series | np.ndarray, *, level: float, n_boot: int, seed: int) -> stats.Estimate:
    v = np.asarray(values, dtype=float)[:, None]
    return stats.bootstrap(v, np.array(["repeats"] * len(v)), lambda m: m[..., 0].mean(-1), n_boot, seed, level)


def time_flops_gap(shares: pd.DataFrame, label: str, flops_pct: float, *, level: float = stats.LEVEL,
                   n_boot: int = stats.N_BOOT, seed: int = 0) -> stats.Estimate:
    """Measured time share − FLOPs share of one configuration (points of the reference), CI over repeats.

    Positive: the method saves less time than its FLOPs say (the study's Q5a). FLOPs are analytic (no noise).
    """
    return _over_repeats(shares[label] - flops_pct, level=level, n_boot=n_boot, seed=seed)


def maps_cost(shares: pd.DataFrame, maps: str, rows: str, *, level: float = stats.LEVEL, n_boot: int = stats.N_BOOT,
              seed: int = 0) -> stats.Estimate:
    """Time share of a configuration reading eager attention maps − the same method recomputing rows under
    SDPA (points of the reference), paired by repeat. Positive: attention maps cost time."""
    return _over_repeats(shares[maps] - shares[rows], level=level, n_boot=n_boot, seed=seed)


def stage_excess(shares: pd.DataFrame, flops_pct: Mapping[str, float], multi: Sequence[str], single: str,
                 calibrate: Sequence[str], *, level: float = stats.LEVEL, n_boot: int = stats.N_BOOT,
                 seed: int = 0) -> stats.Estimate:
    """Mean excess time of the multi-stage configurations − that of the single-stage one, CI over repeats.

    In each repeat a line time % = a + b · FLOPs % is fitted through the `calibrate` configurations (the
    reference and pruning that costs nearly nothing to select, e.g. random and pooling before layer 0; as
    `tpx.analysis.protocol.time_fit`), and a configuration's excess is its distance above that line. Positive:
    several pruning stages cost more than their FLOPs say (the study's SparseVLM vs FastV).

    Args:
        shares: `repeat_shares`. flops_pct: label → FLOPs % of every label used.
        multi: multi-stage labels (averaged). single: the single-stage label. calibrate: ≥ 2 FLOPs values.

    Raises:
        ValueError: fewer than two distinct FLOPs values among `calibrate`.
    """
    x = np.array([flops_pct[c] for c in calibrate], dtype=float)
    if len(set(np.round(x, 6))) < 2:
        raise ValueError(f"stage_excess needs calibration configurations at two FLOPs values, "
                         f"got {dict(zip(calibrate, x))}")
    y = shares[list(calibrate)].to_numpy(dtype=float)
    slope = ((x - x.mean()) * (y - y.mean(1, keepdims=True))).sum(1) / ((x - x.mean()) ** 2).sum()
    intercept = y.mean(1) - slope * x.mean()

    def excess(label: str) -> np.ndarray:
        return shares[label].to_numpy(dtype=float) - (intercept + slope * flops_pct[label])

    effect = np.mean([excess(m) for m in multi], axis=0) - excess(single)
    return _over_repeats(effect, level=level, n_boot=n_boot, seed=seed)
