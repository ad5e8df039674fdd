"""Adapter for LLaVA-NeXT / LLaVA-1.6 (`LlavaNextForConditionalGeneration`: CLIP tower, AnyRes, Llama/Mistral).

AnyRes feeds each image to the LLM as a low-resolution base view (one `side × side` crop) followed by the
high-resolution crops stitched into one canvas, unpadded to the image's aspect ratio, with an
`image_newline` embedding after every canvas row. All of them share the `<image>` placeholder id in
`input_ids`. The adapter's layout lists the base grid and the unpadded canvas grid as separate segments
and puts the newline tokens among the never-pruned positions (`Layout.fixed`): they carry the 2-D structure
for the LLM. The geometry is the `AnyRes` helper (shared with LLaVA-OneVision), the decoder the same
`LlamaDecoder` LLaVA holds, and the CLIP records come from the same hooks; only the stitching of per-crop
records differs.

Reference: Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024 (AnyRes,
`spatial_unpad` merge).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from tpx.layout import Layout
from tpx.models.anyres import AnyRes, ImageSizes, Packing
from tpx.models.base import image_positions
from tpx.models.decoder import LlamaDecoder
from tpx.models.llava import CLIP_RECORDS, clip_feature_hooks

__all__ = ["LlavaNextAdapter"]

_HEADS_FIRST = frozenset({"cls_attn", "vision_received", "vision_received_object"})  # (crops, H, N) records


class LlavaNextAdapter:
    """Engine-facing view of a Hugging Face `LlavaNextForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: the model; its language model must be a Llama-family decoder.

    Raises:
        TypeError: if `model` is not a `LlavaNextForConditionalGeneration`.
    """

    model_type = "llava_next"
    supports_renumber = True
    vision_ingredients = CLIP_RECORDS

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, LlavaNextForConditionalGeneration):
            raise TypeError(f"LlavaNextAdapter needs a LlavaNextForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.decoder = LlamaDecoder(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        self.anyres = AnyRes(model, get_anyres_image_grid_shape, unpad_image)
        self.side = self.anyres.side

    def nominal_layout(self) -> None:
        """None: the AnyRes grid depends on each image's size."""
        return None

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pre-projector vision features `(B, N, Dv)` into the LLM's embedding space."""
        return self.model.model.multi_modal_projector(vision_features)

    # ---- layout -------------------------------------------------------------------------------------
    def image_grids(self, **call: Any) -> list[Packing]:
        """`(rows, cols, options)` of every image's unpadded crop grid, in prompt order (`anyres.Packing`).

        Read from `image_sizes` when the call carries them (a plain forward), otherwise from the packed
        features in `mm_encoder_outputs` (what `generate()` passes at prefill, after encoding the images
        itself): there, the newline tokens are the rows equal to `image_newline`. `options` lists the crop
        canvases the grid can come from (one when `image_sizes` are known); the layout needs none of them,
        the vision records need the one that matches the crops the tower saw. `rows == 0` means the image has
        no crops (base view and one newline only).

        Raises:
            ValueError: if the call carries neither, or the packed features do not have the AnyRes shape.
        """
        sizes = call.get("image_sizes")
        if sizes is not None:
            return [self.anyres.from_size(size) for size in sizes]
        encoded = (call.get("mm_encoder_outputs") or {}).get("image")
        if encoded is None:
            raise ValueError(
                "the LLaVA-NeXT layout needs the call's image_sizes (forward with pixel_values) or its "
                "mm_encoder_outputs (generate); got neither"
            )
        return [self.anyres.from_features(f) for f in encoded.pooler_output]

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Prunable positions and grids: per image, the base `side × side` grid, then the unpadded crop grid
        (`rows × cols`, without the newline column). Newline tokens are the layout's `fixed` positions.

        Raises:
            ValueError: if rows hold different image layouts, or the placeholders do not match the images.
        """
        return self.anyres.layout(input_ids, self.image_token_id, self.image_grids(**call))

    def visual_positions(self, input_ids: torch.Tensor, **call: Any) -> torch.Tensor:
        """`(B, N)` positions of the prunable visual tokens (newlines excluded); needs the call's image inputs."""
        return self.layout(input_ids, **call).positions

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, M)` positions of every image placeholder, `image_newline` tokens included."""
        return image_positions(input_ids, self.image_token_id)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the vision tower's feature layer that record, per crop, into `sink`: `cls_attn`
        (crops, H, side²), `vision_keys` and `vision_features` (crops, side², Dv), and the received attention
        `names` asks for (`clip_feature_hooks`); `vision_records` stitches them.

        Raises:
            ValueError: for a multi-layer feature selection or the "full" strategy.
        """
        return [*clip_feature_hooks(self.model, sink.update, names), ImageSizes(self.model, sink)]

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """Per-crop records stitched per batch row in layout order: `cls_attn` (B, H, N), `vision_keys` and
        `vision_features` (B, N, Dv).

        Each crop's [CLS] attends over its own patches (softmax per crop, as in the tower); the crops of the
        canvas are stitched and unpadded exactly as the model packs its features.
        """
        per_crop = {k: sink[k].transpose(1, 2) if k in _HEADS_FIRST else sink[k] for k in CLIP_RECORDS if k in sink}
        # (crops, N, H): token axis second while stitching
        records = self.anyres.stitch(per_crop, layout, sink.get("image_sizes"))
        return {k: v.transpose(1, 2) if k in _HEADS_FIRST else v for k, v in records.items()}
