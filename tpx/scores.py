"""Scorers: per-visual-token scores, higher means more worth keeping.

A scorer is a pure, batched tensor function. Its argument names say which ingredient the engine must hand
it (see `tpx.engine.INGREDIENTS`): `attn_last` / `attn_last_visual` are `(B, H, N)` attention probabilities
from one query row to the N visual tokens at the scoring layer, `features` are the `(B, N, D)` visual
hidden states at the hook point, and `generator` is the run's seeded `torch.Generator`. Scorers return
`(B, N)` float scores on the input's device. This module imports only torch.

Papers covered:
    FastV: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv 2403.06764.
    FastV_VIS and random baselines: Wen et al., Findings of ACL 2025, arXiv 2502.11501 (Q1, Q3).
"""

from __future__ import annotations

import torch

__all__ = ["last_token_attention", "last_visual_attention", "random_scores"]


def last_token_attention(attn_last: torch.Tensor) -> torch.Tensor:
    """FastV importance: head-mean attention from the last prompt token to each visual token.

    The last token is the one that produces the answer, so its attention is read as "what the answer needs".
    The study shows this score is position-biased: under causal attention with RoPE, later visual tokens
    (the bottom of the image) receive more of it.

    Reference: Chen et al., ECCV 2024, arXiv 2403.06764, Sec. 4 (attention score at layer K−1).
    Differs from the official code: none here; the paper's text describes the average attention received
    from all tokens, while its code (and this scorer) uses the last token's row, as the study does.

    Args:
        attn_last: `(B, H, N)` attention probabilities of the last token over the visual tokens.

    Returns:
        `(B, N)` float32 scores.
    """
    return attn_last.float().mean(dim=1)


def last_visual_attention(attn_last_visual: torch.Tensor) -> torch.Tensor:
    """FastV_VIS: head-mean attention from the last *visual* token, so the score carries no text.

    Used by the study to ask whether language guidance matters: same machinery as FastV, query without text.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Sec. 5 (Q3, FastV_VIS).

    Args:
        attn_last_visual: `(B, H, N)` attention of the last visual token over the visual tokens.

    Returns:
        `(B, N)` float32 scores.
    """
    return attn_last_visual.float().mean(dim=1)


def random_scores(features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores; with top-k they give a uniformly random subset of the visual tokens.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Sec. 3 (Random baseline, Table 1).

    Args:
        features: `(B, N, D)` visual features; only their shape and device are used.
        generator: seeded generator on the features' device.

    Returns:
        `(B, N)` float32 scores in [0, 1).
    """
    b, n = features.shape[:2]
    return torch.rand(b, n, generator=generator, device=features.device)
