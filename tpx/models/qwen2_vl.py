"""Adapter for Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`).

The visual span of an image is its run of `<|image_pad|>` tokens, one per 2×2 group of vision patches after
the patch merger: an image with `image_grid_thw = (t, h, w)` lays out as a `t·h/2 × w/2` grid. The LLM
uses 3-D M-RoPE positions (t, h, w), but its rotary module folds them into one per-token `(cos, sin)` of
shape `(B, L, head_dim)` before the decoder layers, so the engine keeps the kept tokens' original 3-D
positions by gathering `cos`/`sin` alone. The decoder layers are Qwen2 (Llama-style: RMSNorm, q/k/v
projections with bias, Llama's `apply_rotary_pos_emb` on the folded cos/sin), so the adapter holds the same
`LlamaDecoder` as LLaVA (sliding-window layers included).

The vision tower has no [CLS] token: the vision-side score of a merged token is the attention its patches
*receive* at the last vision block (mean over the query patches of the same image, or of the same window in
Qwen2.5-VL's windowed blocks), averaged over the 2×2 merge group. The layout, these vision records and the
image-only processor are module functions that the Qwen3-VL adapter shares.

Reference: Wang et al., "Qwen2-VL", arXiv 2409.12191 (M-RoPE, 2×2 merger); Bai et al., "Qwen2.5-VL Technical
Report", arXiv 2502.13923 (window attention).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_window_index

from tpx.layout import Layout
from tpx.models.base import image_positions
from tpx.models.decoder import LlamaDecoder

__all__ = ["ImageOnlyProcessor", "OfflineQwen2VLProcessor", "Qwen2VLAdapter", "load_processor", "merged_layout",
           "merged_vision_hooks"]

_QUERY_CHUNK = 1024  # query patches per step of the received-attention recompute (bounds memory)


class Qwen2VLAdapter:
    """Engine-facing view of a Hugging Face Qwen2-VL or Qwen2.5-VL model (satisfies `base.Adapter`).

    Args:
        model: a `Qwen2VLForConditionalGeneration` or `Qwen2_5_VLForConditionalGeneration`.

    Raises:
        TypeError: for any other model class.
    """

    model_type = "qwen2_vl"
    supports_renumber = False  # 3-D M-RoPE positions cannot be compacted into 1-D ones
    # no [CLS] and no per-layer records: HiPrune's received attention at two layers is not recorded here
    vision_ingredients = frozenset({"cls_attn", "vision_keys", "vision_features"})

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)):
            raise TypeError("Qwen2VLAdapter needs a Qwen2VLForConditionalGeneration or "
                            f"Qwen2_5_VLForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.decoder = LlamaDecoder(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        self.merge = int(model.config.vision_config.spatial_merge_size)

    # ---- layout -------------------------------------------------------------------------------------
    def nominal_layout(self) -> None:
        """None: a Qwen2-VL grid depends on each image's size (`image_grid_thw`)."""
        return None

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the `<|image_pad|>` tokens in each row of `input_ids`."""
        return image_positions(input_ids, self.image_token_id)

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Positions of the `<|image_pad|>` tokens and one `t·h/2 × w/2` grid per image (see `merged_layout`)."""
        return merged_layout(input_ids, self.image_token_id, self.merge, call)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The patch merger on `(B, N, 4·Dv)` vision features (each merge group's four patches, concatenated)."""
        merger = self.model.model.visual.merger
        x = merger.ln_q(vision_features.unflatten(-1, (self.merge * self.merge, -1))).flatten(-2)
        return merger.mlp(x)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def vision_hooks(self, sink: dict[str, torch.Tensor], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the last vision block that record per merged token into `sink` (see `merged_vision_hooks`)."""
        return merged_vision_hooks(self.model.model.visual, self.merge, sink)

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """What `vision_hooks` recorded: per image, in layout order (one image per batch row)."""
        return dict(sink)


# ---- shared by the Qwen-VL adapters (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): merged grids, received attention ------

def merged_layout(input_ids: torch.Tensor, image_token_id: int, merge: int, call: dict[str, Any]) -> Layout:
    """The layout of a Qwen-VL call: positions of the image placeholder tokens and one `t·h/merge × w/merge` grid
    per image.

    The grids come from `image_grid_thw` in a forward; `generate()` encodes the images before prefill and passes
    no `image_grid_thw`, so there they are read from the M-RoPE rows of its `(4, B, L)` position ids (an image's
    tokens span h and w positions start … start + rows − 1 and … + cols − 1).

    Raises:
        ValueError: for no image tokens, rows with different layouts, or a call carrying neither source.
    """
    positions = image_positions(input_ids, image_token_id)
    runs = _runs(positions[0])
    if any(not torch.equal(_runs(p), runs) for p in positions[1:]):
        raise ValueError(
            "every batch row must hold the same image layout (images of the same sizes, in the same order)")
    thw = call.get("image_grid_thw")
    if thw is not None:
        per_row = len(thw) // input_ids.shape[0]
        if per_row * input_ids.shape[0] != len(thw) or per_row != len(runs):
            raise ValueError(f"{len(thw)} images in image_grid_thw for {input_ids.shape[0]} rows of "
                             f"{len(runs)} image spans each")
        grids = [(int(t * h) // merge, int(w) // merge) for t, h, w in thw.tolist()]
        if len(set(map(tuple, _chunks(grids, per_row)))) != 1:
            raise ValueError(f"every batch row must hold the same image layout; grids per image {grids}")
        grids = grids[:per_row]
    else:
        grids = _grids_from_positions(call.get("position_ids"), positions[0], runs)
    if [r * c for r, c in grids] != runs.tolist():
        raise ValueError(f"image spans of {runs.tolist()} tokens do not match the grids {grids}")
    return Layout(grids=tuple(grids), positions=positions)


def _grids_from_positions(position_ids: torch.Tensor | None, positions: torch.Tensor,
                          runs: torch.Tensor) -> list[tuple[int, int]]:
    if position_ids is None or position_ids.ndim != 3 or position_ids.shape[0] not in (3, 4):
        raise ValueError(
            "the Qwen-VL layout needs the call's image_grid_thw (forward) or its M-RoPE position_ids of shape "
            "(3 or 4, B, L) (generate); got neither"
        )
    hw = position_ids[-2:, 0].index_select(1, positions.to(position_ids.device))  # (2, n) h and w of row 0
    grids, start = [], 0
    for n in runs.tolist():
        span = hw[:, start:start + n]
        rows, cols = (span.amax(1) - span.amin(1) + 1).tolist()
        grids.append((n // cols, cols) if n % cols == 0 else (rows, cols))
        start += n
    return grids


def merged_vision_hooks(visual: torch.nn.Module, merge: int, sink: dict[str, torch.Tensor]) -> list[Any]:
    """Hooks on a Qwen-VL vision tower's last block that record, per image, into `sink`: `cls_attn` (n_img, H, N),
    the attention each merged token's patches *receive* (no [CLS] here: mean over the query patches it shares its
    attention span with, then over the merge group); `vision_keys` (n_img, N, Dv), the group's mean post-RoPE
    key; `vision_features` (n_img, N, merge²·Dv), the group's patch outputs concatenated, which the adapter's
    `project` maps to the LLM exactly as the merger does.

    Raises:
        ValueError: at record time, if the images of a call have different token counts.
    """
    state: dict[str, Any] = {}

    def on_tower(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        state["grid_thw"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        state["received"], state["keys"] = _received_attention(
            module, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"])

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        sink.update(_per_image(visual, merge, state.pop("received"), state.pop("keys"), out, state["grid_thw"]))

    return [
        visual.register_forward_pre_hook(on_tower, with_kwargs=True),
        visual.blocks[-1].register_forward_pre_hook(before, with_kwargs=True),
        visual.blocks[-1].register_forward_hook(after, with_kwargs=True),
    ]


def _per_image(visual: torch.nn.Module, merge: int, received: torch.Tensor, keys: torch.Tensor,
               features: torch.Tensor, grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pool patch records `(S, …)` over merge groups, undo Qwen2.5-VL's window order, split per image."""
    unit = merge * merge
    groups = {
        "cls_attn": received.unflatten(0, (-1, unit)).mean(1),       # (S/4, H)
        "vision_keys": keys.unflatten(0, (-1, unit)).mean(1),        # (S/4, Dk)
        "vision_features": features.reshape(-1, unit * features.shape[-1]),
    }
    if hasattr(visual, "window_size"):  # Qwen2.5-VL blocks see the groups in window order
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=merge,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        order = torch.argsort(window_index.to(received.device))
        groups = {k: v[order] for k, v in groups.items()}
    sizes = (grid_thw.prod(-1) // unit).tolist()
    if len(set(sizes)) != 1:
        raise ValueError(f"hook 'V' needs images of one size per call; token counts per image: {sizes}")
    out = {k: torch.stack(v.split(sizes)) for k, v in groups.items()}
    out["cls_attn"] = out["cls_attn"].transpose(1, 2)              # (n_img, H, N)
    return out


class ImageOnlyProcessor:
    """Mixin for a Qwen-VL processor used for images only: its video processor needs torchvision, which does not
    load beside the CPU build of torch, so it may be None. Saves the tokenizer and image processor only."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        return None if argument is None else super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> list[str]:
        """Save the tokenizer and the image processor (`load_processor` reads them back)."""
        files = list(self.tokenizer.save_pretrained(save_directory))
        files += list(self.image_processor.save_pretrained(save_directory) or [])
        return files


class OfflineQwen2VLProcessor(ImageOnlyProcessor, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only (no torchvision needed; see `ImageOnlyProcessor`)."""


def load_processor(path: str, processor_class: type = OfflineQwen2VLProcessor) -> Any:
    """An image-only Qwen-VL processor from a checkpoint folder or hub id (no torchvision needed).

    Args:
        path: the checkpoint folder or hub id.
        processor_class: `OfflineQwen2VLProcessor` (Qwen2-VL, Qwen2.5-VL) or `OfflineQwen3VLProcessor`.
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    return processor_class(image_processor=Qwen2VLImageProcessorPil.from_pretrained(path), tokenizer=tokenizer,
                           video_processor=None, chat_template=getattr(tokenizer, "chat_template", None))


def _received_attention(block: torch.nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor,
                        position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(S, H)` mean attention each patch receives within its attention span, and `(S, H·hd)` its keys.

    Recomputes the block's own softmax(q·kᵀ·scale) span by span (an image, or a window), in query chunks.
    """
    attn = block.attn
    s = hidden.shape[0]
    q, k, _ = attn.qkv(block.norm1(hidden)).reshape(s, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k = q.float().transpose(0, 1), k.float().transpose(0, 1)                # (H, S, hd)
    received = torch.empty(attn.num_heads, s, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        total = torch.zeros(attn.num_heads, b - a, device=hidden.device)
        for c in range(a, b, _QUERY_CHUNK):
            probs = (q[:, c:min(b, c + _QUERY_CHUNK)] @ k[:, a:b].transpose(1, 2) * attn.scaling).softmax(-1)
            total += probs.sum(1)
        received[:, a:b] = total / (b - a)
    return received.T, k.transpose(0, 1).reshape(s, -1)


def _runs(positions: torch.Tensor) -> torch.Tensor:
    """Lengths of the runs of consecutive positions (one run per image)."""
    breaks = torch.nonzero(positions[1:] - positions[:-1] != 1)[:, 0] + 1
    edges = torch.cat([breaks.new_zeros(1), breaks, breaks.new_full((1,), positions.numel())])
    return edges[1:] - edges[:-1]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(size, 1))]
