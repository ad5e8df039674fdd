"""Selectors that keep tokens both important and diverse: a conditional DPP, important + deduplicated tokens,
anchors + buffers + registers, maximal marginal relevance.

Each one balances a per-token score (relevance, [CLS] attention, received attention) against what the kept set
already covers. Pure, batched tensor functions like `tpx.select` (whose budget and checks they use): greedy
algorithms loop over their sequential steps, never over tokens, without host syncs.

Papers covered:
    CDPruner: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
        in MLLMs", NeurIPS 2025, arXiv 2506.10967 (fast greedy MAP of Chen et al., NeurIPS 2018, arXiv
        1709.05135).
    VisPruner: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
        VLMs", ICCV 2025, arXiv 2412.01818 (v2; v1 is FasterVLM).
    HiPrune: Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in
        Vision-Language Models", 2025, arXiv 2508.00553.
    IDPruner: "IDPruner: Harmonizing Importance and Diversity in Visual Token Pruning for MLLMs", 2026,
        arXiv 2602.13315.
"""

from __future__ import annotations

import torch

from tpx.select import check_grid, check_n_keep, check_unit, mask_to_index, take

__all__ = ["anchor_buffer_register", "conditional_dpp", "important_diverse", "marginal_relevance"]

_DEGENERATE = 1e-10  # a marginal gain this small means the token adds no new direction to the kept set


# ---- CDPruner: conditional DPP, greedy MAP -------------------------------------------------------------

def conditional_dpp(scores: torch.Tensor, n_keep: int, features: torch.Tensor) -> torch.Tensor:
    """CDPruner: the greedy MAP subset of a DPP whose kernel is L = diag(r) · S · diag(r).

    S is the cosine similarity of the visual tokens and r their relevance to the instruction
    (`scores.instruction_relevance`), so det(L_Y) = Π r_i² · det(S_Y) rewards sets that are relevant and
    spread out. Greedy MAP adds, at each step, the token with the largest marginal gain d_i² = L_ii − ‖c_i‖²,
    where the c_i are the rows of the incremental Cholesky factor of L restricted to the kept set (Chen et al.'s
    fast algorithm, the official code's): e = (L_j − Σ_t c_t[j] c_t) / d_j, then d² ← d² − e².

    Reference: Zhang et al., CDPruner, NeurIPS 2025, arXiv 2506.10967, method section (conditional
    similarity, DPP, fast greedy MAP inference).
    Differs from the official code: a kept token is masked out, so none is picked twice, and a token whose gain
    has fallen to ~0 (the kept set already spans it) adds no Cholesky row; the official code divides by the
    square root of that gain, which turns NaN or repeats picks once the kernel's rank is exhausted.

    Args:
        scores: `(B, N)` relevance r > 0 (`scores.instruction_relevance`).
        n_keep: tokens kept per row.
        features: `(B, N, D)` visual tokens the similarity is taken on (hook E: the projected embeddings, as
            the official code does).

    Returns:
        `(B, n_keep)` sorted indices.
    """
    b, n, _ = features.shape
    check_n_keep(n_keep, n)
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    r = scores.float()
    kernel = r[:, :, None] * torch.bmm(x, x.transpose(1, 2)) * r[:, None, :]          # (B, N, N)
    gain = kernel.diagonal(dim1=1, dim2=2).clone()                                     # d_i²; kept: −inf
    chol = kernel.new_zeros(b, n_keep, n)                                              # c_t, one row per pick
    rows = torch.arange(b, device=x.device)
    for i in range(n_keep):  # greedy MAP: one token per step, no host sync
        j = gain.argmax(dim=1)                                                         # (B,)
        d2 = gain[rows, j]
        gain[rows, j] = float("-inf")
        # e = (L_j − Σ_t c_t[j] c_t) / d_j, or 0 when the kept set already spans token j
        e = torch.baddbmm(kernel[rows, j][:, None, :], chol[rows, :i, j][:, None, :], chol[:, :i], alpha=-1)[:, 0]
        e = e * torch.where(d2 > _DEGENERATE, d2.clamp(min=_DEGENERATE).rsqrt(), 0.0)[:, None]
        chol[:, i] = e
        gain.addcmul_(e, e, value=-1)
    return mask_to_index(gain == float("-inf"), n_keep)


# ---- VisPruner: important tokens + deduplicated diverse tokens ----------------------------------------

def important_diverse(scores: torch.Tensor, n_keep: int, vision_features: torch.Tensor,
                      important_share: float = 0.5) -> torch.Tensor:
    """VisPruner: the most important tokens by [CLS] attention, then diverse ones from the rest.

    ⌊important_share · n_keep⌋ important tokens are the top of `scores`; the others (in decreasing score)
    are thinned by iterative matching until n_keep − that many remain: split the remaining list into
    alternate halves a (even places) and b (odd places), find for each a-token its highest cosine similarity
    to any b-token, and drop the (at most 8) a-tokens most similar to b; the survivors of a (most similar
    first) are followed by b for the next round. The official ratio is 0.5 (`--important_ratio` default;
    64 + 64 at 128 tokens).

    Reference: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
    in VLMs" (VisPruner), ICCV 2025, arXiv 2412.01818, method section (important tokens by visual attention,
    diverse tokens by similarity-based duplicate removal, 8 per round).
    Differs from the official code: sorts are stable (ties keep the lower index first); an odd-length list is
    split with the extra token in a (the official indexing fails on odd lengths, which its budgets avoid).

    Args:
        scores: `(B, N)` [CLS] attention at the vision feature layer (`scores.cls_attention`).
        n_keep: tokens kept per row.
        vision_features: `(B, N, Dv)` pre-projector features of the vision feature layer.
        important_share: share of `n_keep` taken by important tokens, in [0, 1].

    Returns:
        `(B, n_keep)` sorted indices.
    """
    share = check_unit("important_share", important_share)
    check_n_keep(n_keep, scores.shape[1])
    n_imp = int(n_keep * share)                                                        # the official truncation
    n_div = n_keep - n_imp
    order = scores.sort(dim=1, descending=True, stable=True).indices
    important, rest = order[:, :n_imp], order[:, n_imp:]
    x = torch.nn.functional.normalize(vision_features.float(), dim=-1)
    while n_div and rest.shape[1] - n_div > 0:  # rounds of matching; the lengths are known without a sync
        drop = min(8, rest.shape[1] - n_div)
        a, b = rest[:, ::2], rest[:, 1::2]
        best = torch.bmm(take(x, a), take(x, b).transpose(1, 2)).amax(dim=2)            # (B, ⌈R/2⌉)
        survivors = best.sort(dim=1, descending=True, stable=True).indices[:, drop:]
        rest = torch.cat([rest[:, ::2].gather(1, survivors), rest[:, 1::2]], dim=1)
    kept = torch.cat([important, rest], dim=1) if n_div else important
    return kept.sort(dim=1).values


# ---- HiPrune: anchors, buffers, registers -------------------------------------------------------------

def anchor_buffer_register(scores: torch.Tensor, n_keep: int, vision_received_object: torch.Tensor,
                           grid: tuple[int, int], anchor_share: float = 0.1) -> torch.Tensor:
    """HiPrune: anchor tokens from a middle layer, their neighbours, and register tokens from the deep layer.

    round(anchor_share · n_keep / 5) anchors are the patches receiving the most attention at the vision
    tower's object layer (head mean of `vision_received_object`); each brings its buffer, the tokens at flat
    index ±1 and ±cols, clamped to [0, N − 1] (so, as in the official code, ±1 wraps across row ends and the
    image's first / last token absorbs what falls off). The rest of the budget goes to registers: the
    remaining tokens with the highest `scores` (received attention at the feature layer). The official
    α = 0.1 gives 1, 3, 4 anchors at 64, 128, 192 tokens; `round` is Python's (halves to even).

    Reference: Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in
    Vision-Language Models", arXiv 2508.00553, 2025, method section (anchor, buffer and register tokens;
    α = 0.1, object layer 9 of CLIP-L's 24; global attention averaged over heads and queries).
    Differs from the official code: none in the rule; the grid width comes from the layout instead of a
    fixed 24, and LLaVA-NeXT selects per layout segment (base view, unpadded canvas) instead of per 24×24
    crop.

    Args:
        scores: `(B, N)` received attention at the feature layer (`scores.received_attention`).
        n_keep: tokens kept per row.
        vision_received_object: `(B, H, N)` attention received at the object layer, per head.
        grid: `(rows, cols)` of the image segment.
        anchor_share: α, the budget share of anchors and their buffers, in [0, 1].

    Returns:
        `(B, n_keep)` sorted indices.

    Raises:
        ValueError: when the anchors and their buffers may not fit the budget (5 · anchors > n_keep).
    """
    share = check_unit("anchor_share", anchor_share)
    b, n = scores.shape
    _, cols = check_grid(grid, n)
    check_n_keep(n_keep, n)
    n_anchor = round(n_keep * share / 5)
    if 5 * n_anchor > n_keep:
        raise ValueError(f"anchor_share={share} gives {n_anchor} anchors whose buffers (5 tokens each) may exceed "
                         f"n_keep={n_keep}; use a smaller anchor_share or a larger budget")
    anchors = vision_received_object.float().mean(dim=1).topk(n_anchor, dim=1).indices           # (B, A)
    near = torch.cat([anchors, anchors - 1, anchors + 1, anchors - cols, anchors + cols], dim=1).clamp(0, n - 1)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=scores.device).scatter(1, near, True)
    n_register = n_keep - chosen.sum(dim=1, keepdim=True)                                       # per row
    order = scores.float().masked_fill(chosen, float("-inf")).sort(dim=1, descending=True, stable=True).indices
    take_it = torch.arange(n, device=scores.device) < n_register                                # first n_register
    kept = chosen | torch.zeros_like(chosen).scatter(1, order, take_it)
    return mask_to_index(kept, n_keep)


# ---- IDPruner: maximal marginal relevance ---------------------------------------------------------------

def marginal_relevance(scores: torch.Tensor, n_keep: int, vision_features: torch.Tensor,
                       importance_weight: float = 0.5) -> torch.Tensor:
    """IDPruner: maximal marginal relevance of importance and redundancy with the kept set.

    Importance is min-max normalised over the row, (s − min) / (max − min + 1e-6); the first token kept is the
    most important, then each step keeps argmax λ·importance − (1 − λ)·max_{j kept} cos(i, j), one token per
    step (the official `parallel_k = 1`), λ = `importance_weight` (official 0.5).

    Reference: "IDPruner: Harmonizing Importance and Diversity in Visual Token Pruning for MLLMs",
    arXiv 2602.13315, 2026, method section (MMR re-ranking of importance and similarity).
    Differs from the official code: the official importance comes from a trained scorer (VisionSelector
    weights shipped per checkpoint) and the similarity from the projected embeddings; tpx, with no trained
    scorer for a model, takes the vision tower's [CLS] attention (`scores.cls_attention`) and the cosine of
    the pre-projector features at the vision feature layer (hook V).

    Args:
        scores: `(B, N)` importance.
        n_keep: tokens kept per row.
        vision_features: `(B, N, Dv)` features the similarity is taken on.
        importance_weight: λ in [0, 1]; 1 is top-k of importance, 0 pure diversity after the first token.

    Returns:
        `(B, n_keep)` sorted indices.
    """
    lam = check_unit("importance_weight", importance_weight)
    b, n = scores.shape
    check_n_keep(n_keep, n)
    s = scores.float()
    lo, hi = s.amin(dim=1, keepdim=True), s.amax(dim=1, keepdim=True)
    importance = (s - lo) / (hi - lo + 1e-6)
    x = torch.nn.functional.normalize(vision_features.float(), dim=-1)
    # mmr[j, i] = λ·importance_i − (1 − λ)·cos(i, j); the score of i is its minimum over the kept j, which equals
    # λ·importance_i − (1 − λ)·max_j cos(i, j) exactly (rounding is monotone), in four ops per step
    mmr = lam * importance[:, None, :] - (1 - lam) * torch.bmm(x, x.transpose(1, 2))    # (B, N, N)
    rows = torch.arange(b, device=s.device)
    pick = importance.argmax(dim=1)
    score = mmr[rows, pick].clone()
    score[rows, pick] = float("-inf")
    for _ in range(n_keep - 1):  # greedy steps; kept tokens hold −inf; no host sync inside
        pick = score.argmax(dim=1)
        torch.minimum(score, mmr[rows, pick], out=score)
        score[rows, pick] = float("-inf")
    return mask_to_index(score == float("-inf"), n_keep)
