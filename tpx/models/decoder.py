"""The decoder side of every supported family: Llama-style language models (Llama, Mistral, Qwen2 text).

One `LlamaDecoder` answers the engine's questions about the language model: attention rows recomputed for a
few query positions, keys and values (from the layer's own cache when it holds them), the final norm, rotary
embeddings for explicit positions, the causal (or sliding-window) mask of a layer sized from its own cache,
and which cache class pruning can use. Adapters hold one (`base.decoder_for` picks the class for a text model:
Gemma 3's lives in `gemma3_text`); nothing here knows about images.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from tpx.models.attention import attention_keys, attention_rows, attention_values

__all__ = ["LlamaDecoder", "cached", "check_cache"]


def check_cache(cache: object) -> None:
    """Pruned layers hold shorter caches than unpruned ones, which only `DynamicCache` supports (its sliding
    layers included).

    Raises:
        TypeError: for any other cache class.
    """
    if cache is not None and type(cache) is not DynamicCache:
        raise TypeError(
            f"tpx.pruning needs a DynamicCache (pruned layers cache fewer tokens), got {type(cache).__name__}; "
            "do not pass cache_implementation= or a pre-built cache to generate()"
        )


class LlamaDecoder:
    """Engine-facing view of a Llama-family text model (`input_layernorm`, `self_attn.{q,k,v}_proj`, `norm`,
    `rotary_emb`).

    Args:
        text_model: the MLLM's language model (`model.model.language_model`).
    """

    def __init__(self, text_model: torch.nn.Module) -> None:
        self.text_model = text_model
        self.layers = text_model.layers
        self.n_layers = len(self.layers)

    @property
    def attn_implementation(self) -> str:
        """The text model's attention kernel ("sdpa", "eager", "flash_attention_2", ...)."""
        return self.text_model.config._attn_implementation

    def check_cache(self, cache: object) -> None:
        """Raise `TypeError` for a cache other than `DynamicCache` (see `check_cache`)."""
        check_cache(cache)

    def layer_type(self, layer_idx: int) -> str:
        """"sliding_attention" or "full_attention", per `config.layer_types` (or every layer when a config
        without them sets `sliding_window`)."""
        cfg = self.text_model.config
        types = getattr(cfg, "layer_types", None)
        if types:
            return types[layer_idx]
        return "sliding_attention" if getattr(cfg, "sliding_window", None) is not None else "full_attention"

    def attention_rows(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...],
                       rows: torch.Tensor, mask2d: torch.Tensor | None, cache: object = None,
                       mask: object = None) -> torch.Tensor:
        """`(B, H, R, T)` attention of query `rows` at decoder layer `layer_idx`; see `attention.attention_rows`.

        When the layer has just filled `cache` with the keys of these T positions, they are reused and only the
        query rows are projected. `mask` (the layer's own mask) is not needed: the rule is causal + padding.
        """
        keys = cached(cache, layer_idx, hidden_in.shape[1], "keys")
        return attention_rows(self.layers[layer_idx], hidden_in, position_embeddings, rows, mask2d, keys)

    def keys(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
             cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` post-RoPE keys at decoder layer `layer_idx` (from `cache` when it holds them)."""
        keys = cached(cache, layer_idx, hidden_in.shape[1], "keys")
        if keys is not None:
            return keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1)
        return attention_keys(self.layers[layer_idx], hidden_in, position_embeddings)

    def values(self, layer_idx: int, hidden_in: torch.Tensor, cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` value vectors at decoder layer `layer_idx` (from `cache` when it holds them)."""
        values = cached(cache, layer_idx, hidden_in.shape[1], "values")
        if values is not None:
            return values.transpose(1, 2).reshape(values.shape[0], values.shape[2], -1)
        return attention_values(self.layers[layer_idx], hidden_in)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The language model's final norm (what the LM head reads)."""
        return self.text_model.norm(hidden)

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor,
               layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary `(cos, sin)` for explicit 1-D position ids (used when positions are renumbered); one rotary
        serves every layer."""
        return self.text_model.rotary_emb(hidden, position_ids=position_ids)

    def causal_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: object,
                    layer_idx: int, blocks: torch.Tensor | None = None) -> torch.Tensor | None:
        """The mask decoder layer `layer_idx` needs, sized from that layer's own cache (sliding-window layers
        too: per `config.layer_types`, or every layer when a config without them sets `sliding_window`).

        Position ids are deliberately not passed: with gaps and no padding mask transformers would read them as
        packed-sequence boundaries.

        Raises:
            ValueError: for `blocks`: Llama-family decoders have no bidirectional blocks.
        """
        if blocks is not None:
            raise ValueError("Llama-family decoders attend causally: bidirectional blocks are not theirs")
        sliding = self.layer_type(layer_idx) == "sliding_attention"
        make = create_sliding_window_causal_mask if sliding else create_causal_mask
        return make(config=self.text_model.config, inputs_embeds=hidden, attention_mask=mask2d, cache=cache,
                    position_ids=None, layer_idx=layer_idx)


def cached(cache: Any, layer_idx: int, length: int, kind: str) -> torch.Tensor | None:
    """`(B, H_kv, T, d)` keys or values of layer `layer_idx` if its cache holds exactly `length` positions."""
    layers = getattr(cache, "layers", None)
    x = getattr(layers[layer_idx], kind, None) if layers is not None and layer_idx < len(layers) else None
    return x if x is not None and x.ndim == 4 and x.shape[-2] == length else None
