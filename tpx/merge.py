"""Merging selectors: dropped tokens are not lost but folded into a few merged ones.

A merging selector returns `select.Merged(index, features)`: each merged token takes the place and
position id of its group's first (lowest-index) token. 2-D pooling, the simplest one, lives in `tpx.select`.

Papers covered:
    VisionZip dominant + contextual tokens: Yang et al., CVPR 2025, arXiv 2412.04467.
    SparseVLM rater top-k with recycling: Zhang et al., ICML 2025, arXiv 2410.04417.
"""

from __future__ import annotations

import math

import torch

from tpx.select import Merged, check_flag, check_n_keep, check_unit, mask_to_index, round_count, sorted_merge, take, topk

__all__ = ["dominant_contextual", "topk_recycle"]


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
    share = check_unit("dominant_share", dominant_share)
    b, n = scores.shape
    check_n_keep(n_keep, n)
    n_dom = round_count(share * n_keep)
    n_ctx = n_keep - n_dom
    dom = scores.topk(n_dom, dim=1).indices                                               # (B, n_dom)
    feats = vision_features
    if n_ctx == 0:
        index = dom.sort(dim=1).values
        return Merged(index=index, features=take(feats, index))
    keys = vision_keys.float().mean(dim=1) if vision_keys.ndim == 4 else vision_keys.float()
    keys = torch.nn.functional.normalize(keys, dim=-1)
    is_dom = torch.zeros(b, n, dtype=torch.bool, device=scores.device).scatter(1, dom, True)
    m = n - n_dom
    rest = mask_to_index(~is_dom, m)                                                     # (B, M) in order
    step = max(1, m // n_ctx)
    target_pos = torch.arange(0, m, step, device=scores.device)[:n_ctx]
    is_target = torch.zeros(m, dtype=torch.bool, device=scores.device).scatter(0, target_pos, True)
    target = rest[:, target_pos]                                                          # (B, n_ctx)
    sim = torch.bmm(take(keys, rest), take(keys, target).transpose(1, 2))               # (B, M, n_ctx)
    group = torch.where(is_target, is_target.long().cumsum(0) - 1, sim.argmax(dim=2))    # (B, M) target id
    onehot = torch.nn.functional.one_hot(group, n_ctx).to(feats.dtype)                   # (B, M, n_ctx)
    merged = torch.bmm(onehot.transpose(1, 2), take(feats, rest)) / onehot.sum(dim=1)[..., None]
    first = torch.full((b, n_ctx), n, device=scores.device).scatter_reduce(1, group, rest, "amin")
    return sorted_merge(torch.cat([dom, first], dim=1), torch.cat([take(feats, dom), merged], dim=1))


# ---- SparseVLM: top-k with optional recycling ----------------------------------------------------------

def topk_recycle(scores: torch.Tensor, n_keep: int, features: torch.Tensor | None = None,
                 recycle: bool = False) -> torch.Tensor | Merged:
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
        features: `(B, N, D)` visual hidden states entering the pruned layer (needed with `recycle` only).
        recycle: recycle dropped tokens (off by default, as in the study's comparisons).

    Returns:
        `(B, n_keep)` sorted indices, or a `Merged` when `recycle` is on.
    """
    b, n = scores.shape
    check_n_keep(n_keep, n)
    check_flag("recycle", recycle)
    if not recycle or n_keep == n:
        return topk(scores, n_keep)
    if features is None:
        raise ValueError("recycle=True needs features")
    n_sel, n_rec, n_clu = _recycle_counts(n, n_keep)
    order = scores.sort(dim=1, descending=True, stable=True).indices
    sel, rec = order[:, :n_sel], order[:, n_sel : n_sel + n_rec]
    group = _dpc_knn(take(features.float(), rec), n_clu)                                 # (B, n_rec)
    onehot = torch.nn.functional.one_hot(group, n_clu).to(features.dtype)
    merged = torch.bmm(onehot.transpose(1, 2), take(features, rec)) / onehot.sum(dim=1)[..., None]
    first = torch.full((b, n_clu), n, device=scores.device).scatter_reduce(1, group, rec, "amin")
    return sorted_merge(torch.cat([sel, first], dim=1), torch.cat([take(features, sel), merged], dim=1))


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
