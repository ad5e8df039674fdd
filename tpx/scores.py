"""Scorers: per-visual-token scores, higher means more worth keeping.

A scorer is a pure, batched tensor function. Its arguments are ingredients named as in
`tpx.ingredients.INGREDIENTS`, and a method's registry entry declares which ones it takes (`Method.needs`):
`attn_last` / `attn_last_visual` are `(B, H, N)` attention probabilities from one query row to the N visual
tokens at the scoring layer, `features` are the `(B, N, D)` visual hidden states at the hook point, and
`generator` is the run's seeded `torch.Generator`. Scorers return `(B, N)` float scores on the input's device.
This module imports only torch.

Papers covered:
    FastV: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv 2403.06764.
    FastV_VIS, random baselines, α uniqueness: Wen et al., Findings of ACL 2025, arXiv 2502.11501 (Q1, Q3, Q4).
    FasterVLM: Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning", 2024,
        arXiv 2412.01818.
    SparseVLM: Zhang et al., ICML 2025, arXiv 2410.04417.
    DART: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
        More", EMNLP 2025, arXiv 2502.11494.
    CDPruner: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning
        in MLLMs", NeurIPS 2025, arXiv 2506.10967.
    HiPrune: Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in
        Vision-Language Models", 2025, arXiv 2508.00553.
    VATP: Guo et al., "Attention Score is not All You Need for Token Importance Indicator in KV Cache
        Reduction: Value Also Matters", EMNLP 2024, arXiv 2406.12335.
"""

from __future__ import annotations

import torch

__all__ = [
    "cls_attention", "instruction_relevance", "key_norm", "last_token_attention", "last_token_uniqueness",
    "last_visual_attention", "minmax", "random_scores", "received_attention", "text_rater_attention",
    "value_aware_attention",
]


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


def cls_attention(cls_attn: torch.Tensor) -> torch.Tensor:
    """FasterVLM / VisionZip importance: head-mean attention of the vision tower's [CLS] token to each patch.

    The [CLS] token summarises the image for CLIP's contrastive objective, so the patches it attends to carry
    the image's salient content, without any text.

    Reference: Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning"
    (FasterVLM), arXiv 2412.01818, 2024, method section ([CLS] attention at the vision feature layer, averaged
    over heads). VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467) sums over heads, which ranks the same
    tokens.

    Args:
        cls_attn: `(B, H, N)` attention probabilities of the [CLS] query over the N patch tokens.

    Returns:
        `(B, N)` float32 scores.
    """
    return cls_attn.float().mean(dim=1)


def text_rater_attention(attn_text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """SparseVLM importance: head-mean attention of the "rater" text tokens to each visual token.

    Not every instruction token says where to look; SparseVLM lets only the text tokens most related to the
    image rate the visual tokens. Relevance of text token t is its head-mean attention to the visual tokens,
    averaged over the N visual tokens; raters are the valid text tokens whose relevance exceeds the mean
    relevance of the row's valid text tokens (all valid tokens if none does). The score of a visual token is
    the head-mean attention it receives, averaged over the raters. Rows without any text token score zero.

    Reference: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
    Inference", ICML 2025, arXiv 2410.04417, method section (text raters; rater-weighted
    visual scores). Equation numbers are not cited: tpx's authors could not check them against the PDF.
    Differs from the official code: the code picks raters once, from the LLM's input embeddings, as the
    softmax over text tokens of visual·text dot products averaged over visual tokens; tpx reads relevance
    from the attention rows of layer K−1 (softmax over keys) and picks raters again at every stage. The code
    also scores with the pruning layer's own attention and prunes that layer's output (its layers 2, 6, 15);
    tpx's registry puts the cut before K = 3, 7, 16 and scores with layers K − 1 = 2, 6, 15, the same layers.

    Args:
        attn_text: `(B, H, T, N)` attention of the T text tokens after the image over the visual tokens.
        text_mask: `(B, T)` bool, True for real text tokens (rows are padded to the batch's longest).

    Returns:
        `(B, N)` float32 scores.
    """
    att = attn_text.float().mean(dim=1)                                        # (B, T, N)
    valid = text_mask.to(torch.bool)
    relevance = att.mean(dim=2)                                                # (B, T)
    n_valid = valid.sum(dim=1, keepdim=True)
    mean = (relevance * valid).sum(dim=1, keepdim=True) / n_valid.clamp(min=1)
    raters = valid & (relevance > mean)
    raters = torch.where(raters.any(dim=1, keepdim=True), raters, valid)
    weight = raters.float() / raters.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.einsum("bt,btn->bn", weight, att)


def key_norm(visual_keys: torch.Tensor) -> torch.Tensor:
    """DART pivot score: L1 norm of each visual token's key vector (heads concatenated).

    Tokens with large keys dominate attention logits; DART uses them as pivots whose near-duplicates are
    dropped. The norm is an importance-free, attention-free score (it needs no query row).

    Reference: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
    Matters More" (DART), EMNLP 2025, arXiv 2502.11494, method section (pivot selection by the K-norm of keys).

    Args:
        visual_keys: `(B, N, Dk)` post-RoPE keys of the visual tokens at layer K−1.

    Returns:
        `(B, N)` float32 scores.
    """
    return visual_keys.float().abs().sum(dim=-1)


def value_aware_attention(attn_last: torch.Tensor, visual_values: torch.Tensor) -> torch.Tensor:
    """Value-aware importance: FastV's attention score times the L1 norm of the token's value vector.

    A token that receives attention but carries a near-zero value vector adds little to the attention output;
    weighting the attention score by the value's L1 norm ranks tokens by what they contribute, not only by
    how much they are looked at. (tpx's worked example of a method that needs an ingredient no registered
    method used: docs/architecture.md.)

    Reference: Guo et al., "Attention Score is not All You Need for Token Importance Indicator in KV Cache
    Reduction: Value Also Matters" (VATP), EMNLP 2024, arXiv 2406.12335, method section (importance = attention
    score × ‖v‖₁).
    Differs from the official code: VATP prunes an LLM's KV cache, scoring per head with attention accumulated
    over the queries; here the score is FastV's row (the last prompt token, head mean, at layer K−1) over the
    visual tokens, times the L1 norm of the value vector with its heads concatenated.

    Args:
        attn_last: `(B, H, N)` attention probabilities of the last token over the visual tokens, layer K−1.
        visual_values: `(B, N, Dv)` value vectors of the visual tokens at layer K−1.

    Returns:
        `(B, N)` float32 scores.
    """
    return attn_last.float().mean(dim=1) * visual_values.float().abs().sum(dim=-1)


def minmax(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each row to [0, 1] (over the entries where `mask` is True); constant rows give 0.

    Args:
        x: `(B, N)` scores.
        mask: optional `(B, N)` bool, the entries the minimum and maximum are taken over.

    Returns:
        `(B, N)` float32, in [0, 1] on the masked entries.
    """
    x = x.float()
    if mask is None:
        lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    else:
        lo = x.masked_fill(~mask, float("inf")).amin(dim=1, keepdim=True)
        hi = x.masked_fill(~mask, float("-inf")).amax(dim=1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(x))


def last_token_uniqueness(features: torch.Tensor, last_feature: torch.Tensor) -> torch.Tensor:
    """Uniqueness, "last" reading of the study's Eq. 6: 1 − cosine similarity to the last prompt token.

    Tokens that already resemble what the last token holds add little that it lacks. The score is static:
    exact duplicates get equal scores and are kept or dropped together.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q4, Eq. 6 ("pattern
    uniqueness", instantiated as 1 − cosine similarity).

    Args:
        features: `(B, N, D)` visual hidden states entering the pruned layer.
        last_feature: `(B, D)` hidden state of the last prompt token entering the pruned layer.

    Returns:
        `(B, N)` float32 scores in [0, 2].
    """
    cos = torch.nn.functional.cosine_similarity(features.float(), last_feature.float()[:, None, :], dim=-1)
    return 1.0 - cos


def instruction_relevance(features: torch.Tensor, text_features: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """CDPruner relevance: how each visual token relates to the instruction, normalised to (0, 1].

    The relevance r weights the DPP kernel diag(r)·S·diag(r) (`select_diverse.conditional_dpp`). As in the
    official code, r is the *negated* cosine similarity averaged over the instruction's T tokens, then
    min-max normalised over the row as (r − min + 1e-6) / (max − min); a row whose relevance is constant, or
    that has no text token, gets r = 1 (the unconditional DPP).

    Reference: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
    Pruning in MLLMs" (CDPruner), NeurIPS 2025, arXiv 2506.10967, method section (instruction relevance,
    conditional similarity).
    Differs from the official code: the official relevance compares CLIP's projected patch embeddings with the
    CLIP *text tower*'s embedding of the question (in 77-token segments); llava-hf checkpoints ship no text
    tower, so tpx compares the projected visual tokens with the LLM's input embeddings of the text after the
    image (the question and the chat template's tail), which every family has. The sign and normalisation
    are the official code's; its min and max run over the whole batch of crops, tpx's over each row.

    Args:
        features: `(B, N, D)` visual tokens (hook E: the projected embeddings entering the LLM).
        text_features: `(B, T, D)` the text tokens in the same space (hook E: their input embeddings).
        text_mask: `(B, T)` bool, real text tokens.

    Returns:
        `(B, N)` float32 relevance in (0, 1].
    """
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    t = torch.nn.functional.normalize(text_features.float(), dim=-1)
    valid = text_mask.to(torch.bool)
    cos = torch.bmm(x, t.transpose(1, 2)) * valid[:, None, :]                  # (B, N, T)
    rel = -cos.sum(dim=2) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    lo, hi = rel.amin(dim=1, keepdim=True), rel.amax(dim=1, keepdim=True)
    span = hi - lo
    scaled = (rel - lo + 1e-6) / span.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where((span > 0) & valid.any(dim=1, keepdim=True), scaled, torch.ones_like(rel))


def received_attention(vision_received: torch.Tensor) -> torch.Tensor:
    """HiPrune register score: head-mean attention each patch receives at the vision feature layer.

    Unlike the [CLS] row (`cls_attention`), the attention is averaged over every query row of the tower's
    layer; HiPrune reads it at the deep (feature) layer, where high-attention tokens spread over the image
    and carry global context.

    Reference: Liu et al., "HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in
    Vision-Language Models", arXiv 2508.00553, 2025, method section (register tokens); the official code
    averages the attention map over heads and queries at the feature layer (`mm_vision_select_layer`).

    Args:
        vision_received: `(B, H, N)` attention received per head, mean over query rows.

    Returns:
        `(B, N)` float32 scores.
    """
    return vision_received.float().mean(dim=1)
