"""Adapter for LLaVA-NeXT / LLaVA-1.6 (`LlavaNextForConditionalGeneration`: CLIP tower, AnyRes, Llama/Mistral).

AnyRes feeds each image to the LLM as a low-resolution base view (one `side × side` crop) followed by the
high-resolution crops stitched into one canvas, unpadded to the image's aspect ratio, with an
`image_newline` embedding after every canvas row. All of them share the `<image>` placeholder id in
`input_ids`. The adapter's layout lists the base grid and the unpadded canvas grid as separate segments
and leaves the newline tokens out of the prunable positions: they carry the 2-D structure for the LLM and
are never pruned.

Reference: Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024 (AnyRes,
`spatial_unpad` merge).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from tpx.models.attention import cls_attention
from tpx.models.llava import Layout, LlavaAdapter

__all__ = ["LlavaNextAdapter"]


class LlavaNextAdapter(LlavaAdapter):
    """Engine-facing view of a Hugging Face `LlavaNextForConditionalGeneration`.

    Decoder-side questions (attention rows, keys, masks, rotary) are answered as for LLaVA; only the layout
    of the visual tokens and the vision-tower records differ.

    Args:
        model: the model; its language model must be a Llama-family decoder.

    Raises:
        TypeError: if `model` is not a `LlavaNextForConditionalGeneration`.
    """

    model_type = "llava_next"
    model_classes = (LlavaNextForConditionalGeneration,)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        vc = model.config.vision_config
        self.side = int(vc.image_size) // int(vc.patch_size)
        self._pending: dict[str, Any] = {}
        self._sink: dict[str, torch.Tensor] | None = None

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
        (`rows × cols`, without the newline column). Newline tokens are not in `positions`.

        Raises:
            ValueError: if rows hold different image layouts, or the placeholders do not match the images.
        """
        images = self.image_grids(**call)
        all_pos = LlavaAdapter.visual_positions(self, input_ids)  # (B, M) every placeholder, newlines included
        per_row, m = len(images) // input_ids.shape[0], all_pos.shape[1]
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
        index = torch.cat(offsets).to(all_pos.device)
        if self._sink is not None:
            self._pending.update(images=images, per_row=per_row)
            self._assemble()
        return Layout(all_pos[:, index], grids)

    def visual_positions(self, input_ids: torch.Tensor, **call: Any) -> torch.Tensor:
        """`(B, N)` positions of the prunable visual tokens (newlines excluded); needs the call's image inputs."""
        return self.layout(input_ids, **call).positions

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, M)` positions of every image placeholder, `image_newline` tokens included."""
        return LlavaAdapter.visual_positions(self, input_ids)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def vision_hooks(self, sink: dict[str, torch.Tensor]) -> list[Any]:
        """Hooks on the vision tower's feature layer that record, per batch row, into `sink`: `cls_attn`
        (B, H, N), `vision_keys` (B, N, Dv) and `vision_features` (B, N, Dv), in layout order.

        Each crop's [CLS] attends over its own patches (softmax per crop, as in the tower); the crops of the
        canvas are stitched and unpadded exactly as the model packs its features. The tower runs before the
        layout is known in `generate()` and after it in a forward, so whichever comes second assembles.

        Raises:
            ValueError: for a multi-layer feature selection or the "full" strategy.
        """
        cfg = self.model.config
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "default":
            raise ValueError(
                "vision-side (hook 'V') pruning needs a single vision_feature_layer and the 'default' strategy; "
                f"got {cfg.vision_feature_layer!r}, {cfg.vision_feature_select_strategy!r}"
            )
        tower = self.model.model.vision_tower
        encoder_layers = getattr(tower, "vision_model", tower).encoder.layers
        h = cfg.vision_feature_layer % (len(encoder_layers) + 1)
        if h == 0:
            raise ValueError("vision_feature_layer selects the patch embeddings: there is no attention to read")
        layer = encoder_layers[h - 1]
        self._sink = sink

        def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._pending["cls_attn"], self._pending["vision_keys"] = cls_attention(module, hidden)

        def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            self._pending["vision_features"] = out[:, 1:]
            self._assemble()

        return [
            layer.register_forward_pre_hook(before, with_kwargs=True),
            layer.register_forward_hook(after, with_kwargs=True),
        ]

    def _assemble(self) -> None:
        """Stitch per-crop records into per-row layout order once both the records and the grids exist."""
        p = self._pending
        if "images" not in p or "vision_features" not in p:
            return
        images, per_row = p.pop("images"), p.pop("per_row")
        per_crop = {k: p.pop(k) for k in ("cls_attn", "vision_keys", "vision_features")}
        per_crop["cls_attn"] = per_crop["cls_attn"].transpose(1, 2)  # (crops, N, H): token axis second
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
        for name, parts in out.items():
            rows_of_batch = torch.stack([torch.cat(c) for c in _chunks(parts, per_row)])  # images of a row in order
            self._sink[name] = rows_of_batch.transpose(1, 2) if name == "cls_attn" else rows_of_batch

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
