"""Adapter for Qwen3-VL (`Qwen3VLForConditionalGeneration`): merged grids, interleaved M-RoPE, DeepStack.

Qwen3-VL lays an image out as Qwen2-VL does (one `<|image_pad|>` token per 2×2 group of 16-pixel patches, a
`t·h/2 × w/2` grid per image), so the layout, the vision-side records and the image-only processor are the
Qwen2-VL module's. Its LLM differs in three ways the engine has to respect:

- **Interleaved M-RoPE.** The (t, h, w) frequencies are interleaved instead of sectioned, but the rotary module
  still folds them into one per-token `(cos, sin)` before the decoder layers: gathering `cos`/`sin` with the
  kept tokens keeps their 3-D positions, as for Qwen2-VL (no renumbering: `supports_renumber` is False).
- **q/k norms.** Each head's query and key pass an RMSNorm before the rotary embedding; the shared
  `LlamaDecoder` (through `attention.attention_rows`) applies a layer's `q_norm` / `k_norm` when it has them,
  so the adapter holds the same decoder class as LLaVA and Qwen2-VL.
- **DeepStack.** The vision tower's intermediate features (`deepstack_visual_indexes`, one merger each) are
  added to the visual tokens' hidden states after the first decoder layers (layer i gets feature i), inside
  the text model's layer loop, through a `(B, L)` visual-position mask fixed for the whole forward. A sequence
  shortened before one of those layers no longer matches that mask (transformers raises an `IndexError`). While
  a pruning run is open, the adapter's `decoder_hooks` therefore take the mask and the features out of the text
  model's call and add each feature after its layer to the visual tokens still present, found through the
  original positions of the current sequence that the engine hands them. A merged token (pooling, VisionZip)
  receives the DeepStack features of its representative (the group's first token), the token whose place and
  position it takes; the other tokens' DeepStack features leave with them.

Reference: Qwen Team, "Qwen3-VL Technical Report", arXiv 2511.21631 (interleaved MRoPE, DeepStack); Meng et
al., "DeepStack: Deeply Stacking Visual Tokens is Surprisingly Simple and Effective for LMMs", NeurIPS 2024,
arXiv 2406.04334.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from tpx.layout import Layout
from tpx.models.base import image_positions
from tpx.models.decoder import LlamaDecoder
from tpx.models.qwen2_vl import ImageOnlyProcessor, merged_layout, merged_vision_hooks

__all__ = ["OfflineQwen3VLProcessor", "Qwen3VLAdapter"]


class Qwen3VLAdapter:
    """Engine-facing view of a Hugging Face `Qwen3VLForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: a `Qwen3VLForConditionalGeneration`.

    Raises:
        TypeError: for any other model class.
    """

    model_type = "qwen3_vl"
    supports_renumber = False  # 3-D M-RoPE positions cannot be compacted into 1-D ones
    # no [CLS] and no per-layer records (as Qwen2-VL): HiPrune's received attention at two layers is not recorded
    vision_ingredients = frozenset({"cls_attn", "vision_keys", "vision_features"})

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, Qwen3VLForConditionalGeneration):
            raise TypeError(f"Qwen3VLAdapter needs a Qwen3VLForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.decoder = LlamaDecoder(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        self.merge = int(model.config.vision_config.spatial_merge_size)

    # ---- layout -------------------------------------------------------------------------------------
    def nominal_layout(self) -> None:
        """None: a Qwen3-VL grid depends on each image's size (`image_grid_thw`)."""
        return None

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the `<|image_pad|>` tokens in each row of `input_ids`."""
        return image_positions(input_ids, self.image_token_id)

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Positions of the `<|image_pad|>` tokens and one `t·h/2 × w/2` grid per image, from `image_grid_thw`
        (forward) or the M-RoPE position ids `generate()` passes at prefill (see `qwen2_vl.merged_layout`).

        Raises:
            ValueError: for no image tokens, rows with different layouts, or a call carrying neither source.
        """
        return merged_layout(input_ids, self.image_token_id, self.merge, call)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The patch merger on `(B, N, 4·Dv)` vision features (each merge group's four patches, concatenated)."""
        merger = self.model.model.visual.merger
        if merger.use_postshuffle_norm:
            x = merger.norm(vision_features)
        else:  # the main merger normalises each patch before the four are concatenated
            x = merger.norm(vision_features.unflatten(-1, (self.merge * self.merge, -1))).flatten(-2)
        return merger.linear_fc2(merger.act_fn(merger.linear_fc1(x)))

    def vision_hooks(self, sink: dict[str, torch.Tensor], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the last vision block that record per merged token into `sink`: the attention its patches
        receive (no [CLS] here), their mean key and their outputs (see `qwen2_vl.merged_vision_hooks`)."""
        return merged_vision_hooks(self.model.model.visual, self.merge, sink)

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """What `vision_hooks` recorded: per image, in layout order (one image per batch row)."""
        return dict(sink)

    # ---- DeepStack -----------------------------------------------------------------------------------------
    def decoder_hooks(self, positions: Callable[[], torch.Tensor | None]) -> list[Any]:
        """Hooks that carry out DeepStack on a sequence the engine may shorten: a pre-hook on the text model takes
        `visual_pos_masks` and `deepstack_visual_embeds` out of its call; a forward hook on each of the first
        decoder layers adds that layer's feature to the visual tokens its output still holds.

        Args:
            positions: returns `(B, L')` original sequence positions of the tokens the decoder layers carry at the
                moment it is called (after the cuts made so far in this prefill), or None outside a prefill.

        Returns:
            The hook handles (the engine removes them with its own).
        """
        state: dict[str, Any] = {}

        def take(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            masks, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
            state.clear()
            if embeds:  # a prefill with images; decode steps carry none
                flat = masks.flatten()
                index = (flat.long().cumsum(0) - 1).masked_fill(~flat, -1).view_as(masks)  # into the packed rows
                state.update(index=index, embeds=list(embeds))
            return args, {**kwargs, "visual_pos_masks": None, "deepstack_visual_embeds": None}

        def add(layer_idx: int, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not state or layer_idx >= len(state["embeds"]):
                return None
            return _deepstack_add(output, state["index"], positions(), state["embeds"][layer_idx])

        n_deep = len(self.model.config.vision_config.deepstack_visual_indexes)
        handles = [self.text_model.register_forward_pre_hook(take, with_kwargs=True)]
        for i in range(min(n_deep, self.n_layers)):
            handles.append(self.layers[i].register_forward_hook(_LayerAdd(add, i)))
        return handles


class _LayerAdd:
    """Forward hook of one decoder layer: adds its DeepStack feature (a named callable, not a lambda, so a handle's
    hook says what it does)."""

    def __init__(self, add: Callable[..., Any], layer_idx: int) -> None:
        self.add, self.layer_idx = add, layer_idx

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return self.add(self.layer_idx, module, args, output)


def _deepstack_add(hidden: torch.Tensor, index: torch.Tensor, seq: torch.Tensor | None,
                   embeds: torch.Tensor) -> torch.Tensor:
    """`hidden` with one DeepStack feature added to the visual tokens it holds.

    Args:
        hidden: `(B, L', D)` a decoder layer's output.
        index: `(B, L)` row of each original position in the packed `embeds`, −1 for non-visual positions.
        seq: `(B, L')` original positions of `hidden`'s tokens, or None for the unshortened sequence.
        embeds: `(M, D)` the feature of every visual token of the call, packed row after row.

    Returns:
        `(B, L', D)`: the same additions as transformers makes (`hidden + feature` at visual tokens, in the
        hidden states' dtype), the other rows untouched.

    Raises:
        RuntimeError: if the positions do not describe `hidden`'s sequence.
    """
    rows = index if seq is None else index.gather(1, seq.to(index.device))
    if rows.shape != hidden.shape[:2]:
        raise RuntimeError(f"DeepStack positions {tuple(rows.shape)} do not match the hidden states "
                           f"{tuple(hidden.shape[:2])} of this layer")
    rows = rows.to(hidden.device)
    features = embeds.to(hidden.device, hidden.dtype)[rows.clamp(min=0)]
    return torch.where((rows >= 0)[..., None], hidden + features, hidden)


class OfflineQwen3VLProcessor(ImageOnlyProcessor, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (no torchvision needed; see `qwen2_vl.ImageOnlyProcessor`)."""
