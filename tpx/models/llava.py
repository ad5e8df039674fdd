"""Adapter for LLaVA-1.5-style models (`LlavaForConditionalGeneration`: CLIP tower, projector, Llama).

The adapter answers every transformers-specific question the engine has — where the image tokens are, how
they lay out on a grid, which modules are the decoder layers, how to rebuild a causal mask or rotary
embedding — and holds no pruning logic.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import LlavaForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from tpx.models.attention import attention_keys, attention_rows, cls_attention

__all__ = ["Layout", "LlavaAdapter"]


class Layout(NamedTuple):
    """Where the prunable visual tokens are and how they lie on grids.

    Attributes:
        positions: `(B, N)` sequence positions of the prunable visual tokens, ascending.
        grids: `(rows, cols)` per image segment, in visual-token order; their areas sum to N.
    """

    positions: torch.Tensor
    grids: list[tuple[int, int]]


class LlavaAdapter:
    """Engine-facing view of a Hugging Face `LlavaForConditionalGeneration`.

    Args:
        model: the model; its language model must be a Llama-family decoder.

    Raises:
        TypeError: if `model` is not a `LlavaForConditionalGeneration`.
    """

    model_type = "llava"
    model_classes: tuple[type, ...] = (LlavaForConditionalGeneration,)
    supports_renumber = True  # 1-D RoPE positions can be compacted

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, self.model_classes):
            needed = " or ".join(c.__name__ for c in self.model_classes)
            raise TypeError(f"{type(self).__name__} needs a {needed}, got {type(model).__name__}")
        self.model = model
        self.text_model = model.model.language_model
        self.layers = self.text_model.layers
        self.n_layers = len(self.layers)
        self.image_token_id = int(model.config.image_token_id)

    @property
    def attn_implementation(self) -> str:
        """The text model's attention kernel ("sdpa", "eager", "flash_attention_2", ...)."""
        return self.text_model.config._attn_implementation

    def grid(self, n_visual: int) -> tuple[int, int]:
        """`(rows, cols)` of one image's grid: image size / patch size on each side.

        Raises:
            ValueError: if the grid does not hold exactly `n_visual` tokens (e.g. the "full" feature strategy
                that keeps CLIP's [CLS] token).
        """
        vc = self.model.config.vision_config
        side = int(vc.image_size) // int(vc.patch_size)
        if side * side != n_visual:
            raise ValueError(
                f"the {n_visual} image tokens do not form the {side}x{side} patch grid of this LLaVA "
                f"(vision_feature_select_strategy={self.model.config.vision_feature_select_strategy!r})"
            )
        return side, side

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Visual positions and grids of a call: one `side × side` grid per image in the prompt."""
        positions = self.visual_positions(input_ids)
        vc = self.model.config.vision_config
        per_image = (int(vc.image_size) // int(vc.patch_size)) ** 2
        n = positions.shape[1]
        if n % per_image:
            self.grid(n)  # raises with the explanation
        return Layout(positions, [self.grid(per_image)] * (n // per_image))

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the image tokens in each row of `input_ids`.

        Raises:
            ValueError: if there are no image tokens, or rows hold different numbers of them.
        """
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(dim=1)
        if not bool(counts.any()):
            raise ValueError(
                f"input_ids contain no image tokens (image_token_id={self.image_token_id}); "
                "pass the processor's output for an image and a prompt with the image placeholder"
            )
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"every batch row must hold the same number of image tokens, got {counts.tolist()}")
        b = input_ids.shape[0]
        return is_image.nonzero()[:, 1].view(b, -1)

    def check_cache(self, cache: object) -> None:
        """Pruned layers hold shorter caches than unpruned ones, which only `DynamicCache` supports.

        Raises:
            TypeError: for any other cache class.
        """
        if cache is not None and type(cache) is not DynamicCache:
            raise TypeError(
                f"tpx.pruning needs a DynamicCache (pruned layers cache fewer tokens), got {type(cache).__name__}; "
                "do not pass cache_implementation= or a pre-built cache to generate()"
            )

    def attention_rows(
        self,
        layer_idx: int,
        hidden_in: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        rows: torch.Tensor,
        mask2d: torch.Tensor | None,
        cache: object = None,
    ) -> torch.Tensor:
        """`(B, H, R, T)` attention of query `rows` at decoder layer `layer_idx`; see `attention_rows`.

        When the layer has just filled `cache` with the keys of these T positions, they are reused and only
        the query rows are projected.
        """
        keys = self._cached_keys(cache, layer_idx, hidden_in.shape[1])
        return attention_rows(self.layers[layer_idx], hidden_in, position_embeddings, rows, mask2d, keys)

    @staticmethod
    def _cached_keys(cache: Any, layer_idx: int, length: int) -> torch.Tensor | None:
        layers = getattr(cache, "layers", None)
        keys = getattr(layers[layer_idx], "keys", None) if layers is not None and layer_idx < len(layers) else None
        return keys if keys is not None and keys.ndim == 4 and keys.shape[-2] == length else None

    def keys(
        self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: object = None,
    ) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` post-RoPE keys at decoder layer `layer_idx` (from `cache` when it holds them)."""
        keys = self._cached_keys(cache, layer_idx, hidden_in.shape[1])
        if keys is not None:
            return keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1)
        return attention_keys(self.layers[layer_idx], hidden_in, position_embeddings)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The language model's final norm (what the LM head reads)."""
        return self.text_model.norm(hidden)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pre-projector vision features `(B, N, Dv)` into the LLM's embedding space."""
        return self.model.model.multi_modal_projector(vision_features)

    def vision_hooks(self, sink: dict[str, torch.Tensor]) -> list[Any]:
        """Hooks on the vision tower's feature layer that record, per image, into `sink`:
        `cls_attn` (n_img, H, N), `vision_keys` (n_img, N, Dv) and `vision_features` (n_img, N, Dv), the
        pre-projector features LLaVA feeds its projector.

        Raises:
            ValueError: for a multi-layer feature selection or the "full" strategy (no [CLS] to drop).
        """
        cfg = self.model.config
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "default":
            raise ValueError(
                "vision-side (hook 'V') pruning needs a single vision_feature_layer and the 'default' strategy; "
                f"got {cfg.vision_feature_layer!r}, {cfg.vision_feature_select_strategy!r}"
            )
        tower = self.model.model.vision_tower
        encoder_layers = getattr(tower, "vision_model", tower).encoder.layers
        h = cfg.vision_feature_layer % (len(encoder_layers) + 1)  # index into hidden_states
        if h == 0:
            raise ValueError("vision_feature_layer selects the patch embeddings: there is no attention to read")
        layer = encoder_layers[h - 1]

        def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            sink["cls_attn"], sink["vision_keys"] = cls_attention(module, hidden)

        def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            sink["vision_features"] = out[:, 1:]

        return [
            layer.register_forward_pre_hook(before, with_kwargs=True),
            layer.register_forward_hook(after, with_kwargs=True),
        ]

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary `(cos, sin)` for explicit position ids (used when positions are renumbered)."""
        return self.text_model.rotary_emb(hidden, position_ids=position_ids)

    def causal_mask(
        self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: object, layer_idx: int
    ) -> torch.Tensor | None:
        """The mask decoder layer `layer_idx` needs, sized from that layer's own cache.

        Position ids are deliberately not passed: with gaps and no padding mask transformers would read them
        as packed-sequence boundaries.
        """
        return create_causal_mask(
            config=self.text_model.config, inputs_embeds=hidden, attention_mask=mask2d, cache=cache,
            position_ids=None, layer_idx=layer_idx,
        )
