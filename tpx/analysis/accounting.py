"""Token accounting for training-aware compression (study Q5b): how much a reduction really removes.

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

from typing import Any

import pandas as pd

__all__ = ["pruning_retention", "reduction", "tacr", "token_table"]


def tacr(model: Any) -> float:
    """Training-aware compression ratio of a loaded model: raw patches per token its LLM sees unpruned.

    4 for Qwen2-VL / Qwen2.5-VL (2×2 merger, `vision_config.spatial_merge_size`), 1 / retention for a checkpoint
    trained with a tpx compression always on (`config.tpx_compression`, e.g. the organism-pool2: 4), else 1.
    """
    config = model.config
    spec = getattr(config, "tpx_compression", None)
    if spec:
        return 1 / float(spec["retention"])
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    if getattr(config, "model_type", None) in ("qwen2_vl", "qwen2_5_vl") and merge:
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


def token_table(frames: dict[str, pd.DataFrame], raw: int, natives: dict[str, int]) -> pd.DataFrame:
    """Per-task accuracy (×100) of several models' evaluations, with each row's token accounting.

    Args:
        frames: model label → `tpx.evaluate.evaluate` output (columns task, method, retention, seed,
            n_keep, score).
        raw: visual tokens before any compression.
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
            info = reduction(raw, natives[label], kept)
            for task, (mean, n) in acc.iterrows():
                rows.append(dict(model=label, method=method, retention=retention, **info, task=task,
                                 score=100 * mean, n=int(n)))
            rows.append(dict(model=label, method=method, retention=retention, **info, task="Avg",
                             score=100 * acc["mean"].mean(), n=int(acc["size"].sum())))
    out = pd.DataFrame(rows)
    return out[["model", "method", "retention", "kept", "TACR", "TFRR", "TRR", "reduction_pct", "task", "score", "n"]]
