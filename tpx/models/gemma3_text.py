"""The decoder side of Gemma 3 (`Gemma3TextModel`): what the engine asks of its language model, exactly.

Gemma 3 differs from the Llama family in every place the engine touches: its RMSNorms scale by `1 + w`; queries
and keys pass their own RMSNorms (`q_norm`, `k_norm`) before the rotary embedding; attention logits are scaled by
`query_pre_attn_scalar ** -0.5`, not `head_dim ** -0.5`; sliding-window layers (window 512 in the released
models) use a local rotary base (`rope_parameters["sliding_attention"]`, 10 000) and global layers the global
one (1 000 000), so the model hands each layer the rotary of its type; and inside `Gemma3ForConditionalGeneration`
the tokens of each image attend to one another in both directions (`token_type_ids`), on global layers as
OR(causal, image block) and on sliding layers as AND(window, OR(causal, image block)). Its cache holds at most
`sliding_window − 1` keys on sliding layers. Token embeddings are scaled by sqrt(hidden) inside `embed_tokens`
(image features are not), so the hidden states the engine cuts need no rescaling.

Pruned sequences: a pruned layer attends over the kept tokens as if the model had been run on that shorter
sequence (kept tokens keep their position ids; the window counts kept tokens, as the sliding cache does; kept
tokens of one image stay one bidirectional block). `Gemma3Decoder` is composed of the layer's own modules, so
attention rows, keys and values are the model's arithmetic, not a copy of it.

Reference: Gemma Team, "Gemma 3 Technical Report", arXiv 2503.19786 (5:1 local/global layers, 1 024-token window
in the report, 512 in the 270M/4B configs; RoPE bases 10k / 1M; QK-norm; bidirectional image attention).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.masking_utils import (
    blockwise_overlay,
    create_causal_mask,
    create_sliding_window_causal_mask,
    sliding_window_overlay,
)
from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb, repeat_kv

from tpx.models.decoder import cached, check_cache
from tpx.select import take

__all__ = ["Gemma3Decoder"]


class Gemma3Decoder:
    """Engine-facing view of a `Gemma3TextModel` (satisfies `base.Decoder`).

    Args:
        text_model: the language model (`model.model.language_model`, of LLaVA or Gemma 3).

    Raises:
        ValueError: for a text model with bidirectional text attention (EmbeddingGemma), which is no causal LM.
    """

    def __init__(self, text_model: torch.nn.Module) -> None:
        cfg = text_model.config
        if getattr(cfg, "use_bidirectional_attention", False):
            raise ValueError("a Gemma 3 text model with use_bidirectional_attention=True is an encoder, not a causal "
                             "LM: token pruning inside it is not supported")
        self.text_model = text_model
        self.layers = text_model.layers
        self.n_layers = len(self.layers)
        self.config = cfg

    @property
    def attn_implementation(self) -> str:
        """The text model's attention kernel ("sdpa", "eager", ...)."""
        return self.config._attn_implementation

    def check_cache(self, cache: object) -> None:
        """Raise `TypeError` for a cache other than `DynamicCache` (see `decoder.check_cache`)."""
        check_cache(cache)

    def layer_type(self, layer_idx: int) -> str:
        """"sliding_attention" or "full_attention" (`config.layer_types`): the layer's mask and rotary."""
        return self.config.layer_types[layer_idx]

    def attention_rows(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...],
                       rows: torch.Tensor, mask2d: torch.Tensor | None, cache: object = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities of the query positions `rows` over all keys of one decoder layer (prefill).

        Args:
            layer_idx: the decoder layer.
            hidden_in: `(B, T, D)` hidden states entering it.
            position_embeddings: that layer's rotary `(cos, sin)` (its type's base), each `(B or 1, T, head_dim)`.
            rows: `(B, R)` int64 query positions.
            mask2d: optional `(B, T)` padding mask (1 = real token).
            cache: the cache; its keys are reused when the layer holds exactly these T positions.
            mask: the attention mask the layer received (4-D bool or additive float), which carries the
                bidirectional image blocks; None: causal + padding (+ the window on sliding layers), which is what
                the model means when it passes none.

        Returns:
            `(B, H, R, T)` float32 probabilities, equal to eager `output_attentions` rows.
        """
        layer = self.layers[layer_idx]
        attn = layer.self_attn
        b, t, _ = hidden_in.shape
        hd = attn.head_dim
        cos, sin = (e.expand(b, -1, -1) for e in position_embeddings)
        gidx = rows[..., None].expand(-1, -1, cos.shape[-1])
        x_rows = layer.input_layernorm(take(hidden_in, rows))
        q = attn.q_norm(attn.q_proj(x_rows).view(b, rows.shape[1], -1, hd).transpose(1, 2))
        q, _ = apply_rotary_pos_emb(q, q, cos.gather(1, gidx), sin.gather(1, gidx))
        keys = cached(cache, layer_idx, t, "keys")
        if keys is None:
            keys = self._keys(layer, hidden_in, cos, sin)
        logits = torch.matmul(q.float(), repeat_kv(keys, attn.num_key_value_groups).float().transpose(-1, -2))
        logits = logits * attn.scaling
        if attn.attn_logit_softcapping is not None:
            logits = torch.tanh(logits / attn.attn_logit_softcapping) * attn.attn_logit_softcapping
        allowed = self._allowed(layer_idx, rows, t, mask2d, mask)
        return logits.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)

    def keys(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
             cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` keys after `k_norm` and rotary, as the layer caches them (from `cache` when it
        holds these T positions)."""
        keys = cached(cache, layer_idx, hidden_in.shape[1], "keys")
        if keys is None:
            b = hidden_in.shape[0]
            cos, sin = (e.expand(b, -1, -1) for e in position_embeddings)
            keys = self._keys(self.layers[layer_idx], hidden_in, cos, sin)
        return keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1)

    def values(self, layer_idx: int, hidden_in: torch.Tensor, cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` value vectors (Gemma 3 has no value norm)."""
        values = cached(cache, layer_idx, hidden_in.shape[1], "values")
        if values is not None:
            return values.transpose(1, 2).reshape(values.shape[0], values.shape[2], -1)
        layer = self.layers[layer_idx]
        return layer.self_attn.v_proj(layer.input_layernorm(hidden_in))

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final `1 + w` RMSNorm the LM head reads."""
        return self.text_model.norm(hidden)

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor,
               layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary `(cos, sin)` of layer `layer_idx`'s type (local base on sliding layers, global on full ones).

        Raises:
            ValueError: without `layer_idx`: the two layer types use different bases.
        """
        if layer_idx is None:
            raise ValueError("Gemma 3 has one rotary embedding per layer type: pass layer_idx")
        return self.text_model.rotary_emb(hidden, position_ids, self.layer_type(layer_idx))

    def causal_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: object, layer_idx: int,
                    blocks: torch.Tensor | None = None) -> torch.Tensor | None:
        """The mask layer `layer_idx` needs for `hidden`, sized from that layer's cache: causal, or the sliding
        window on sliding layers; with `blocks` (prefill of a Gemma 3 call with `token_type_ids`), each image
        block also attends to itself in both directions: OR(causal, block) on global layers, AND(window,
        OR(causal, block)) on sliding ones, as `Gemma3Model` composes them.

        Position ids are not passed: with gaps and no padding mask transformers would read them as
        packed-sequence boundaries.
        """
        sliding = self.layer_type(layer_idx) == "sliding_attention"
        kw: dict[str, Any] = dict(config=self.config, inputs_embeds=hidden, attention_mask=mask2d, cache=cache,
                                  position_ids=None, layer_idx=layer_idx)
        if blocks is None:
            return (create_sliding_window_causal_mask if sliding else create_causal_mask)(**kw)
        if sliding:
            return create_causal_mask(**kw, or_mask_function=blockwise_overlay(blocks),
                                      and_mask_function=sliding_window_overlay(self.config.sliding_window))
        return create_causal_mask(**kw, block_sequence_ids=blocks)

    # ---- internals ----------------------------------------------------------------------------------------
    @staticmethod
    def _keys(layer: torch.nn.Module, hidden_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`(B, H_kv, T, head_dim)` keys: input norm, projection, `k_norm`, rotary."""
        attn = layer.self_attn
        b, t, _ = hidden_in.shape
        k = attn.k_norm(attn.k_proj(layer.input_layernorm(hidden_in)).view(b, t, -1, attn.head_dim).transpose(1, 2))
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        return k

    def _allowed(self, layer_idx: int, rows: torch.Tensor, t: int, mask2d: torch.Tensor | None,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """`(B, R, T)` which keys each query row may attend to, read from the layer's mask when it has one."""
        b = rows.shape[0]
        if isinstance(mask, torch.Tensor) and mask.ndim == 4:
            m = mask[:, 0, :, :t].expand(b, -1, -1)
            m = m.gather(1, rows[..., None].expand(-1, -1, t))
            return m if m.dtype == torch.bool else m == 0
        j = torch.arange(t, device=rows.device)[None, None, :]
        allowed = j <= rows[..., None]
        if self.layer_type(layer_idx) == "sliding_attention":
            allowed = allowed & (j > rows[..., None] - self.config.sliding_window)
        if mask2d is not None:
            allowed = allowed & mask2d[:, None, :t].bool()
        return allowed
