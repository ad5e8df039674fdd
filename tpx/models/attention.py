"""Attention rows recomputed for a few query positions, so the model itself keeps SDPA / FlashAttention.

Scoring methods (FastV and kin) read one or a few rows of a decoder layer's attention map. Asking the model
for `output_attentions` forces the eager kernel on every layer and materialises every map; recomputing
`softmax(q_rows · Kᵀ · scale + mask)` from the layer's own norm, projections and rotary embedding costs one
thin matrix product and gives the same probabilities as eager attention. Works for Llama-family decoder
layers (Llama, Mistral, Qwen2 text models): `input_layernorm`, `self_attn.{q,k,v}_proj`, `head_dim`,
`num_key_value_groups`, `scaling`; and for those that normalise each head's query and key before the rotary
embedding (Qwen3 text models: `self_attn.q_norm`, `self_attn.k_norm`).
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

__all__ = ["attention_keys", "attention_rows", "attention_values", "cls_attention", "received_attention"]


def attention_rows(
    layer: torch.nn.Module,
    hidden_in: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    mask2d: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities of the query positions `rows` over all keys of one decoder layer (prefill).

    Args:
        layer: a Llama-family decoder layer.
        hidden_in: `(B, T, D)` hidden states entering that layer.
        position_embeddings: the layer's rotary `(cos, sin)`, each `(B or 1, T, head_dim)`.
        rows: `(B, R)` int64 query positions per batch row.
        mask2d: optional `(B, T)` padding mask (1 = real token, 0 = padding).
        keys: optional `(B, H_kv, T, head_dim)` post-RoPE keys the layer already computed (its KV cache);
            then only the query rows are projected.

    Returns:
        `(B, H, R, T)` float32 probabilities; key j is visible to query i iff j ≤ i and j is not padding,
        as in the model's causal mask.
    """
    attn = layer.self_attn
    b, t, _ = hidden_in.shape
    r = rows.shape[1]
    hd = attn.head_dim
    cos, sin = (e.expand(b, -1, -1) for e in position_embeddings)
    x = layer.input_layernorm(hidden_in if keys is None else hidden_in.gather(1, rows[..., None].expand(-1, -1, hidden_in.shape[-1])))
    x_rows = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1])) if keys is None else x
    q = _heads(attn, "q", x_rows, hd)
    gidx = rows[..., None].expand(-1, -1, cos.shape[-1])
    q, _ = apply_rotary_pos_emb(q, q, cos.gather(1, gidx), sin.gather(1, gidx))
    if keys is None:
        k = _heads(attn, "k", x, hd)
        _, keys = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(keys, attn.num_key_value_groups)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scaling  # (B, H, R, T)
    allowed = torch.arange(t, device=hidden_in.device)[None, None, :] <= rows[..., None]   # (B, R, T) causal
    if mask2d is not None:
        allowed = allowed & mask2d[:, None, :t].bool()
    return logits.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)


def attention_keys(
    layer: torch.nn.Module, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Post-RoPE key vectors of every position at one Llama-family decoder layer, heads concatenated.

    Returns:
        `(B, T, H_kv · head_dim)` keys, as the layer would cache them.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden_in)
    b, t, _ = x.shape
    k = _heads(attn, "k", x, attn.head_dim)
    cos, sin = (e.expand(b, -1, -1) for e in position_embeddings)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k.transpose(1, 2).reshape(b, t, -1)


def _heads(attn: torch.nn.Module, kind: str, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`(B, H, T, head_dim)` queries (`kind="q"`) or keys (`"k"`) before rotary, through the layer's per-head norm
    (`q_norm` / `k_norm`) when it has one, as the layer itself computes them."""
    heads = getattr(attn, f"{kind}_proj")(x).view(*x.shape[:2], -1, head_dim)
    norm = getattr(attn, f"{kind}_norm", None)
    return (heads if norm is None else norm(heads)).transpose(1, 2)


def attention_values(layer: torch.nn.Module, hidden_in: torch.Tensor) -> torch.Tensor:
    """Value vectors of every position at one Llama-family decoder layer, heads concatenated.

    Returns:
        `(B, T, H_kv · head_dim)` values, as the layer would cache them.
    """
    return layer.self_attn.v_proj(layer.input_layernorm(hidden_in))


def cls_attention(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] row of a CLIP-style vision encoder layer's attention, and the patch keys.

    Args:
        layer: a CLIP encoder layer (`layer_norm1`, `self_attn.{q,k}_proj`, `head_dim`, `scale`).
        hidden_in: `(B, 1 + N, Dv)` hidden states entering the layer, [CLS] first.

    Returns:
        `(B, H, N)` attention of [CLS] over the N patches (softmax over all 1 + N keys, as in the layer) and
        `(B, N, Dv)` the patches' keys (heads concatenated).
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_in)
    b, t, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(b, 1, -1, attn.head_dim).transpose(1, 2)     # (B, H, 1, hd)
    k_flat = attn.k_proj(x)
    k = k_flat.view(b, t, -1, attn.head_dim).transpose(1, 2)                     # (B, H, T, hd)
    probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1)
    return probs[:, :, 0, 1:], k_flat[:, 1:]


def received_attention(layer: torch.nn.Module, hidden_in: torch.Tensor) -> torch.Tensor:
    """The attention each patch receives in a CLIP-style vision encoder layer, averaged over every query row.

    HiPrune's "global attention": softmax(q·kᵀ·scale) of the layer (no mask: CLIP's tower attends
    bidirectionally), averaged over all 1 + N query rows, [CLS] included, read at the N patch keys.

    Args:
        layer: a CLIP encoder layer (`layer_norm1`, `self_attn.{q,k}_proj`, `head_dim`, `scale`).
        hidden_in: `(B, 1 + N, Dv)` hidden states entering the layer, [CLS] first.

    Returns:
        `(B, H, N)` float32 mean attention received by each patch, per head.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_in)
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)             # (B, H, T, hd)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1)
    return probs.mean(dim=2)[:, :, 1:]
