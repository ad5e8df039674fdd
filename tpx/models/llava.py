"""Adapter for LLaVA-1.5-style models (`LlavaForConditionalGeneration`: CLIP tower, projector, Llama).

The adapter answers every transformers-specific question the engine has about this family — where the image
tokens are and how they lay out on a grid, what the CLIP tower's [CLS] attends to, how the projector maps
features — and holds a decoder for the language model (`LlamaDecoder`, or `Gemma3Decoder` for a Gemma 3 text model
as in the deep organism). It holds no pruning logic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration

from tpx.ingredients import OBJECT_DEPTH
from tpx.layout import Layout
from tpx.models.attention import cls_attention, received_attention
from tpx.models.base import decoder_for, image_positions

__all__ = ["CLIP_RECORDS", "Layout", "LlavaAdapter", "clip_feature_hooks"]

# what `clip_feature_hooks` can record (hook "V" ingredients, `tpx.ingredients.VISION`)
CLIP_RECORDS = frozenset({"cls_attn", "vision_keys", "vision_features", "vision_received", "vision_received_object"})


class LlavaAdapter:
    """Engine-facing view of a Hugging Face `LlavaForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: the model; its language model a Llama-family or Gemma 3 decoder.

    Raises:
        TypeError: if `model` is not a `LlavaForConditionalGeneration`.
    """

    model_type = "llava"
    supports_renumber = True  # 1-D RoPE positions can be compacted
    vision_ingredients = CLIP_RECORDS

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, LlavaForConditionalGeneration):
            raise TypeError(f"LlavaAdapter needs a LlavaForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.decoder = decoder_for(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        vc = model.config.vision_config
        self.side = int(vc.image_size) // int(vc.patch_size)

    def grid(self, n_visual: int) -> tuple[int, int]:
        """`(rows, cols)` of one image's grid: image size / patch size on each side.

        Raises:
            ValueError: if the grid does not hold exactly `n_visual` tokens (e.g. the "full" feature strategy
                that keeps CLIP's [CLS] token).
        """
        if self.side * self.side != n_visual:
            raise ValueError(
                f"the {n_visual} image tokens do not form the {self.side}x{self.side} patch grid of this LLaVA "
                f"(vision_feature_select_strategy={self.model.config.vision_feature_select_strategy!r})"
            )
        return self.side, self.side

    def nominal_layout(self) -> Layout:
        """One image: one `side × side` grid."""
        return Layout(grids=((self.side, self.side),))

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Visual positions and grids of a call: one `side × side` grid per image in the prompt."""
        positions = image_positions(input_ids, self.image_token_id)
        per_image, n = self.side * self.side, positions.shape[1]
        if n % per_image:
            self.grid(n)  # raises with the explanation
        return Layout(grids=((self.side, self.side),) * (n // per_image), positions=positions)

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the image tokens in each row of `input_ids` (`layout(...).positions`)."""
        return image_positions(input_ids, self.image_token_id)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pre-projector vision features `(B, N, Dv)` into the LLM's embedding space."""
        return self.model.model.multi_modal_projector(vision_features)

    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the vision tower's feature layer that record, per image, into `sink`: `cls_attn`
        (n_img, H, N), `vision_keys` (n_img, N, Dv) and `vision_features` (n_img, N, Dv), the pre-projector
        features LLaVA feeds its projector; and, when `names` asks for them, `vision_received` and
        `vision_received_object` (n_img, H, N).

        Raises:
            ValueError: for a multi-layer feature selection or the "full" strategy (no [CLS] to drop).
        """
        return clip_feature_hooks(self.model, sink.update, names)

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """What `vision_hooks` recorded: one image per batch row, already in layout order."""
        return dict(sink)


def clip_feature_hooks(model: torch.nn.Module, record: Callable[[dict[str, torch.Tensor]], Any],
                       names: frozenset[str] = frozenset()) -> list[Any]:
    """Hooks on the CLIP feature layer of a LLaVA-family model; `record` receives, per call and per crop,
    `cls_attn` (n, H, N) and `vision_keys` (n, N, Dv) before the layer, then `vision_features` (n, N, Dv) after.
    If `names` holds them, also `vision_received` (n, H, N) at the feature layer and `vision_received_object`
    at the object layer: round(`OBJECT_DEPTH` · depth) (1-based, CLIP-L's layer 9), at most the feature layer.

    Raises:
        ValueError: for a multi-layer feature selection or the "full" strategy (no [CLS] to drop), or a feature
            layer that selects the patch embeddings.
    """
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "default":
        raise ValueError(
            "vision-side (hook 'V') pruning needs a single vision_feature_layer and the 'default' strategy; "
            f"got {cfg.vision_feature_layer!r}, {cfg.vision_feature_select_strategy!r}"
        )
    tower = model.model.vision_tower
    encoder_layers = getattr(tower, "vision_model", tower).encoder.layers
    h = cfg.vision_feature_layer % (len(encoder_layers) + 1)  # index into hidden_states
    if h == 0:
        raise ValueError("vision_feature_layer selects the patch embeddings: there is no attention to read")
    layer = encoder_layers[h - 1]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        attn, keys = cls_attention(module, hidden)
        record({"cls_attn": attn, "vision_keys": keys})
        if "vision_received" in names:
            record({"vision_received": received_attention(module, hidden)})

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        record({"vision_features": out[:, 1:]})

    def before_object(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        record({"vision_received_object": received_attention(module, hidden)})

    hooks = [layer.register_forward_pre_hook(before, with_kwargs=True),
             layer.register_forward_hook(after, with_kwargs=True)]
    if "vision_received_object" in names:
        obj = min(h, max(1, round(OBJECT_DEPTH * len(encoder_layers))))
        hooks.append(encoder_layers[obj - 1].register_forward_pre_hook(before_object, with_kwargs=True))
    return hooks
