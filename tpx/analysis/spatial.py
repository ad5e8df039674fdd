"""Where kept tokens sit on the image grid, summed over a dataset: the measurements behind the study's Q1.

The study's first finding is that attention-scored pruning keeps tokens late in the sequence — the bottom
rows of the image — because causal attention with RoPE's long-range decay favours keys near the query.
These functions turn trace entries into retention-frequency maps and spatial statistics, and compute the
RoPE decay curve that explains the bias. Pure torch; the readers that take a loaded model
(`rope_frequencies`, `last_token_attention`) are in `tpx.probes`.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Q1, retention frequency over POPE);
Su et al., "RoFormer", arXiv 2104.09864, Sec. 3.4.3 (long-term decay of RoPE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["attention_by_distance", "frequency_maps", "keep_frequency", "kept_matrix", "map_grid", "normalised_frequency",
           "row_grids", "row_profile", "rope_decay", "spatial_stats"]


def _check(kept: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    rows, cols = grid
    if kept.ndim != 2:
        raise ValueError(f"kept must be (samples, n_keep) visual indices, got shape {tuple(kept.shape)}")
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= rows * cols):
        raise ValueError(f"kept indices must lie in [0, {rows * cols}) for a {rows}x{cols} grid")
    return rows, cols


def keep_frequency(kept: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of samples in which each grid cell was kept.

    Args:
        kept: `(S, n_keep)` visual indices kept in each of S samples (row-major over the grid).
        grid: `(rows, cols)`.

    Returns:
        `(rows, cols)` float tensor in [0, 1]; uniform random selection gives n_keep / N everywhere.
    """
    rows, cols = _check(kept, grid)
    hits = torch.zeros(kept.shape[0], rows * cols, device=kept.device).scatter(1, kept, 1.0)
    return hits.mean(0).view(rows, cols)


def spatial_stats(kept: torch.Tensor, grid: tuple[int, int]) -> dict[str, float]:
    """Spatial summary of kept positions over a dataset.

    Returns:
        `mean_row` / `mean_col`: mean grid row / column of kept tokens divided by (rows − 1) / (cols − 1), so a
        spatially uniform selection gives 0.5 and 1 is the bottom / right edge; `coverage_2x2` /
        `coverage_3x3`: mean share of the non-overlapping 2×2 / 3×3 windows (edge windows included) that
        hold at least one kept token; `entropy`: entropy of the dataset's kept-position distribution divided
        by log N (1 = every cell kept equally often).
    """
    rows, cols = _check(kept, grid)
    r = (kept // cols).float()
    c = (kept % cols).float()
    out = {
        "mean_row": float(r.mean() / max(rows - 1, 1)),
        "mean_col": float(c.mean() / max(cols - 1, 1)),
    }
    for w in (2, 3):
        wc = -(-cols // w)
        window = (kept // cols // w) * wc + (kept % cols) // w
        n_windows = -(-rows // w) * wc
        hit = torch.zeros(kept.shape[0], n_windows, device=kept.device).scatter(1, window, 1.0)
        out[f"coverage_{w}x{w}"] = float(hit.mean())
    p = keep_frequency(kept, grid).flatten()
    p = p / p.sum()
    out["entropy"] = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(rows * cols))
    return out


def rope_decay(inv_freq: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """RoFormer's upper bound on the attention logit between tokens `m` positions apart, relative to m = 0.

    With RoPE, q·k at relative distance m is bounded by `max|q_j − q_{j+1}| · Σ_j |S_j|` with
    `S_j = Σ_{k<j} exp(i·m·θ_k)`; the bound decays with m, which is why a query (FastV's last token)
    attends more to nearby keys (the last rows of the image).

    Args:
        inv_freq: `(d/2,)` the model's RoPE frequencies θ_k (its rotary embedding's `inv_freq`).
        distances: `(M,)` relative distances m ≥ 0.

    Returns:
        `(M,)` mean_j |S_j| at each distance, divided by its value at m = 0.
    """
    theta = inv_freq.double()
    m = distances.double()[:, None]
    phase = m * theta[None, :]
    s = torch.complex(phase.cos(), phase.sin()).cumsum(dim=1)      # S_j for j = 1..d/2
    at_zero = (theta.shape[0] + 1) / 2                              # S_j = j when m = 0
    return (s.abs().mean(dim=1) / at_zero).float()


def attention_by_distance(scores: torch.Tensor, distances: torch.Tensor, n_bins: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention a key receives as a function of its distance to the query, over a dataset.

    Args:
        scores: `(S, N)` attention of the query (e.g. FastV's last token) over N visual tokens.
        distances: `(S, N)` query position minus key position.
        n_bins: equal-width distance bins.

    Returns:
        `(bin_centres (n_bins,), mean_score (n_bins,))`; empty bins give NaN.
    """
    if scores.shape != distances.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and distances {tuple(distances.shape)} must have the same shape")
    if n_bins < 1:
        raise ValueError(f"n_bins must be ≥ 1, got {n_bins}")
    d = distances.float().flatten()
    v = scores.float().flatten()
    edges = torch.linspace(float(d.min()), float(d.max()), n_bins + 1, device=d.device)
    # the last bin is closed on the right, so the largest distance falls in it
    idx = (torch.bucketize(d, edges, right=True) - 1).clamp(0, n_bins - 1)
    total = torch.zeros(n_bins, device=d.device).index_add(0, idx, v)
    count = torch.zeros(n_bins, device=d.device).index_add(0, idx, torch.ones_like(v))
    return (edges[:-1] + edges[1:]) / 2, total / count


# ---- from evaluation rows ------------------------------------------------------------------------------------

def kept_matrix(kept: Sequence[Sequence[int]]) -> torch.Tensor:
    """Stack per-sample kept index lists (the `kept` column of `tpx.evaluate.evaluate`) into `(S, n_keep)`.

    Raises:
        ValueError: for no samples, a missing list (an unpruned row) or lists of different lengths.
    """
    rows = [None if k is None else [int(i) for i in k] for k in kept]
    if not rows or any(r is None for r in rows):
        raise ValueError("kept must be a non-empty sequence of index lists (unpruned rows have none)")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) != 1:
        raise ValueError(f"every sample must keep the same number of tokens, got lengths {lengths}")
    return torch.tensor(rows, dtype=torch.long)


def row_grids(rows: Any) -> list[tuple[tuple[int, int], ...]]:
    """The grids of every row (`grids` column of `tpx.evaluate.evaluate` rows, from the adapter's layout).

    Rows without that column (results cached by an older tpx) fall back to one square grid of `n_visual`.

    Raises:
        ValueError: such a row's `n_visual` is not a square.
    """
    if "grids" in rows.columns:
        return [tuple((int(r), int(c)) for r, c in g) for g in rows["grids"]]
    out = []
    for n in rows["n_visual"]:
        g = math.isqrt(int(n))
        if g * g != int(n) or g == 0:
            raise ValueError(f"n_visual={n} is not a square single-image grid and the rows carry no `grids`")
        out.append(((g, g),))
    return out


def map_grid(grids: Sequence[Sequence[tuple[int, int]]]) -> tuple[tuple[int, int], bool]:
    """The grid a keep-frequency map of these layouts is drawn on, and whether it is a normalised one.

    One layout with one segment (LLaVA-1.5, the organism): its own grid, exactly (`False`). Several segments
    (LLaVA-NeXT's base view and AnyRes crops, several images) or several layouts (Qwen2-VL images of different
    sizes): a common normalised grid (`True`), the largest segment's shape, onto which every segment is
    area-weighted (`normalised_frequency`).
    """
    layouts = list(dict.fromkeys(tuple(map(tuple, g)) for g in grids))
    if not layouts:
        raise ValueError("no layouts: need at least one row with image grids")
    if len(layouts) == 1 and len(layouts[0]) == 1:
        return layouts[0][0], False
    return max((g for lay in layouts for g in lay), key=lambda g: g[0] * g[1]), True


def _cover(n_out: int, n_in: int) -> torch.Tensor:
    """`(n_out, n_in)` share of output bin i ([i, i+1) / n_out) covered by input cell j ([j, j+1) / n_in); rows sum to 1."""
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] / n_out
    a = torch.arange(n_in, dtype=torch.float64)[None, :] / n_in
    overlap = (torch.minimum(lo + 1 / n_out, a + 1 / n_in) - torch.maximum(lo, a)).clamp(min=0)
    return overlap * n_out


def normalised_frequency(kept: Sequence[Sequence[int]], grids: Sequence[Sequence[tuple[int, int]]],
                         shape: tuple[int, int]) -> torch.Tensor:
    """Keep frequency on a common normalised grid: the share of the visual tokens over each part of the image
    that were kept, averaged over samples.

    Every image segment is taken to span the whole image (a single-image sample: LLaVA-NeXT's base view and its
    unpadded crop canvas both do, a Qwen2-VL grid does). A segment's kept indicator is area-weighted onto
    `shape` and the segments are pooled by their token counts, so a position-blind rule still gives
    n_keep / N everywhere, whatever the grids; for one segment of shape `shape` this equals `keep_frequency`.

    Args:
        kept: per sample, kept indices into its N visual tokens (layout order).
        grids: per sample, `(rows, cols)` of its segments in layout order. shape: `(rows, cols)` of the map.

    Returns:
        `(rows, cols)` float tensor in [0, 1].
    """
    if len(kept) != len(grids) or not kept:
        raise ValueError(f"need one grid list per sample, got {len(kept)} kept lists and {len(grids)} grid lists")
    total = torch.zeros(shape, dtype=torch.float64)
    for index, layout in zip(kept, grids, strict=True):
        n = sum(r * c for r, c in layout)
        hit = torch.zeros(n, dtype=torch.float64).index_fill(0, torch.as_tensor(list(index), dtype=torch.long), 1.0)
        weighted, start = torch.zeros(shape, dtype=torch.float64), 0
        for r, c in layout:
            cell = hit[start:start + r * c].view(r, c)
            weighted += r * c * (_cover(shape[0], r) @ cell @ _cover(shape[1], c).T)
            start += r * c
        total += weighted / n
    return (total / len(kept)).float()


def row_profile(scores: torch.Tensor, grids: Sequence[tuple[int, int]], n_rows: int) -> torch.Tensor:
    """Mean of per-token values by image row, top to bottom, on `n_rows` normalised rows (every segment
    area-weighted onto them, as `normalised_frequency`): e.g. FastV's attention per row of the image.

    Args:
        scores: `(S, N)` values per visual token, layout order. grids: the layout's segments. n_rows: rows out.

    Returns:
        `(n_rows,)`; for one segment with `n_rows` rows, the plain mean of each grid row.
    """
    values, weight, start = torch.zeros(n_rows, dtype=torch.float64), torch.zeros(n_rows, dtype=torch.float64), 0
    for r, c in grids:
        per_row = scores[:, start:start + r * c].double().view(scores.shape[0], r, c).mean(dim=(0, 2))
        cover = _cover(n_rows, r)
        values += r * c * (cover @ per_row)
        weight += r * c * cover.sum(1)
        start += r * c
    if start != scores.shape[1]:
        raise ValueError(f"grids {list(grids)} hold {start} tokens, scores have {scores.shape[1]}")
    return (values / weight).float()


def frequency_maps(df: Any, retention: float, grid: tuple[int, int] | None = None,
                   methods: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Keep-frequency map of each method at one retention, from `tpx.evaluate.evaluate` rows (seeds pooled).

    Multi-stage methods (SparseVLM, PDrop) keep fewer tokens after their last stage than `retention · N`
    (their retention is an equivalent budget); the `kept` column, and so the map, is that last stage.

    Args:
        df: evaluation rows with columns method, retention, kept (and grids).
        retention: the retention to draw (matched to 1e-9).
        grid: `(rows, cols)` of a single-grid image; None: from the rows (`map_grid`: the image's own grid, or a
            common normalised grid for several segments or layouts, see `normalised_frequency`).
        methods: methods in drawing order; default: every pruned method with rows at `retention`.

    Returns:
        method → `(rows, cols)` share of samples that kept each cell (see `keep_frequency`).

    Raises:
        ValueError: a method named in `methods` has no rows at `retention`.
    """
    at = df[(df["method"] != "unpruned") & ((df["retention"] - retention).abs() < 1e-9)]
    present = list(dict.fromkeys(at["method"]))
    if methods is None:
        methods = present
    missing = [m for m in methods if m not in present]
    if missing:
        raise ValueError(f"no rows for {missing} at retention {retention:.4g}; present: {present}")
    normalised = False
    if grid is None and len(at):
        grid, normalised = map_grid(row_grids(at))
    out = {}
    for m in methods:
        part = at[at["method"] == m]
        if normalised:
            out[m] = normalised_frequency([list(k) for k in part["kept"]], row_grids(part), grid)
        else:
            out[m] = keep_frequency(kept_matrix(list(part["kept"])), grid)
    return out
