"""How duplicated a kept set is, and how much two methods' kept sets agree: the measurements behind Q2.

Attention scores are computed once and independently per token, so near-duplicates score alike and are kept
or dropped together; duplication-aware methods (DART, DivPrune) drop one copy and keep the other. These
functions measure that directly: the mean, over kept tokens, of each one's largest cosine similarity to
another kept token; the overlap (Jaccard) between the kept sets of two methods; and the loop that runs
methods over samples and captures the visual hidden states the similarities are measured on.

Papers covered:
    Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q2 (attention scores miss duplication).
    DART: Wen et al., EMNLP 2025, arXiv 2502.11494 (pivot duplication and its pivot-choice study).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "add_duplication", "chance_overlap", "kept_duplication", "kept_overlap", "overlap_matrix",
    "pivot_label", "pivot_variants", "summarize_redundancy", 
]

OVERLAPS = ("jaccard", "share")


# ---- pure measures ---------------------------------------------------------------------------------------

def kept_duplication(features: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean over kept tokens of each one's largest cosine similarity to another kept token.

    1 means every kept token has an exact copy (up to scale) in the kept set; 0 means the kept tokens are
    mutually orthogonal. Attention-scored methods are expected to score high (they keep duplicates together),
    duplication-aware ones low.

    Args:
        features: `(B, N, D)` visual features the similarity is measured on.
        kept: `(B, K)` distinct indices into the N visual tokens, K ≥ 2.

    Returns:
        `(B,)` float32 on the features' device.

    Raises:
        ValueError: for mismatched shapes, fewer than 2 kept tokens, indices out of range or repeated.
    """
    if features.ndim != 3 or kept.ndim != 2 or kept.shape[0] != features.shape[0]:
        raise ValueError(f"features must be (B, N, D) and kept (B, K) with the same B, got "
                         f"{tuple(features.shape)} and {tuple(kept.shape)}")
    b, n, d = features.shape
    _check_index("kept", kept, n)
    if kept.shape[1] < 2:
        raise ValueError(f"kept must hold at least 2 tokens per row to compare, got {kept.shape[1]}")
    if bool((kept.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("kept must hold distinct indices in every row")
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    k = x.gather(1, kept.to(x.device)[..., None].expand(-1, -1, d))                       # (B, K, D)
    sim = torch.bmm(k, k.transpose(1, 2))                                                 # (B, K, K)
    eye = torch.eye(kept.shape[1], dtype=torch.bool, device=x.device)
    return sim.masked_fill(eye, float("-inf")).amax(dim=2).mean(dim=1)


def kept_overlap(kept_a: torch.Tensor, kept_b: torch.Tensor, n_visual: int, kind: str = "jaccard") -> torch.Tensor:
    """Agreement of two kept sets per row: Jaccard |A∩B| / |A∪B|, or the share |A∩B| / min(|A|, |B|).

    Args:
        kept_a, kept_b: `(B, Ka)` and `(B, Kb)` indices into the N visual tokens; negative entries are
            padding (rows of different sizes) and are ignored.
        n_visual: N.
        kind: `"jaccard"` or `"share"`.

    Returns:
        `(B,)` float32 in [0, 1]; identical sets give 1, disjoint ones 0.

    Raises:
        ValueError: for an unknown kind, mismatched batch sizes or indices ≥ N.
    """
    if kind not in OVERLAPS:
        raise ValueError(f"kind must be one of {OVERLAPS}, got {kind!r}")
    if kept_a.ndim != 2 or kept_b.ndim != 2 or kept_a.shape[0] != kept_b.shape[0]:
        raise ValueError(f"kept_a and kept_b must be (B, K) with the same B, got {tuple(kept_a.shape)} and "
                         f"{tuple(kept_b.shape)}")
    a, b = _mask(kept_a, n_visual), _mask(kept_b.to(kept_a.device), n_visual)
    inter = (a & b).sum(dim=1).float()
    if kind == "jaccard":
        return inter / (a | b).sum(dim=1).clamp(min=1).float()
    return inter / torch.minimum(a.sum(dim=1), b.sum(dim=1)).clamp(min=1).float()


def chance_overlap(retention: float) -> float:
    """Jaccard overlap expected between two independent uniform random kept sets of share `retention`.

    |A∩B| ≈ r²N and |A∪B| ≈ (2r − r²)N, so the ratio is r / (2 − r) (ratio of expectations; exact as N grows).
    """
    if not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    return retention / (2 - retention)


def _check_index(name: str, index: torch.Tensor, n: int) -> None:
    if index.numel() and (int(index.max()) >= n or int(index.min()) < 0):
        raise ValueError(f"{name} indices must lie in [0, {n}), got [{int(index.min())}, {int(index.max())}]")


def _mask(kept: torch.Tensor, n: int) -> torch.Tensor:
    """`(B, N)` bool membership of padded index rows (negative = padding)."""
    if kept.numel() and int(kept.max()) >= n:
        raise ValueError(f"kept indices must lie in [0, {n}), got {int(kept.max())}")
    index = torch.where(kept < 0, n, kept).long()
    return torch.zeros(kept.shape[0], n + 1, dtype=torch.bool, device=kept.device).scatter(1, index, True)[:, :n]


def _padded(lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """Index lists of different lengths as one `(S, K_max)` tensor padded with −1."""
    width = max(len(k) for k in lists)
    return torch.tensor([list(k) + [-1] * (width - len(k)) for k in lists], dtype=torch.long)


# ---- running methods and capturing features -----------------------------------------------------------

def pivot_label(pivot: str) -> str:
    """Method label of DART with pivot rule `pivot`: `"dart"` for its own rule ("max"), else `"dart:<pivot>"`."""
    return "dart" if pivot == "max" else f"dart:{pivot}"


def pivot_variants(pivots: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`tpx.grid.grid` variants for DART under each pivot rule (see `tpx.dedup.PIVOTS`), labelled by `pivot_label`."""
    from tpx.dedup import PIVOTS

    bad = [p for p in pivots if p not in PIVOTS]
    if bad:
        raise ValueError(f"pivots must be among {PIVOTS}, got {bad}")
    return {pivot_label(p): {"method": "dart", "pivot": p} for p in pivots}


def add_duplication(df: Any, features: Mapping[str, torch.Tensor], *, chunk: int = 64,
                    device: str | torch.device | None = None) -> Any:
    """A copy of an `evaluate` table with a `duplication` column (`kept_duplication` of each row's kept set).

    Unpruned rows measure all N tokens (the ceiling: a subset's nearest neighbours are never closer); rows
    without a kept set of at least two tokens get NaN. Rows are measured in chunks of equal size.

    Args:
        df: rows with `id`, `kept` (indices or None) and `n_visual`.
        features: sample id → `(N, D)` (see `visual_features`); one feature space for every method.
        chunk: rows per batched call.
        device: where to compute (default: the features' device).
    """
    out = df.copy()
    kept = [list(range(int(n))) if k is None else list(k) for k, n in zip(df["kept"], df["n_visual"])]
    sizes = [(len(k), int(n)) for k, n in zip(kept, df["n_visual"])]
    values = [math.nan] * len(df)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        if size[0] >= 2:
            groups.setdefault(size, []).append(i)
    for rows in groups.values():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            feats = torch.stack([features[df["id"].iloc[i]] for i in part]).to(device)
            dup = kept_duplication(feats, torch.tensor([kept[i] for i in part], device=feats.device))
            for i, v in zip(part, dup.tolist(), strict=True):
                values[i] = v
    out["duplication"] = values
    return out


def summarize_redundancy(df: Any) -> Any:
    """Accuracy and duplication per method and retention, averaged over seeds, with their spread.

    Accuracy is `tpx.evaluate.summarize`'s benchmark score (organism: per-task accuracy ×100) averaged over
    tasks / benchmarks; duplication is the mean over samples of `kept_duplication` (needs `add_duplication`).

    Returns:
        DataFrame with method, retention, accuracy, accuracy_min, accuracy_max, duplication, duplication_min,
        duplication_max (min / max over seeds) and seeds (how many).
    """
    from tpx.evaluate import summarize

    keys = ["method", "retention", "seed"]
    acc = summarize(df, by_seed=True).groupby(keys, sort=False)["score"].mean().rename("accuracy")
    per_seed = df.groupby(keys, sort=False)["duplication"].mean().to_frame().join(acc).reset_index()
    g = per_seed.groupby(["method", "retention"], sort=False)
    out = g[["accuracy", "duplication"]].mean()
    for col in ("accuracy", "duplication"):
        out[f"{col}_min"], out[f"{col}_max"] = g[col].min(), g[col].max()
    out["seeds"] = g["seed"].nunique()
    return out.reset_index()


def overlap_matrix(df: Any, retention: float, methods: Sequence[str] | None = None, kind: str = "jaccard") -> Any:
    """Mean kept-set overlap between every pair of methods at one retention, on their common samples.

    Each method contributes its first seed's kept sets. Rows and columns follow `methods` (default: every
    pruned method in the table, in order of appearance).

    Returns:
        Square DataFrame of `kept_overlap` means (diagonal 1).

    Raises:
        ValueError: if a method has no kept sets at this retention, or the methods share no sample.
    """
    import pandas as pd

    at = df[(df["retention"] == retention) & df["kept"].notna()]
    methods = list(dict.fromkeys(at["method"])) if methods is None else list(methods)
    sets = {}
    for m in methods:
        rows = at[at["method"] == m]
        if rows.empty:
            raise ValueError(f"no kept sets for method {m!r} at retention {retention}")
        rows = rows[rows["seed"] == rows["seed"].iloc[0]]
        sets[m] = dict(zip(rows["id"], rows["kept"], strict=True))
    ids = sorted(set.intersection(*(set(s) for s in sets.values())))
    if not ids:
        raise ValueError(f"methods {methods} share no sample at retention {retention}")
    n = int(at["n_visual"].max())
    padded = {m: _padded([sets[m][i] for i in ids]) for m in methods}
    values = [[float(kept_overlap(padded[a], padded[b], n, kind).mean()) for b in methods] for a in methods]
    return pd.DataFrame(values, index=methods, columns=methods)
