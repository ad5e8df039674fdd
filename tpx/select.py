"""Selectors: turn per-token scores (and features) into the visual tokens that survive.

Every selector is a pure, batched tensor function: `(B, N)` scores or `(B, N, D)` features in, `(B, n_keep)`
sorted indices into the visual span out (or a `Merged` pair when tokens are merged, not subset). No Python
loop runs over tokens (greedy methods loop over their sequential steps, without host syncs); randomness only
comes through a `torch.Generator`. This module imports only torch, math and `tpx.scores`, so a new method
never needs model code. Schedules of multi-stage methods (`(retention, n_visual, n_stages, **params) ->
list[int]`) live here too: for them `retention` is the equivalent budget, the visual tokens per decoder layer
averaged over the LLM's layers divided by N.

Papers covered:
    FastV top-k: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv 2403.06764.
    Window top-k ("Window FastV") and 2-D pooling baselines: Wen et al., "Token Pruning in Multimodal Large
    Language Models: Are We Solving the Right Problem?", Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Q1);
    the α mix of importance and uniqueness, Q4, Eq. 6.
    DART pivot duplication: Wen et al., EMNLP 2025, arXiv 2502.11494.
    DivPrune max–min diversity: Alvar et al., CVPR 2025, arXiv 2503.02175.
    VisionZip dominant + contextual tokens: Yang et al., CVPR 2025, arXiv 2412.04467.
    SparseVLM rater top-k, recycling and schedule: Zhang et al., ICML 2025, arXiv 2410.04417.
    PyramidDrop schedule: Xing et al., CVPR 2025, arXiv 2410.17247.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from tpx import scores as _scores

__all__ = [
    "Merged", "alpha_mix", "budget", "check_retention", "dominant_contextual", "max_min_diversity", "pivot_duplication",
    "pool2d", "pool_grid", "pyramid_schedule", "sparsevlm_schedule", "split_budget", "topk", "topk_recycle",
    "window_topk",
]


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
    # the small epsilon absorbs float error such as 2/9 * 576 = 127.99999999999999
    n_keep = math.floor(retention * n_visual + 0.5 + 1e-9)
    if n_keep < 1:
        raise ValueError(
            f"retention={retention} keeps 0 of {n_visual} visual tokens; "
            f"the smallest retention that keeps one token is {0.5 / n_visual:.4g}"
        )
    return min(n_keep, int(n_visual))


def topk(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the `n_keep` highest-scoring tokens of each row.

    Args:
        scores: `(B, N)` float scores, higher means keep.
        n_keep: tokens kept per row.

    Returns:
        `(B, n_keep)` int64 indices into the N tokens, sorted ascending.
    """
    _check_n_keep(n_keep, scores.shape[1])
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
    rows, cols = _check_grid(grid, scores.shape[1])
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    if not (1 <= wh <= rows and 1 <= ww <= cols):
        raise ValueError(f"window must be between 1 and the grid {rows}x{cols}, got {window}")
    _check_n_keep(n_keep, scores.shape[1])
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
    rows, cols = _check_grid(grid, features.shape[1])
    _check_n_keep(n_keep, features.shape[1])
    h, w = pool_grid(n_keep, (rows, cols))
    b, _, d = features.shape
    x = features.transpose(1, 2).reshape(b, d, rows, cols)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (h, w)).reshape(b, d, h * w).transpose(1, 2)
    start_r = torch.div(torch.arange(h, device=features.device) * rows, h, rounding_mode="floor")
    start_c = torch.div(torch.arange(w, device=features.device) * cols, w, rounding_mode="floor")
    index = (start_r[:, None] * cols + start_c[None, :]).reshape(1, -1).expand(b, -1)
    return Merged(index=index, features=pooled)


def _check_grid(grid: tuple[int, int], n: int) -> tuple[int, int]:
    rows, cols = (int(g) for g in grid)
    if rows * cols != n:
        raise ValueError(f"grid {rows}x{cols} does not match the {n} visual tokens it should lay out")
    return rows, cols


def _check_n_keep(n_keep: int, n: int) -> None:
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")


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
    _check_n_keep(n_keep, total)
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


def sparsevlm_schedule(retention: float, n_visual: int, n_stages: int = 3, **params: Any) -> list[int]:
    """SparseVLM's per-stage counts: visual tokens kept after each of its three pruning layers.

    `retention` is the *equivalent* budget the SparseVLM paper reports: the number of visual tokens per
    decoder layer averaged over a 32-layer LLM with stages at layers 2, 6 and 15 is ≈ retention·N (its
    "192" schedule 300/200/110 averages 188 tokens, "128" → 124, "64" → 62). At the paper's three budgets of
    N = 576 the table is reproduced exactly: 192 → 300/200/110, 128 → 303/110/36, 64 → 66/30/17. Other
    budgets interpolate the table linearly in retention between the anchors r = 1/9, 2/9, 1/3 and 1 (no
    pruning, N/N/N); below 1/9 the 1/9 schedule is scaled by r·9. Other N scale the counts by N/576.
    Counts are rounded, at least 1 and non-increasing.

    Reference: Zhang et al., SparseVLM, ICML 2025, arXiv 2410.04417 (LLaVA-1.5 settings; the counts are those
    of the official code's `sparse_token_list_192/128/64`).

    Args:
        retention: equivalent retention in (0, 1].
        n_visual: visual tokens N before the first stage.
        n_stages: must be 3 (the paper's schedule has three stages).
        **params: the method's other parameters (ignored).

    Returns:
        `[k₁, k₂, k₃]`, tokens kept after each stage.
    """
    retention = check_retention(retention)
    if n_stages != 3:
        raise ValueError(f"n_stages must be 3 for SparseVLM's schedule (layers 2, 6, 15), got {n_stages}")
    if int(n_visual) < 1:
        raise ValueError(f"n_visual must be ≥ 1, got {n_visual}")
    anchors = [(1 / 9, (66, 30, 17)), (2 / 9, (303, 110, 36)), (1 / 3, (300, 200, 110)), (1.0, (576, 576, 576))]
    if retention <= anchors[0][0]:
        frac = [c / 576 * retention / anchors[0][0] for c in anchors[0][1]]
    else:
        (r0, c0), (r1, c1) = next((a, b) for a, b in zip(anchors, anchors[1:]) if retention <= b[0] + 1e-12)
        w = min(1.0, (retention - r0) / (r1 - r0))
        frac = [((1 - w) * a + w * b) / 576 for a, b in zip(c0, c1)]
    return _monotone_counts(frac, int(n_visual))


def pyramid_schedule(
    retention: float,
    n_visual: int,
    n_stages: int = 3,
    ratios: Sequence[float] = (0.5, 0.25, 0.125),
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    **params: Any,
) -> list[int]:
    """PyramidDrop's per-stage counts: a pyramid of shares of N, scaled to an equivalent budget.

    `retention` is the equivalent budget: visual tokens per decoder layer averaged over all layers equal
    retention·N, the way multi-stage methods are compared with single-stage ones at "192/128/64 tokens".
    Stage s keeps N·min(1, c·ratios[s]) tokens, with the one scale c that meets the budget; at c = 1 this is
    the paper's schedule (50/25/12.5% after layers 8/16/24 of 32, equivalent retention 0.46875). Layers
    0 … l₁−1 always see all N tokens, so retention must exceed l₁/L (0.25 for the default layers); a lower
    budget is an error, not a silent clamp. Without `layers`, stage s sits at depth s/(n_stages+1) of a
    32-layer LLM (8/16/24 for three stages); the share does not depend on depth when layers scale with it.

    Reference: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
    Redundancy Reduction", CVPR 2025, arXiv 2410.17247 (λ = 0.5 after layers 8, 16, 24 of LLaVA-1.5-7B).
    Differs from the official code: the code takes the ratios as given and reports no equivalent budget; tpx
    scales them to the requested retention (use retention=0.46875 for the code's 288/144/72 at N = 576).
    tpx's stage layers are the first layers that see each stage's count (the engine's K); the README's
    "after layer 8" may place the cut one layer later.

    Args:
        retention: equivalent retention in (0, 1].
        n_visual: visual tokens N before the first stage.
        n_stages: number of pruning stages; `len(ratios)` must equal it.
        ratios: shares of N kept after each stage at c = 1, in (0, 1], non-increasing.
        layers: stage layers (the first layer that sees each stage's tokens); default as above.
        n_layers: decoder depth L; required with `layers`.
        **params: the method's other parameters (ignored).

    Returns:
        tokens kept after each stage, non-increasing, each ≥ 1.

    Raises:
        ValueError: for malformed ratios or layers, or a retention below what the first stage layer allows.
    """
    retention = check_retention(retention)
    ratios = [float(x) for x in ratios]
    if len(ratios) != n_stages or any(not 0 < x <= 1 for x in ratios) or ratios != sorted(ratios, reverse=True):
        raise ValueError(f"ratios must be {n_stages} non-increasing shares in (0, 1], got {tuple(ratios)}")
    if layers is None:
        n_layers, layers = 32, [round(32 * (s + 1) / (n_stages + 1)) for s in range(n_stages)]
    layers = [int(x) for x in layers]
    if (n_layers is None or len(layers) != n_stages or layers != sorted(set(layers))
            or not 0 < layers[0] <= layers[-1] < n_layers):
        raise ValueError(f"layers must be {n_stages} increasing layers in 1..n_layers-1, with n_layers given; "
                         f"got layers={layers}, n_layers={n_layers}")
    n = int(n_visual)
    width = [b - a for a, b in zip(layers, layers[1:] + [n_layers])]

    def share(c: float) -> float:
        return (layers[0] + sum(w * min(1.0, max(c * x, 1 / n)) for w, x in zip(width, ratios))) / n_layers

    lowest = share(0.0)
    if retention < lowest - 1e-12:
        raise ValueError(
            f"retention={retention:.4g} is below what pdrop can reach with stages at layers {tuple(layers)} of "
            f"{n_layers}: all N tokens pass the first {layers[0]} layers, so retention must be ≥ {lowest:.4g}; "
            f"pass earlier stage layers for a smaller budget"
        )
    lo, hi = 0.0, 1.0 / ratios[-1]
    for _ in range(100):  # bisection on a scalar; share() is increasing in c
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid) < retention else (lo, mid)
    c = (lo + hi) / 2
    return _monotone_counts([min(1.0, c * x) for x in ratios], n)


def _monotone_counts(frac: Sequence[float], n: int) -> list[int]:
    counts, prev = [], n
    for f in frac:
        prev = max(1, min(prev, math.floor(f * n + 0.5 + 1e-9)))
        counts.append(prev)
    return counts


# ---- importance × uniqueness (the study's α) -----------------------------------------------------------

def alpha_mix(
    scores: torch.Tensor,
    n_keep: int,
    features: torch.Tensor,
    last_feature: torch.Tensor,
    normed_features: torch.Tensor,
    normed_text: torch.Tensor,
    text_mask: torch.Tensor,
    visual_keys: torch.Tensor,
    text_keys: torch.Tensor,
    alpha: float = 0.2,
    uniqueness: str = "dup",
    n_visual_pivots: int = 4,
    n_text_pivots: int = 4,
) -> torch.Tensor:
    """Keep the tokens with the best mix α·minmax(importance) + (1 − α)·minmax(uniqueness).

    α = 1 is FastV exactly (top-k of the importance, no normalisation involved); α = 0 is pure
    de-duplication. Two readings of uniqueness, because the study does not pin its reference down:

    - `"last"`: 1 − cosine similarity of `features` to `last_feature`, static, then top-k.
    - `"dup"`: 1 − the largest cosine similarity (on `normed_features`) to a reference set that starts as the
      DART pivots (`n_visual_pivots` visual and `n_text_pivots` text tokens with the largest key L1 norm) and
      grows by every kept token, chosen greedily one token per step; uniqueness is min-max normalised over the
      remaining candidates at each step. Removing one of two duplicates thus lowers the other's value, the
      point the study makes against independent scores. A visual pivot is compared only with the pivots
      ranked before it, so of two identical pivots one stays unique.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q4, Eq. 6 (importance = FastV attention,
    uniqueness = 1 − cosine similarity, both min-max normalised); pivots as in DART, arXiv 2502.11494.

    Args:
        scores: `(B, N)` importance (FastV: head-mean attention of the last token).
        n_keep: tokens kept per row.
        features, last_feature: `(B, N, D)` and `(B, D)` hidden states entering the pruned layer ("last").
        normed_features, normed_text: `(B, N, D)`, `(B, T, D)` after the final norm ("dup").
        text_mask: `(B, T)` bool, real text tokens. visual_keys, text_keys: `(B, N, Dk)`, `(B, T, Dk)` keys.
        alpha: importance weight in [0, 1].
        uniqueness: `"dup"` or `"last"`.
        n_visual_pivots, n_text_pivots: DART pivots for `"dup"`.

    Returns:
        `(B, n_keep)` sorted indices.
    """
    alpha = _check_unit("alpha", alpha)
    if uniqueness not in ("dup", "last"):
        raise ValueError(f"uniqueness must be 'dup' or 'last', got {uniqueness!r}")
    _check_n_keep(n_keep, scores.shape[1])
    if alpha == 1.0:
        return topk(scores, n_keep)
    importance = _scores.minmax(scores)
    if uniqueness == "last":
        unique = _scores.minmax(_scores.last_token_uniqueness(features, last_feature))
        return topk(alpha * importance + (1 - alpha) * unique, n_keep)
    x = torch.nn.functional.normalize(normed_features.float(), dim=-1)
    b, n, _ = x.shape
    n_vp = _check_count("n_visual_pivots", n_visual_pivots, 0, n)
    vis_piv = _scores.key_norm(visual_keys).topk(n_vp, dim=1).indices                      # (B, Pv)
    sim_vis = torch.bmm(x, _take(x, vis_piv).transpose(1, 2))                             # (B, N, Pv)
    order = torch.arange(n_vp, device=x.device)
    rank = torch.full((b, n), n_vp, device=x.device).scatter(1, vis_piv, order.expand(b, -1))  # Pv: not a pivot
    earlier = order < rank[..., None]                                                     # pivot j ranks before token i
    best = torch.full((b, n), -1.0, device=x.device)                                     # (B, N) max similarity
    if n_vp:
        best = torch.maximum(best, sim_vis.masked_fill(~earlier, -1.0).amax(dim=2))
    text_piv, text_ok = _text_pivots(text_keys, text_mask, n_text_pivots)
    if text_piv.shape[1]:
        t = torch.nn.functional.normalize(normed_text.float(), dim=-1)
        sim_text = torch.bmm(x, _take(t, text_piv).transpose(1, 2)).masked_fill(~text_ok[:, None, :], -1.0)
        best = torch.maximum(best, sim_text.amax(dim=2))
    kept = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    weighted = alpha * importance
    rows = torch.arange(b, device=x.device)
    inf = torch.tensor(float("inf"), device=x.device)
    tiny = torch.finfo(torch.float32).tiny
    best = best.clone()
    for _ in range(n_keep):  # greedy: each kept token joins the reference set (in-place on local tensors)
        # uniqueness 1 − best, min-max normalised over the remaining candidates, as `scores.minmax` does
        lo = torch.where(kept, inf, best).amin(dim=1, keepdim=True)                       # min best = max unique
        hi = torch.where(kept, -inf, best).amax(dim=1, keepdim=True)
        span = hi - lo
        unique = torch.where(span > 0, (hi - best) / span.clamp(min=tiny), 0.0)
        mix = (weighted + (1 - alpha) * unique).masked_fill_(kept, float("-inf"))
        pick = mix.argmax(dim=1)                                                           # (B,)
        kept[rows, pick] = True
        torch.maximum(best, torch.bmm(x, x[rows, pick][:, :, None])[..., 0], out=best)  # one column of x·xᵀ
    return _mask_to_index(kept, n_keep)


# ---- DART: duplication against pivots ------------------------------------------------------------------

def pivot_duplication(
    scores: torch.Tensor,
    n_keep: int,
    normed_features: torch.Tensor,
    normed_text: torch.Tensor,
    text_mask: torch.Tensor,
    text_keys: torch.Tensor,
    n_visual_pivots: int = 4,
    n_text_pivots: int = 4,
    exact_budget: bool = True,
) -> torch.Tensor:
    """DART: keep the pivots, then for each pivot in turn the remaining tokens least similar to it.

    Pivots are the `n_visual_pivots` visual tokens with the highest `scores` (the L1 norm of their keys,
    `scores.key_norm`) and the `n_text_pivots` text tokens with the largest key L1 norm. Similarity is the
    cosine of hidden states after the final norm. Pivots are visited in order (visual by decreasing key
    norm, then text likewise); each takes its quota of the still-available visual tokens least similar to
    it, so no token is chosen twice.

    Budget: with `exact_budget=True` (tpx's default) the visual pivots count within `n_keep`; the other
    n_keep − Pv tokens are split over the row's P pivots as ⌊(n_keep − Pv)/P⌋ each, the remainder going one
    each to the first pivots in visiting order. Rows with fewer than `n_text_pivots` text tokens use fewer
    text pivots and spread their quota over the rest. `exact_budget=False` reproduces the official count:
    each of the P pivots takes ⌊n_keep/P⌋ tokens and the visual pivots come on top (132 tokens at 128).

    Reference: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
    Matters More" (DART), EMNLP 2025, arXiv 2502.11494, method section (pivot tokens by K-norm, duplication
    by cosine similarity; 4 visual + 4 text pivots, K = 2, LLaVA-1.5).
    Differs from the official code: the official code keeps the visual pivots on top of the budget; tpx keeps
    the budget exact unless `exact_budget=False`.

    Args:
        scores: `(B, N)` visual pivot ranking, the L1 norm of the visual keys at layer K−1.
        n_keep: tokens kept per row (see Budget).
        normed_features: `(B, N, D)` visual hidden states after the final norm.
        normed_text: `(B, T, D)` text hidden states after the final norm.
        text_mask: `(B, T)` bool, real text tokens.
        text_keys: `(B, T, Dk)` keys of the text tokens at layer K−1.
        n_visual_pivots: Pv ≥ 1. n_text_pivots: ≥ 0.
        exact_budget: keep exactly `n_keep` (True) or the official count (False).

    Returns:
        `(B, n_keep)` sorted indices, or `(B, Pv + P·⌊n_keep/P⌋)` with `exact_budget=False`.
    """
    b, n = scores.shape
    _check_n_keep(n_keep, n)
    if not isinstance(exact_budget, bool):
        raise ValueError(f"exact_budget must be True or False, got {exact_budget!r}")
    n_vp = _check_count("n_visual_pivots", n_visual_pivots, 1, n)
    if exact_budget:
        n_vp = min(n_vp, n_keep)
    vis_piv = scores.topk(n_vp, dim=1).indices                                            # (B, Pv)
    text_piv, text_ok = _text_pivots(text_keys, text_mask, n_text_pivots)                 # (B, Pt)
    x = torch.nn.functional.normalize(normed_features.float(), dim=-1)
    t = torch.nn.functional.normalize(normed_text.float(), dim=-1)
    pivots = torch.cat([_take(x, vis_piv), _take(t, text_piv)], dim=1)                    # (B, P, D)
    ok = torch.cat([torch.ones_like(vis_piv, dtype=torch.bool), text_ok], dim=1)          # (B, P)
    n_piv = ok.shape[1]
    if exact_budget:
        rest = n_keep - n_vp
        count = ok.sum(dim=1, keepdim=True)
        slot = ok.long().cumsum(dim=1) - 1
        quota = torch.where(ok, rest // count + (slot < rest % count).long(), 0)
        n_out = n_keep
    else:
        if not bool(text_ok.all()) or text_piv.shape[1] != n_text_pivots:
            raise ValueError(f"exact_budget=False needs n_text_pivots={n_text_pivots} text tokens in every row")
        quota = torch.full_like(ok, n_keep // n_piv, dtype=torch.long)
        n_out = n_vp + n_piv * (n_keep // n_piv)
        if n_out > n:
            raise ValueError(f"exact_budget=False keeps {n_out} tokens, more than the {n} visual tokens")
    k_max = quota.amax(dim=0).tolist()                                                    # one sync, before the loop
    kept = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter(1, vis_piv, True)
    for j, k in enumerate(k_max):  # pivots in turn: each sees what the earlier ones left
        if k == 0:
            continue
        sim = torch.bmm(x, pivots[:, j, :, None])[..., 0].masked_fill(kept, float("inf"))
        cand = sim.topk(k, dim=1, largest=False).indices                                  # (B, k) least similar
        take = torch.arange(k, device=x.device) < quota[:, j : j + 1]
        kept = kept | torch.zeros_like(kept).scatter(1, cand, take)
    return _mask_to_index(kept, n_out)


# ---- DivPrune: max–min diversity -----------------------------------------------------------------------

def max_min_diversity(features: torch.Tensor, n_keep: int) -> torch.Tensor:
    """DivPrune: greedily keep the token farthest (in cosine distance) from everything kept so far.

    A greedy solution of the Max–Min Diversity Problem: the kept set covers the image's distinct content
    and near-duplicates are dropped first. First pick: the token whose nearest other token is farthest away
    (argmaxᵢ minⱼ≠ᵢ d(i, j)); then each step adds argmaxᵢ minₛ d(i, s) over the kept s, where
    d = 1 − cosine similarity. Ties go to the lowest index.

    Reference: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
    CVPR 2025, arXiv 2503.02175, method section (MMDP greedy, Algorithm 1).
    Differs from the official code: when every remaining token is an exact duplicate of a kept one, the
    official argmax can return an already-kept token; tpx masks kept tokens, so no token is picked twice.

    Args:
        features: `(B, N, D)` visual features (hook E: the projected visual embeddings).
        n_keep: tokens kept per row.

    Returns:
        `(B, n_keep)` sorted indices.
    """
    b, n, _ = features.shape
    _check_n_keep(n_keep, n)
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1.0 - torch.bmm(x, x.transpose(1, 2))                                          # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pick = dist.masked_fill(eye, float("inf")).amin(dim=2).argmax(dim=1, keepdim=True)   # (B, 1)
    kept = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter(1, pick, True)
    nearest = dist.gather(1, pick[..., None].expand(-1, -1, n))[:, 0]                    # (B, N)
    for _ in range(n_keep - 1):  # greedy steps; no host sync inside
        pick = nearest.masked_fill(kept, float("-inf")).argmax(dim=1, keepdim=True)
        kept = kept.scatter(1, pick, True)
        nearest = torch.minimum(nearest, dist.gather(1, pick[..., None].expand(-1, -1, n))[:, 0])
    return _mask_to_index(kept, n_keep)


# ---- VisionZip: dominant + contextual tokens -----------------------------------------------------------

def dominant_contextual(
    scores: torch.Tensor,
    n_keep: int,
    vision_keys: torch.Tensor,
    vision_features: torch.Tensor,
    dominant_share: float = 54 / 64,
) -> Merged:
    """VisionZip: keep the dominant tokens by [CLS] attention and merge the rest into contextual tokens.

    `round(dominant_share·n_keep)` dominant tokens are the top of `scores`; the remaining M tokens keep their
    order, and every ⌊M / n_ctx⌋-th of them (the first n_ctx) becomes a contextual target. Every other
    remaining token joins the target whose key is most cosine-similar to its own, and a contextual token is
    the mean of its group's `vision_features`. The default share, 54/64 ≈ 5.4 : 1, gives the paper's splits
    54 + 10 (64), 108 + 20 (128) and 162 + 30 (192). A contextual token takes the place and position of the
    first (lowest-index) token of its group, as pooling does; groups are disjoint, so indices stay unique.

    Reference: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
    CVPR 2025, arXiv 2412.04467, method section (dominant token selection by [CLS] attention; contextual
    token merging by key similarity).
    Differs from the official code: the official code also keeps the [CLS] token among the dominant tokens,
    and adds a target's features to the mean of the tokens assigned to it; tpx keeps patch tokens only (the
    LLaVA projector never sees [CLS]) and averages the whole group, target included.

    Args:
        scores: `(B, N)` [CLS] attention at the vision feature layer (`scores.cls_attention`).
        n_keep: tokens kept per row (dominant + contextual).
        vision_keys: `(B, N, Dv)` keys of the patches at that layer, heads concatenated, or `(B, H, N, dh)`
            head by head (then averaged over heads before the cosine).
        vision_features: `(B, N, Dv)` pre-projector patch features; the engine projects the result.
        dominant_share: share of `n_keep` taken by dominant tokens, in [0, 1].

    Returns:
        `Merged(index (B, n_keep), features (B, n_keep, Dv))` in vision-feature space.
    """
    share = _check_unit("dominant_share", dominant_share)
    b, n = scores.shape
    _check_n_keep(n_keep, n)
    n_dom = math.floor(share * n_keep + 0.5)
    n_ctx = n_keep - n_dom
    dom = scores.topk(n_dom, dim=1).indices                                               # (B, n_dom)
    feats = vision_features
    if n_ctx == 0:
        index = dom.sort(dim=1).values
        return Merged(index=index, features=_take(feats, index))
    keys = vision_keys.float().mean(dim=1) if vision_keys.ndim == 4 else vision_keys.float()
    keys = torch.nn.functional.normalize(keys, dim=-1)
    is_dom = torch.zeros(b, n, dtype=torch.bool, device=scores.device).scatter(1, dom, True)
    m = n - n_dom
    rest = _mask_to_index(~is_dom, m)                                                     # (B, M) in order
    step = max(1, m // n_ctx)
    target_pos = torch.arange(0, m, step, device=scores.device)[:n_ctx]
    is_target = torch.zeros(m, dtype=torch.bool, device=scores.device).scatter(0, target_pos, True)
    target = rest[:, target_pos]                                                          # (B, n_ctx)
    sim = torch.bmm(_take(keys, rest), _take(keys, target).transpose(1, 2))               # (B, M, n_ctx)
    group = torch.where(is_target, is_target.long().cumsum(0) - 1, sim.argmax(dim=2))    # (B, M) target id
    onehot = torch.nn.functional.one_hot(group, n_ctx).to(feats.dtype)                   # (B, M, n_ctx)
    merged = torch.bmm(onehot.transpose(1, 2), _take(feats, rest)) / onehot.sum(dim=1)[..., None]
    first = torch.full((b, n_ctx), n, device=scores.device).scatter_reduce(1, group, rest, "amin")
    return _sorted_merge(torch.cat([dom, first], dim=1), torch.cat([_take(feats, dom), merged], dim=1))


# ---- SparseVLM: top-k with optional recycling ----------------------------------------------------------

def topk_recycle(scores: torch.Tensor, n_keep: int, features: torch.Tensor, recycle: bool = False) -> torch.Tensor | Merged:
    """SparseVLM's selection: top-k by rater attention, optionally recycling dropped tokens by clustering.

    With `recycle=True` the budget holds k selected tokens plus c recycled ones (k + c = n_keep): of the
    N − k dropped tokens the ⌊0.3·(N − k)⌋ + 1 best-scored are clustered into c = ⌊that/10⌋ + 1 groups
    (density-peak clustering, DPC-kNN) and each group is averaged into one token, which takes the place and
    position of the group's first (lowest-index) token. k is the largest count that leaves room for the c its
    drops produce.

    Reference: Zhang et al., SparseVLM, ICML 2025, arXiv 2410.04417, method section (token recycling; the 30%
    and 1/10 factors are those of the official code).
    Differs from the official code: recycled tokens count inside the budget (the official code adds them on
    top) and get the position of their group's first token (the official code appends them after the kept
    visual tokens); density ties are broken by index instead of random noise.

    Args:
        scores: `(B, N)` visual scores (`scores.text_rater_attention`).
        n_keep: tokens kept per row, recycled ones included.
        features: `(B, N, D)` visual hidden states entering the pruned layer.
        recycle: recycle dropped tokens (off by default, as in the study's comparisons).

    Returns:
        `(B, n_keep)` sorted indices, or a `Merged` when `recycle` is on.
    """
    b, n = scores.shape
    _check_n_keep(n_keep, n)
    if not isinstance(recycle, bool):
        raise ValueError(f"recycle must be True or False, got {recycle!r}")
    if not recycle or n_keep == n:
        return topk(scores, n_keep)
    n_sel, n_rec, n_clu = _recycle_counts(n, n_keep)
    order = scores.sort(dim=1, descending=True, stable=True).indices
    sel, rec = order[:, :n_sel], order[:, n_sel : n_sel + n_rec]
    group = _dpc_knn(_take(features.float(), rec), n_clu)                                 # (B, n_rec)
    onehot = torch.nn.functional.one_hot(group, n_clu).to(features.dtype)
    merged = torch.bmm(onehot.transpose(1, 2), _take(features, rec)) / onehot.sum(dim=1)[..., None]
    first = torch.full((b, n_clu), n, device=scores.device).scatter_reduce(1, group, rec, "amin")
    return _sorted_merge(torch.cat([sel, first], dim=1), torch.cat([_take(features, sel), merged], dim=1))


def _recycle_counts(n: int, n_keep: int) -> tuple[int, int, int]:
    """(selected, recycled, clusters) with selected + clusters = n_keep, SparseVLM's 30% and 1/10 rules."""
    def clusters(k: int) -> int:
        return (math.floor(0.3 * (n - k)) + 1) // 10 + 1

    k = next((k for k in range(n_keep + 1) if k + clusters(k) >= n_keep), n_keep)
    n_clu = n_keep - k
    n_rec = min(n - k, max(n_clu, math.floor(0.3 * (n - k)) + 1))
    return k, n_rec, n_clu


def _dpc_knn(x: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Density-peak clustering with k-NN density (k = n_clusters, as SparseVLM does); `(B, M, D)` → `(B, M)` ids."""
    b, m, d = x.shape
    dist = torch.cdist(x, x) / math.sqrt(d)                                               # (B, M, M)
    knn = dist.topk(min(n_clusters, m), dim=2, largest=False).values
    density = (-(knn**2).mean(dim=2)).exp()                                               # (B, M)
    order = density.sort(dim=1, descending=True, stable=True).indices                     # ties: lower index first
    rank = torch.empty_like(order).scatter(1, order, torch.arange(m, device=x.device).expand(b, -1))
    denser = rank[:, None, :] < rank[:, :, None]                                          # [i, j]: j denser than i
    far = dist.amax(dim=(1, 2), keepdim=True).expand(-1, m, m)
    delta = torch.where(denser, dist, far).amin(dim=2)
    centers = (delta * density).topk(n_clusters, dim=1).indices                           # (B, C)
    group = dist.gather(1, centers[..., None].expand(-1, -1, m)).argmin(dim=1)            # (B, M)
    return group.scatter(1, centers, torch.arange(n_clusters, device=x.device).expand(b, -1))


# ---- helpers -------------------------------------------------------------------------------------------

def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, K) of `x` (B, N, D) → (B, K, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _mask_to_index(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending positions of the `count` True entries of each row of a `(B, N)` bool mask, without a host sync."""
    return mask.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :count]


def _sorted_merge(index: torch.Tensor, features: torch.Tensor) -> Merged:
    index, order = index.sort(dim=1)
    return Merged(index=index, features=_take(features, order))


def _text_pivots(text_keys: torch.Tensor, text_mask: torch.Tensor, n_text_pivots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n_text_pivots` real text tokens with the largest key L1 norm: `(B, Pt)` indices and validity."""
    n_tp = min(_check_count("n_text_pivots", n_text_pivots, 0, None), text_keys.shape[1])
    norm = text_keys.float().abs().sum(dim=-1).masked_fill(~text_mask.to(torch.bool), float("-inf"))
    piv = norm.topk(n_tp, dim=1).indices
    return piv, text_mask.to(torch.bool).gather(1, piv)


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: int, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f"≥ {low}"
        raise ValueError(f"{name} must be an int in {span}, got {value!r}")
    return value
