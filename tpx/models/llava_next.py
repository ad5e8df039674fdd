"""Adapter for LLaVA-NeXT / LLaVA-1.6 (`LlavaNextForConditionalGeneration`: CLIP tower, AnyRes, Llama/Mistral).

AnyRes feeds each image to the LLM as a low-resolution base view (one `side × side` crop) followed by the
high-resolution crops stitched into one canvas, unpadded to the image's aspect ratio, with an
`image_newline` embedding after every canvas row. All of them share the `<image>` placeholder id in
`input_ids`. The adapter's layout lists the base grid and the unpadded canvas grid as separate segments
and puts the newline tokens among the never-pruned positions (`Layout.fixed`): they carry the 2-D structure
for the LLM. The decoder is the same `LlamaDecoder` LLaVA holds, and the CLIP records come from the same
hooks; only the layout and the stitching of per-crop records differ.

Reference: Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024 (AnyRes,
`spatial_unpad` merge).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from tpx.layout import Layout
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
        vc = model.config.vision_config
        self.side = int(vc.image_size) // int(vc.patch_size)

    def nominal_layout(self) -> None:
        """None: the AnyRes grid depends on each image's size."""
        return None

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pre-projector vision features `(B, N, Dv)` into the LLM's embedding space."""
        return self.model.model.multi_modal_projector(vision_features)

    # ---- layout -------------------------------------------------------------------------------------
    def image_grids(self, **call: Any) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
        """`(rows, cols, canvases)` of every image's unpadded crop grid, in prompt order.

        Read from `image_sizes` when the call carries them (a plain forward), otherwise from the packed
        features in `mm_encoder_outputs` (what `generate()` passes at prefill, after encoding the images
        itself): there, the newline tokens are the rows equal to `image_newline`. `canvases` lists the crop
        canvases `(rows, cols)` in patches the grid can come from (one when `image_sizes` are known); the
        layout needs none of them, the vision records need the one that matches the crops the tower saw.
        `rows == 0` means the image has no crops (base view and one newline only).

        Raises:
            ValueError: if the call carries neither, or the packed features do not have the AnyRes shape.
        """
        sizes = call.get("image_sizes")
        if sizes is not None:
            return [self._grid_from_size(size) for size in sizes]
        encoded = (call.get("mm_encoder_outputs") or {}).get("image")
        if encoded is None:
            raise ValueError(
                "the LLaVA-NeXT layout needs the call's image_sizes (forward with pixel_values) or its "
                "mm_encoder_outputs (generate); got neither"
            )
        return [self._grid_from_features(f) for f in encoded.pooler_output]

    def _grid_from_size(self, image_size: torch.Tensor) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        cfg = self.model.config
        crops_h, crops_w = get_anyres_image_grid_shape(
            image_size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        canvas = (crops_h * self.side, crops_w * self.side)
        rows, cols = unpad_image(torch.empty(0, *canvas), image_size).shape[1:]  # the model's own unpad rule
        return int(rows), int(cols), (canvas,)

    def _grid_from_features(self, features: torch.Tensor) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        base = self.side * self.side
        newline = self.model.model.image_newline.to(features.device, features.dtype)
        is_newline = (features[base:] == newline).all(-1)
        n_crop, rows = is_newline.numel(), int(is_newline.sum())
        if n_crop == 1 and rows == 1:
            return 0, 0, ()
        cols = n_crop // rows - 1 if rows else 0
        expected = torch.zeros(rows, cols + 1, dtype=torch.bool, device=features.device)
        expected[:, -1] = True
        if rows == 0 or n_crop != rows * (cols + 1) or not torch.equal(is_newline, expected.flatten()):
            raise ValueError(
                f"cannot read the AnyRes layout from {features.shape[0]} packed image features: expected a "
                f"{self.side}x{self.side} base view then rows of crop tokens each ending with image_newline"
            )
        return rows, cols, self._canvases(rows, cols)

    def _canvases(self, rows: int, cols: int) -> tuple[tuple[int, int], ...]:
        """Crop canvases (in patches) an unpadded `rows × cols` grid can come from: it fills one side and is
        centred on the other."""
        cfg = self.model.config
        found = set()
        for h, w in cfg.image_grid_pinpoints:
            ch, cw = h // cfg.vision_config.image_size * self.side, w // cfg.vision_config.image_size * self.side
            fills_rows = rows == ch and cols <= cw and (cw - cols) % 2 == 0
            fills_cols = cols == cw and rows <= ch and (ch - rows) % 2 == 0
            if fills_rows or fills_cols:
                found.add((ch, cw))
        return tuple(sorted(found))

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Prunable positions and grids: per image, the base `side × side` grid, then the unpadded crop grid
        (`rows × cols`, without the newline column). Newline tokens are the layout's `fixed` positions.

        Raises:
            ValueError: if rows hold different image layouts, or the placeholders do not match the images.
        """
        images = self.image_grids(**call)
        every = image_positions(input_ids, self.image_token_id)  # (B, M) every placeholder, newlines included
        per_row, m = len(images) // input_ids.shape[0], every.shape[1]
        row_layouts = {tuple(g[:2] for g in c) for c in _chunks(images, per_row)}
        if per_row * input_ids.shape[0] != len(images) or len(row_layouts) != 1:
            raise ValueError(
                "every batch row must hold the same image layout (same number of images, each with the same "
                f"AnyRes grid); got {len(images)} images {[g[:2] for g in images]} for {input_ids.shape[0]} rows"
            )
        offsets, grids, start = [], [], 0
        base = self.side * self.side
        for rows, cols, _ in images[:per_row]:
            offsets.append(torch.arange(start, start + base))
            grids.append((self.side, self.side))
            start += base
            if rows == 0:
                start += 1
                continue
            cells = torch.arange(rows * (cols + 1)).view(rows, cols + 1)[:, :cols].flatten()
            offsets.append(start + cells)
            grids.append((rows, cols))
            start += rows * (cols + 1)
        if start != m:
            raise ValueError(f"the prompt holds {m} image tokens per row but its images need {start} "
                             "(base views, unpadded crops and newlines)")
        index = torch.cat(offsets).to(every.device)
        prunable = torch.zeros(m, dtype=torch.bool, device=every.device).index_fill(0, index, True)
        return Layout(grids=tuple(grids), positions=every[:, index], fixed=every[:, ~prunable],
                      source=(images, per_row))

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
        return clip_feature_hooks(self.model, sink.update, names)

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """Per-crop records stitched per batch row in layout order: `cls_attn` (B, H, N), `vision_keys` and
        `vision_features` (B, N, Dv).

        Each crop's [CLS] attends over its own patches (softmax per crop, as in the tower); the crops of the
        canvas are stitched and unpadded exactly as the model packs its features.
        """
        images, per_row = layout.source
        per_crop = {k: sink[k].transpose(1, 2) if k in _HEADS_FIRST else sink[k] for k in CLIP_RECORDS if k in sink}
        canvases = self._match_canvases(images, per_row, per_crop["vision_features"].shape[0])
        out: dict[str, list[torch.Tensor]] = {k: [] for k in per_crop}
        crop = 0
        for (rows, cols, _), (canvas_r, canvas_c) in zip(images, canvases, strict=True):
            n_crops = (canvas_r // self.side) * (canvas_c // self.side)
            for name, x in per_crop.items():
                parts = [x[crop]]
                if rows:
                    tiles = x[crop + 1: crop + 1 + n_crops]                   # (n_crops, side², C)
                    grid = tiles.view(canvas_r // self.side, canvas_c // self.side, self.side, self.side, -1)
                    grid = grid.permute(4, 0, 2, 1, 3).reshape(-1, canvas_r, canvas_c)
                    r0, c0 = (canvas_r - rows) // 2, (canvas_c - cols) // 2  # unpad_image's centred crop
                    parts.append(grid[:, r0:r0 + rows, c0:c0 + cols].flatten(1).T)
                out[name].append(torch.cat(parts))
            crop += 1 + n_crops
        records = {}
        for name, parts in out.items():
            rows_of_batch = torch.stack([torch.cat(c) for c in _chunks(parts, per_row)])  # images of a row in order
            records[name] = rows_of_batch.transpose(1, 2) if name in _HEADS_FIRST else rows_of_batch
        return records

    def _match_canvases(self, images: list, per_row: int, n_seen: int) -> list[tuple[int, int]]:
        """One canvas per image such that the crops add up to the `n_seen` crops the tower encoded."""
        options = [c or ((0, 0),) for _, _, c in images[:per_row]]
        fits = [combo for combo in itertools.product(*options)
                if n_seen == len(images) // per_row * sum(1 + (h // self.side) * (w // self.side) for h, w in combo)]
        if len(fits) != 1:
            raise ValueError(f"cannot match the {n_seen} crops the vision tower saw to the AnyRes grids "
                             f"{[g[:2] for g in images]}; pass image_sizes")
        return list(fits[0]) * (len(images) // per_row)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(size, 1))]
