"""Adapter for LLaVA-1.5-style models (`LlavaForConditionalGeneration`: CLIP tower, projector, Llama).

The adapter answers every transformers-specific question the engine has — where the image tokens are, how
they lay out on a grid, which modules are the decoder layers, how to rebuild a causal mask or rotary
embedding — and holds no pruning logic.
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from tpx.models.attention import attention_rows

__all__ = ["LlavaAdapter"]


class LlavaAdapter:
    """Engine-facing view of a Hugging Face `LlavaForConditionalGeneration`.

    Args:
        model: the model; its language model must be a Llama-family decoder.

    Raises:
        TypeError: if `model` is not a `LlavaForConditionalGeneration`.
    """

    model_type = "llava"

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, LlavaForConditionalGeneration):
            raise TypeError(
                f"LlavaAdapter needs a LlavaForConditionalGeneration, got {type(model).__name__}"
            )
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
        """`(rows, cols)` of the visual grid: image size / patch size on each side.

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
    ) -> torch.Tensor:
        """`(B, H, R, T)` attention of query `rows` at decoder layer `layer_idx`; see `attention_rows`."""
        return attention_rows(self.layers[layer_idx], hidden_in, position_embeddings, rows, mask2d)

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
