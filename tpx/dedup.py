"""Duplication-aware selectors: keep tokens that add something the kept set lacks.

Attention scores are computed once, per token, so near-duplicates score alike and are kept or dropped
together; these selectors instead measure what a token duplicates (pivots, the kept set) and choose
greedily where the algorithm is sequential (one step per kept token, no host syncs).

Papers covered:
    The α mix of importance and uniqueness: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q4, Eq. 6.
    DART pivot duplication: Wen et al., EMNLP 2025, arXiv 2502.11494.
    DivPrune max–min diversity: Alvar et al., CVPR 2025, arXiv 2503.02175.
"""

from __future__ import annotations

import torch

from tpx import scores as _scores
from tpx.select import check_choice, check_count, check_flag, check_n_keep, check_unit, mask_to_index, take, topk

__all__ = ["PIVOT_ORDERS", "PIVOTS", "UNIQUENESS", "alpha_mix", "max_min_diversity", "pivot_duplication",
           "python_set_order"]

PIVOTS = ("max", "min", "random")  # DART pivot rules: largest / smallest key L1 norm, or a uniform draw
PIVOT_ORDERS = ("rank", "python_set")  # DART visiting order: tpx's (visual, then text, by rank) or the official
UNIQUENESS = ("dup", "last")  # readings of the study's uniqueness term (see `alpha_mix`)


# ---- importance × uniqueness (the study's α) -----------------------------------------------------------

def alpha_mix(
    scores: torch.Tensor,
    n_keep: int,
    features: torch.Tensor | None = None,
    last_feature: torch.Tensor | None = None,
    normed_features: torch.Tensor | None = None,
    normed_text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    visual_keys: torch.Tensor | None = None,
    text_keys: torch.Tensor | None = None,
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
        features, last_feature: `(B, N, D)` and `(B, D)` hidden states entering the pruned layer (needed by
            "last" only).
        normed_features, normed_text: `(B, N, D)`, `(B, T, D)` after the final norm ("dup" only).
        text_mask: `(B, T)` bool, real text tokens. visual_keys, text_keys: `(B, N, Dk)`, `(B, T, Dk)` keys
            ("dup" only).
        alpha: importance weight in [0, 1].
        uniqueness: `"dup"` or `"last"`.
        n_visual_pivots, n_text_pivots: DART pivots for `"dup"`.

    Returns:
        `(B, n_keep)` sorted indices.

    Raises:
        ValueError: for a bad α, reading or count, or a tensor the reading needs left out.
    """
    alpha = check_unit("alpha", alpha)
    check_choice("uniqueness", uniqueness, UNIQUENESS)
    check_n_keep(n_keep, scores.shape[1])
    if alpha == 1.0:
        return topk(scores, n_keep)
    needed = {"last": ("features", "last_feature"),
              "dup": ("normed_features", "normed_text", "text_mask", "visual_keys", "text_keys")}[uniqueness]
    given = dict(features=features, last_feature=last_feature, normed_features=normed_features,
                 normed_text=normed_text, text_mask=text_mask, visual_keys=visual_keys, text_keys=text_keys)
    missing = [k for k in needed if given[k] is None]
    if missing:
        raise ValueError(f"uniqueness={uniqueness!r} needs {', '.join(missing)}")
    importance = _scores.minmax(scores)
    if uniqueness == "last":
        unique = _scores.minmax(_scores.last_token_uniqueness(features, last_feature))
        return topk(alpha * importance + (1 - alpha) * unique, n_keep)
    x = torch.nn.functional.normalize(normed_features.float(), dim=-1)
    b, n, _ = x.shape
    n_vp = check_count("n_visual_pivots", n_visual_pivots, 0, n)
    vis_piv = _scores.key_norm(visual_keys).topk(n_vp, dim=1).indices                      # (B, Pv)
    sim_vis = torch.bmm(x, take(x, vis_piv).transpose(1, 2))                             # (B, N, Pv)
    order = torch.arange(n_vp, device=x.device)
    rank = torch.full((b, n), n_vp, device=x.device).scatter(1, vis_piv, order.expand(b, -1))  # Pv: not a pivot
    earlier = order < rank[..., None]                                                     # pivot j ranks before token i
    best = torch.full((b, n), -1.0, device=x.device)                                     # (B, N) max similarity
    if n_vp:
        best = torch.maximum(best, sim_vis.masked_fill(~earlier, -1.0).amax(dim=2))
    text_piv, text_ok = _text_pivots(text_keys, text_mask, n_text_pivots)
    if text_piv.shape[1]:
        t = torch.nn.functional.normalize(normed_text.float(), dim=-1)
        sim_text = torch.bmm(x, take(t, text_piv).transpose(1, 2)).masked_fill(~text_ok[:, None, :], -1.0)
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
    return mask_to_index(kept, n_keep)


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
    pivot: str = "max",
    generator: torch.Generator | None = None,
    pivot_order: str = "rank",
    visual_positions: torch.Tensor | None = None,
    text_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """DART: keep the pivots, then for each pivot in turn the remaining tokens least similar to it.

    Pivots are the `n_visual_pivots` visual tokens with the highest `scores` (the L1 norm of their keys,
    `scores.key_norm`) and the `n_text_pivots` text tokens with the largest key L1 norm. Similarity is the
    cosine of hidden states after the final norm. Pivots are visited in order (visual by decreasing key
    norm, then text likewise); each takes its quota of the still-available visual tokens least similar to
    it, so no token is chosen twice.

    Pivot rule (`pivot`, for DART's pivot study): `"max"` (DART's rule, the default) takes the largest key
    norms as above, `"min"` the smallest, `"random"` a uniform draw from `generator`; the rule picks both
    the visual and the text pivots and their visiting order.

    Visiting order (`pivot_order`): `"rank"` (tpx's default) visits the visual pivots in rank order, then the
    text pivots; `"python_set"` visits them as the official code does, in the iteration order of a CPython
    `set` of their absolute sequence positions (`python_set_order`), which interleaves visual and text
    pivots by position hash. With `exact_budget=False` and `pivot_order="python_set"` the kept set is the
    official code's.

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
        pivot: `"max"`, `"min"` or `"random"` (see Pivot rule).
        generator: draws the pivots for `pivot="random"` (the engine passes the run's seeded generator).
        pivot_order: `"rank"` or `"python_set"` (see Visiting order).
        visual_positions, text_positions: `(B, N)`, `(B, T)` sequence positions from the row's first real token
            (`"python_set"` only).

    Returns:
        `(B, n_keep)` sorted indices, or `(B, Pv + P·⌊n_keep/P⌋)` with `exact_budget=False`.

    Raises:
        ValueError: for a bad count, budget, pivot rule or order, `pivot="random"` without a generator, or
            `"python_set"` without positions.
    """
    b, n = scores.shape
    check_n_keep(n_keep, n)
    check_flag("exact_budget", exact_budget)
    n_vp = check_count("n_visual_pivots", n_visual_pivots, 1, n)
    if exact_budget:
        n_vp = min(n_vp, n_keep)
    check_choice("pivot", pivot, PIVOTS)
    if pivot == "random" and generator is None:
        raise ValueError("pivot='random' needs a generator")
    check_choice("pivot_order", pivot_order, PIVOT_ORDERS)
    if pivot_order == "python_set" and (visual_positions is None or text_positions is None):
        raise ValueError("pivot_order='python_set' needs visual_positions and text_positions")
    vis_piv = _pivot_rank(scores, pivot, generator).topk(n_vp, dim=1).indices             # (B, Pv)
    text_piv, text_ok = _text_pivots(text_keys, text_mask, n_text_pivots, pivot, generator)  # (B, Pt)
    x = torch.nn.functional.normalize(normed_features.float(), dim=-1)
    t = torch.nn.functional.normalize(normed_text.float(), dim=-1)
    pivots = torch.cat([take(x, vis_piv), take(t, text_piv)], dim=1)                    # (B, P, D)
    ok = torch.cat([torch.ones_like(vis_piv, dtype=torch.bool), text_ok], dim=1)          # (B, P)
    n_piv = ok.shape[1]
    if pivot_order == "python_set":
        where = torch.cat([visual_positions.gather(1, vis_piv), text_positions.gather(1, text_piv)], dim=1)
        visit = python_set_order(where, ok)                                               # (B, P) pivot slots
        pivots, ok = take(pivots, visit), ok.gather(1, visit)
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
        within = torch.arange(k, device=x.device) < quota[:, j : j + 1]
        kept = kept | torch.zeros_like(kept).scatter(1, cand, within)
    return mask_to_index(kept, n_out)


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
    check_n_keep(n_keep, n)
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
    return mask_to_index(kept, n_keep)


def python_set_order(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The order in which the official DART code visits its pivots: `list(set(positions).copy())` in CPython.

    The official code collects the absolute positions of its pivots (visual, then text, each by decreasing key
    norm) in a Python `set` and iterates over a copy of it; CPython lays small ints out by their value modulo
    the table size, so the order follows the positions, not the norms. The order is a property of CPython's
    set, so it is taken from CPython itself, on the host (one sync for the B·P pivot positions).

    Args:
        positions: `(B, P)` distinct absolute positions of the pivots, in the order they are added to the set.
        valid: `(B, P)` bool, pivots that exist (a short instruction has fewer text pivots); invalid ones come last.

    Returns:
        `(B, P)` int64 pivot slots in visiting order.
    """
    orders = []
    for row, ok in zip(positions.tolist(), valid.tolist(), strict=True):
        added = [p for p, v in zip(row, ok, strict=True) if v]   # built from a list, as the official set is
        slot = {p: j for j, (p, v) in enumerate(zip(row, ok, strict=True)) if v}
        seen = [slot[p] for p in list(set(added).copy())]
        orders.append(seen + [j for j, v in enumerate(ok) if not v])
    return torch.tensor(orders, dtype=torch.long, device=positions.device)


def _pivot_rank(norm: torch.Tensor, pivot: str, generator: torch.Generator | None) -> torch.Tensor:
    """`(B, N)` ranking whose top entries are the pivots under rule `pivot` (`"max"` returns `norm` itself)."""
    if pivot == "min":
        return -norm
    if pivot == "random":
        return torch.rand(norm.shape, generator=generator, device=norm.device)
    return norm


def _text_pivots(text_keys: torch.Tensor, text_mask: torch.Tensor, n_text_pivots: int, pivot: str = "max",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n_text_pivots` real text tokens ranked first by `pivot` (default: largest key L1 norm): `(B, Pt)`
    indices and validity."""
    n_tp = min(check_count("n_text_pivots", n_text_pivots, 0, None), text_keys.shape[1])
    rank = _pivot_rank(text_keys.float().abs().sum(dim=-1), pivot, generator)
    norm = rank.masked_fill(~text_mask.to(torch.bool), float("-inf"))
    piv = norm.topk(n_tp, dim=1).indices
    return piv, text_mask.to(torch.bool).gather(1, piv)
