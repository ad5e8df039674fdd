"""Adapter for LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`: SigLIP tower, AnyRes-Max, Qwen2).

A single image is packed as in LLaVA-NeXT — a `side × side` base view (27×27 for 384-pixel crops of 14-pixel
patches), then the canvas crops stitched, unpadded and followed row by row by `image_newline` — with one more
step, AnyRes-Max (`vision_aspect_ratio="anyres_max_9"`): a canvas of more than about 9 · 729 patches is shrunk by
bilinear interpolation to about that many tokens. Images of a multi-image prompt are not tiled (base view and
one newline each). The adapter holds the same `AnyRes` geometry helper as the LLaVA-NeXT adapter (with the
shrinking rule switched on) and the shared `LlamaDecoder` for the Qwen2 language model.

Vision-side records (hook "V"): SigLIP has no [CLS] token, so the score of a patch is the attention it
receives at the feature layer, averaged over the query patches of its crop (as the Qwen2-VL adapter does; the
"global attention" VisPruner and VisionZip use for towers without [CLS], Theia-4869/VisPruner issue #1). The
model projects the crops *before* it shrinks the canvas, so the features recorded are the projector's outputs,
already in the LLM's space, stitched, unpadded and interpolated exactly as the model packs them; scores and
keys are stitched and interpolated the same way (pooled to the token grid). A merged token (VisionZip) is then
the mean of projected tokens rather than the projection of a mean of vision features.

Reference: Li et al., "LLaVA-OneVision: Easy Visual Task Transfer", arXiv 2408.03326 (AnyRes-Max, SigLIP).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

from tpx.layout import Layout
from tpx.models.anyres import AnyRes, ImageSizes, Packing
from tpx.models.base import image_positions
from tpx.models.decoder import LlamaDecoder

__all__ = ["LlavaOnevisionAdapter", "received_attention"]

TEXT_MODELS = ("qwen2", "llama")


class LlavaOnevisionAdapter:
    """Engine-facing view of a Hugging Face `LlavaOnevisionForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: the model; its language model must be Qwen2 or Llama.

    Raises:
        TypeError: for another model class or language model; ValueError for a `vision_aspect_ratio` that is not
            "anyres_max_N".
    """

    model_type = "llava_onevision"
    supports_renumber = True
    # received attention (as `cls_attn`), keys and projected features; HiPrune's two-layer records are not recorded
    vision_ingredients = frozenset({"cls_attn", "vision_keys", "vision_features"})

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, LlavaOnevisionForConditionalGeneration):
            raise TypeError("LlavaOnevisionAdapter needs a LlavaOnevisionForConditionalGeneration, got "
                            f"{type(model).__name__}")
        text_type = model.config.text_config.model_type
        if text_type not in TEXT_MODELS:
            raise TypeError(f"LlavaOnevisionAdapter supports the language models {', '.join(TEXT_MODELS)}; this "
                            f"model has {text_type!r}, whose attention the shared decoder does not reproduce")
        aspect = str(model.config.vision_aspect_ratio)
        if not aspect.startswith("anyres_max_") or not aspect[len("anyres_max_"):].isdigit():
            raise ValueError(f"vision_aspect_ratio must be 'anyres_max_N', got {aspect!r}")
        self.model = model
        self.decoder = LlamaDecoder(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        self.anyres = AnyRes(model, get_anyres_image_grid_shape, unpad_image, max_crops=int(aspect[len("anyres_max_"):]))
        self.side = self.anyres.side

    def nominal_layout(self) -> None:
        """None: the AnyRes-Max grid depends on each image's size."""
        return None

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The identity: the `vision_features` this adapter records are the projector's outputs, already in the
        LLM's space (OneVision projects each crop before it shrinks the canvas), so merged ones need nothing more.
        The engine projects every merged hook-"V" feature through this method."""
        return vision_features

    # ---- layout -------------------------------------------------------------------------------------
    def image_grids(self, **call: Any) -> list[Packing]:
        """`(rows, cols, options)` of every image's crop grid after unpadding and AnyRes-Max, in prompt order.

        From `image_sizes` (and `batch_num_images`: images of a multi-image prompt have no crops) in a forward,
        otherwise from the packed features in `mm_encoder_outputs` (what `generate()` passes at prefill).

        Raises:
            ValueError: if the call carries neither, or the packed features do not have the AnyRes shape.
        """
        sizes = call.get("image_sizes")
        if sizes is not None:
            per_prompt = call.get("batch_num_images")
            counts = [1] * len(sizes) if per_prompt is None else [int(n) for n in per_prompt]
            tiled = [n == 1 for n in counts for _ in range(n)]
            return [self.anyres.from_size(s) if t else Packing(0, 0, ()) for s, t in zip(sizes, tiled, strict=True)]
        encoded = (call.get("mm_encoder_outputs") or {}).get("image")
        if encoded is None:
            raise ValueError("the LLaVA-OneVision layout needs the call's image_sizes (forward with pixel_values) or "
                             "its mm_encoder_outputs (generate); got neither")
        return [self.anyres.from_features(f) for f in encoded.pooler_output]

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Prunable positions and grids: per image, the base `side × side` grid, then the crop grid after
        unpadding and AnyRes-Max (without the newline column); newline tokens are the layout's `fixed` positions.

        Raises:
            ValueError: if rows hold different image layouts, or the placeholders do not match the images.
        """
        return self.anyres.layout(input_ids, self.image_token_id, self.image_grids(**call))

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, M)` positions of every image placeholder, `image_newline` tokens included."""
        return image_positions(input_ids, self.image_token_id)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks that record, per crop, into `sink`: at SigLIP's feature layer `cls_attn` (crops, H, side²), the
        attention each patch receives (mean over its crop's query patches), and `vision_keys` (crops, side², Dv);
        at the projector, `vision_features` (crops, side², D), the projected crop features. Images only: a call
        with videos runs the tower again and overwrites them.

        Raises:
            ValueError: for a multi-layer feature selection, a strategy other than "full", or a feature layer that
                selects the patch embeddings.
        """
        cfg = self.model.config
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "full":
            raise ValueError("vision-side (hook 'V') pruning needs a single vision_feature_layer and the 'full' "
                             f"strategy (SigLIP has no [CLS]); got {cfg.vision_feature_layer!r}, "
                             f"{cfg.vision_feature_select_strategy!r}")
        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        h = cfg.vision_feature_layer % (len(layers) + 1)
        if h == 0:
            raise ValueError("vision_feature_layer selects the patch embeddings: there is no attention to read")

        def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            received, keys = received_attention(module, hidden)
            sink.update(cls_attn=received, vision_keys=keys)

        def projected(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            sink.update(vision_features=output)

        return [layers[h - 1].register_forward_pre_hook(before, with_kwargs=True),
                self.model.model.multi_modal_projector.register_forward_hook(projected), ImageSizes(self.model, sink)]

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """Per-crop records stitched per batch row in layout order, as the model packs its features: `cls_attn`
        (B, H, N), `vision_keys` (B, N, Dv), `vision_features` (B, N, D) in the LLM's space.

        Raises:
            ValueError: if the crops the tower saw cannot be matched to the layout's grids.
        """
        per_crop = {k: sink[k] for k in ("cls_attn", "vision_keys", "vision_features")}
        per_crop["cls_attn"] = per_crop["cls_attn"].transpose(1, 2)  # (crops, N, H): token axis second
        records = self.anyres.stitch(per_crop, layout, sink.get("image_sizes"))
        records["cls_attn"] = records["cls_attn"].transpose(1, 2)
        return records


def received_attention(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention each patch receives in a SigLIP / CLIP-style encoder layer, averaged over the query patches
    of its own crop, and the patch keys.

    Args:
        layer: an encoder layer with `layer_norm1` and `self_attn.{q,k}_proj`, `num_heads`, `scale`.
        hidden_in: `(n, T, Dv)` hidden states entering the layer (n crops, no [CLS]).

    Returns:
        `(n, H, T)` float32 received attention (each row of the softmax sums to 1, so this sums to 1 over T) and
        `(n, T, Dv)` the keys, heads concatenated. One crop at a time, so memory stays at one `(H, T, T)` map.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_in)
    n, t, _ = x.shape
    q = attn.q_proj(x).view(n, t, attn.num_heads, -1).transpose(1, 2).float()
    k_flat = attn.k_proj(x)
    k = k_flat.view(n, t, attn.num_heads, -1).transpose(1, 2).float()
    received = torch.stack([(q[i] @ k[i].transpose(-1, -2) * attn.scale).softmax(-1).mean(-2) for i in range(n)])
    return received, k_flat
