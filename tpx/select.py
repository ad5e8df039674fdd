"""Selectors: turn per-token scores (and features) into the visual tokens that survive.

Every selector is a pure, batched tensor function: `(B, N)` scores or `(B, N, D)` features in, `(B, n_keep)`
sorted indices into the visual span out (or a `Merged` pair when tokens are merged, not subset). No Python
loop runs over tokens (greedy methods loop over their sequential steps, without host syncs); randomness only
comes through a `torch.Generator`. This module imports only torch and math, so a new method never needs model
code. It holds the budget rule, the generic selectors and 2-D pooling; duplication-aware selectors live in
`tpx.dedup`, merging ones in `tpx.merge`, multi-stage schedules in `tpx.schedules`.

Papers covered:
    FastV top-k: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv 2403.06764.
    Window top-k ("Window FastV") and 2-D pooling baselines: Wen et al., "Token Pruning in Multimodal Large
    Language Models: Are We Solving the Right Problem?", Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Q1).
    Downsampling baseline at matched token count: Liao et al., VTC-Bench, arXiv 2510.07143; Peng et al.,
    UniPruneBench, arXiv 2511.02650.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["Merged", "budget", "check_choice", "check_count", "check_flag", "check_n_keep", "check_retention",
           "check_unit", "downsample", "mask_to_index", "pool2d", "pool_grid", "round_count", "sorted_merge", "split_budget",
           "take", "topk", "window_topk"]

class Merged(NamedTuple):
    """Result of a merging selector: each output token stands for a group of input tokens.

    Attributes:
        index: `(B, n_keep)` sorted visual indices of each group's representative (its first token); the
            merged token takes that token's place and position id.
        features: `(B, n_keep, D)` merged features, in the order of `index`.
    """

    index: torch.Tensor
    features: torch.Tensor


def check_retention(retention: float) -> float:
    """Validate a retention ratio: the kept share of visual tokens must lie in (0, 1].

    Raises:
        ValueError: if `retention` is not a real number in (0, 1].
    """
    if isinstance(retention, bool) or not isinstance(retention, (int, float)):
        raise ValueError(f"retention must be a number in (0, 1], got {retention!r}")
    if not (0.0 < float(retention) <= 1.0) or math.isnan(retention):
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    return float(retention)


def budget(retention: float, n_visual: int) -> int:
    """Number of visual tokens kept: `round(retention · n_visual)`, halves rounded up.

    This is the single place where tpx turns a ratio into a count, so the literature's budgets come out exact:
    for N = 576, r = 1/3, 1/4, 2/9, 1/9 give 192, 144, 128, 64.

    Args:
        retention: kept share of visual tokens, in (0, 1].
        n_visual: number of visual tokens N (≥ 1).

    Returns:
        n_keep, with 1 ≤ n_keep ≤ n_visual.

    Raises:
        ValueError: if `retention` is outside (0, 1], `n_visual` < 1, or the budget rounds to zero tokens.
    """
    retention = check_retention(retention)
    if int(n_visual) < 1:
        raise ValueError(f"n_visual must be ≥ 1, got {n_visual}")
    n_keep = round_count(retention * n_visual)
    if n_keep < 1:
        raise ValueError(
            f"retention={retention} keeps 0 of {n_visual} visual tokens; "
            f"the smallest retention that keeps one token is {0.5 / n_visual:.4g}"
        )
    return min(n_keep, int(n_visual))


def round_count(x: float) -> int:
    """Round a token count to the nearest integer, halves up: the one rounding rule of budgets and schedules.

    A small epsilon absorbs float error such as 2/9 · 576 = 127.99999999999999.
    """
    return math.floor(x + 0.5 + 1e-9)


def topk(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the `n_keep` highest-scoring tokens of each row.

    Args:
        scores: `(B, N)` float scores, higher means keep.
        n_keep: tokens kept per row.

    Returns:
        `(B, n_keep)` int64 indices into the N tokens, sorted ascending.
    """
    check_n_keep(n_keep, scores.shape[1])
    return scores.topk(n_keep, dim=1).indices.sort(dim=1).values


def window_topk(scores: torch.Tensor, n_keep: int, grid: tuple[int, int], window: int | tuple[int, int] = 2) -> torch.Tensor:
    """Top-k inside each local 2-D window of the visual grid ("Window FastV").

    Splitting the grid into windows and ranking inside each one makes the kept set spatially uniform while
    still choosing by score, which is how the study isolates position bias from the scores themselves.
    Tokens are taken by their rank inside their window first and by score second, so with W windows and
    `n_keep = q·W` every window keeps exactly its q best tokens; any remainder goes to the windows whose next
    token scores highest. Edge windows are smaller when the grid is not a multiple of the window.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Window FastV; 2×2 windows keeping
    1 give 144 of 576 tokens, 3×3 keeping 1 give 64).

    Args:
        scores: `(B, N)` scores with N = rows·cols, tokens in row-major order.
        n_keep: tokens kept per row.
        grid: `(rows, cols)` of the visual grid.
        window: window size, an int for square windows or `(height, width)`.

    Returns:
        `(B, n_keep)` sorted indices.
    """
    rows, cols = check_grid(grid, scores.shape[1])
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    if not (1 <= wh <= rows and 1 <= ww <= cols):
        raise ValueError(f"window must be between 1 and the grid {rows}x{cols}, got {window}")
    check_n_keep(n_keep, scores.shape[1])
    device = scores.device
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    n_wc = -(-cols // ww)
    window_id = (r // wh) * n_wc + c // ww                                   # (N,)
    n_windows = int(-(-rows // wh) * n_wc)
    order = scores.sort(dim=1, descending=True, stable=True).indices         # (B, N) best first
    wid_sorted = window_id[order]                                            # (B, N)
    onehot = torch.nn.functional.one_hot(wid_sorted, n_windows)              # (B, N, W)
    rank = onehot.cumsum(dim=1).gather(2, wid_sorted[..., None])[..., 0] - 1  # rank inside own window
    n = scores.shape[1]
    key = rank * n + torch.arange(n, device=device)                           # rank first, then score order
    chosen = key.topk(n_keep, dim=1, largest=False).indices                  # positions in `order`
    return order.gather(1, chosen).sort(dim=1).values


def pool_grid(n_keep: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Output grid `(h, w)` with `h·w = n_keep` that 2-D pooling uses, closest in aspect to the input grid.

    Raises:
        ValueError: if no `h ≤ rows`, `w ≤ cols` multiply to `n_keep`; the message lists feasible budgets.
    """
    rows, cols = grid
    if n_keep < 1:  # a grid's share of a budget split over several grids (LLaVA-NeXT's base view and crops)
        raise ValueError(f"pooling cannot keep n_keep={n_keep} tokens of a {rows}x{cols} grid: every image grid "
                         "keeps at least one token")
    pairs = [(h, n_keep // h) for h in range(1, rows + 1) if n_keep % h == 0 and n_keep // h <= cols]
    if not pairs:
        feasible = sorted({h * w for h in range(1, rows + 1) for w in range(1, cols + 1)})
        near = sorted(feasible, key=lambda k: abs(k - n_keep))[:4]
        raise ValueError(
            f"pooling cannot keep exactly n_keep={n_keep} tokens of a {rows}x{cols} grid: it needs "
            f"n_keep = h*w with h <= {rows}, w <= {cols}; nearest feasible budgets: {sorted(near)}"
        )
    target = math.log(rows / cols)
    return min(pairs, key=lambda hw: (abs(math.log(hw[0] / hw[1]) - target), -hw[0]))


def pool2d(features: torch.Tensor, n_keep: int, grid: tuple[int, int]) -> Merged:
    """2-D average pooling of the visual grid down to exactly `n_keep` tokens.

    A spatially uniform, content-blind baseline: 2×2 windows give r = 1/4, 3×3 give r = 1/9. Other budgets
    use PyTorch's adaptive pooling rule (output cell i spans input rows ⌊iH/h⌋ … ⌈(i+1)H/h⌉ − 1), with the
    output grid chosen by `pool_grid`. A merged token takes the place and position id of the first token of
    its window.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Pooling baseline).

    Args:
        features: `(B, N, D)` visual token features, row-major over the grid.
        n_keep: number of merged tokens.
        grid: `(rows, cols)`.

    Returns:
        `Merged(index (B, n_keep), features (B, n_keep, D))`.
    """
    rows, cols = check_grid(grid, features.shape[1])
    check_n_keep(n_keep, features.shape[1])
    h, w = pool_grid(n_keep, (rows, cols))
    b, _, d = features.shape
    x = features.transpose(1, 2).reshape(b, d, rows, cols)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (h, w)).reshape(b, d, h * w).transpose(1, 2)
    start_r = torch.div(torch.arange(h, device=features.device) * rows, h, rounding_mode="floor")
    start_c = torch.div(torch.arange(w, device=features.device) * cols, w, rounding_mode="floor")
    index = (start_r[:, None] * cols + start_c[None, :]).reshape(1, -1).expand(b, -1)
    return Merged(index=index, features=pooled)


def downsample(vision_features: torch.Tensor, n_keep: int, grid: tuple[int, int]) -> Merged:
    """The downsampling baseline: the image's pre-projector patch grid averaged down to `n_keep` tokens.

    VTC-Bench found that plainly downsampling the image beats many pruning methods at the same token count on
    the common benchmarks, and UniPruneBench that content-blind baselines (random pruning) at a matched count
    beat many published methods: a method that does not beat them has not shown that its choice of tokens
    matters. tpx downsamples the **patch grid before
    the projector** (hook "V": the vision tower's feature-layer output, as `pool2d` pools it, then projected
    into the LLM) rather than resizing the image so the tower emits about n_keep tokens: pooling the grid is the
    same operation for every family, read from the adapter's layout (one grid per image or AnyRes crop, Qwen2-VL's
    merged 2x2 groups), keeps exactly n_keep tokens, and needs no change to the processor; resizing is
    family-specific (LLaVA-1.5's CLIP tower takes a fixed 336 px input; a smaller one needs position embeddings
    it was not trained with) and reaches only the counts the resize grid allows. Unlike `pooling` (hook E: average of the
    *projected* embeddings), the projector here sees the averaged features, as it would see a coarser image's.

    Reference: Liao et al., Are We Using the Right Benchmark: An Evaluation Framework for Visual Token Compression
    Methods (VTC-Bench), arXiv 2510.07143 (downsampling baseline and difficult subset); Peng et al., Can Visual
    Input Be Compressed? (UniPruneBench), arXiv 2511.02650 (simple baselines at matched token counts).
    Differs from the official code: VTC-Bench resizes the input image of a native-resolution model (Qwen2-VL);
    tpx averages the patch features of the image the processor made, so the vision tower still runs at full
    resolution (no vision-side saving) and the grid is averaged after it.

    Args:
        vision_features: `(B, N, Dv)` pre-projector patch features, row-major over the grid.
        n_keep: tokens kept (`pool_grid` picks the output grid; a budget no grid can hold is an error).
        grid: `(rows, cols)` of the image (segment).

    Returns:
        `Merged(index (B, n_keep), features (B, n_keep, Dv))` in vision-feature space: each merged token takes
        the place and position id of its window's first patch.
    """
    return pool2d(vision_features, n_keep, grid)


# ---- budgets over segments and stages ------------------------------------------------------------------

def split_budget(n_keep: int, sizes: Sequence[int]) -> list[int]:
    """Split a budget over image segments (crops, frames, images) in proportion to their token counts.

    Largest-remainder rounding: segment i first gets ⌊n_keep·sᵢ/Σs⌋, then the leftover tokens go to the
    largest fractional parts (ties: the earlier segment). The total is exactly `n_keep` and no segment gets
    more than it has. When `n_keep` ≥ the number of segments, every segment keeps at least one token: a
    segment rounded to zero takes one from the segment that is furthest above its exact share.

    Reference: the per-crop budget of FasterVLM (arXiv 2412.01818) and VisionZip (arXiv 2412.04467) on
    LLaVA-NeXT, which prune each AnyRes crop separately.

    Args:
        n_keep: total tokens to keep, 1 ≤ n_keep ≤ Σ sizes.
        sizes: token count of each segment, each ≥ 1.

    Returns:
        tokens kept per segment, summing to `n_keep`.

    Raises:
        ValueError: for an empty `sizes`, a size < 1 or `n_keep` outside [1, Σ sizes].
    """
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be a non-empty list of counts ≥ 1, got {sizes}")
    total = sum(sizes)
    check_n_keep(n_keep, total)
    alloc = [n_keep * s // total for s in sizes]                 # integer arithmetic: no float rounding
    order = sorted(range(len(sizes)), key=lambda i: (-(n_keep * sizes[i] % total), i))
    for i in order[: n_keep - sum(alloc)]:
        alloc[i] += 1
    if n_keep >= len(sizes):
        for i in [i for i, a in enumerate(alloc) if a == 0]:
            # the donor is furthest above its exact share alloc·total − n_keep·size (compared in integers)
            donor = max((j for j, a in enumerate(alloc) if a >= 2),
                        key=lambda j: (alloc[j] * total - n_keep * sizes[j], -j))
            alloc[donor] -= 1
            alloc[i] = 1
    return alloc


# ---- helpers shared with tpx.dedup, tpx.merge and the engine -------------------------------------------

def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, K) of `x` (B, N, D) → (B, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def mask_to_index(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending positions of the `count` True entries of each row of a `(B, N)` bool mask, without a host sync."""
    return mask.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :count]


def sorted_merge(index: torch.Tensor, features: torch.Tensor) -> Merged:
    """A `Merged` with its indices sorted ascending and the features reordered alike."""
    index, order = index.sort(dim=1)
    return Merged(index=index, features=take(features, order))


def check_grid(grid: tuple[int, int], n: int) -> tuple[int, int]:
    """`grid` as two ints whose product is the `n` tokens it lays out.

    Raises:
        ValueError: if rows · cols != n.
    """
    rows, cols = (int(g) for g in grid)
    if rows * cols != n:
        raise ValueError(f"grid {rows}x{cols} does not match the {n} visual tokens it should lay out")
    return rows, cols


def check_n_keep(n_keep: int, n: int) -> None:
    """Raises `ValueError` unless 1 ≤ n_keep ≤ n."""
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")


def check_unit(name: str, value: float) -> float:
    """`value` as a float in [0, 1]; the `ValueError` names the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_count(name: str, value: int, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high] (no upper bound when `high` is None); the `ValueError` names it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f"≥ {low}"
        raise ValueError(f"{name} must be an int {span if high is None else 'in ' + span}, got {value!r}")
    return value


def check_flag(name: str, value: bool) -> bool:
    """`value` if it is True or False; the `ValueError` names the parameter."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`; the `ValueError` names the parameter and lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
