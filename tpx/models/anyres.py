"""AnyRes geometry, held by the LLaVA-NeXT and LLaVA-OneVision adapters (shared by holding, not by inheriting).

An AnyRes image reaches the LLM as a low-resolution base view (one `side × side` crop) followed by the
high-resolution crops of a canvas chosen from `image_grid_pinpoints`, stitched together, unpadded to the
image's aspect ratio and followed, row by row, by an `image_newline` embedding; all of them share the image
placeholder id. LLaVA-OneVision adds one step ("AnyRes-Max", `vision_aspect_ratio="anyres_max_N"`): an
unpadded canvas of more than about N crops' worth of patches is shrunk by bilinear interpolation to about
N · side² tokens. `AnyRes` answers, for one model, which grid every image has (from its size, or from the
packed features `generate()` passes), where the prunable tokens and the newlines are (`layout`), and how
per-crop vision records are stitched, unpadded and shrunk exactly as the model packs its features (`stitch`).

Reference: Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024 (AnyRes,
`spatial_unpad`); Li et al., "LLaVA-OneVision: Easy Visual Task Transfer", arXiv 2408.03326 (AnyRes-Max).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from tpx.layout import Layout
from tpx.models.base import image_positions

__all__ = ["AnyRes", "ImageSizes", "Packing", "chunks"]

Option = tuple[int, int, int, int]  # (canvas rows, canvas cols, unpadded rows, unpadded cols), in patches


class Packing(NamedTuple):
    """How one image is packed: its crop grid `rows × cols` after unpadding (and shrinking), `(0, 0)` when it
    has no crops (base view and one newline only), and the `options` (canvas and unpadded size, in patches)
    this grid can come from: one when the image size is known, possibly several when read from features."""

    rows: int
    cols: int
    options: tuple[Option, ...]


class AnyRes:
    """The AnyRes packing of one LLaVA-NeXT or LLaVA-OneVision model.

    Args:
        model: the model (`config.image_grid_pinpoints`, `config.vision_config`, `model.model.image_newline`).
        grid_shape: the family's `get_anyres_image_grid_shape` (crops per canvas side for an image size).
        unpad: the family's `unpad_image` (the centred crop back to the image's aspect ratio).
        max_crops: AnyRes-Max's N (LLaVA-OneVision), or None (LLaVA-NeXT: no shrinking).
    """

    def __init__(self, model: torch.nn.Module, grid_shape: Callable[..., Any], unpad: Callable[..., torch.Tensor],
                 max_crops: int | None = None) -> None:
        cfg = model.config
        self.model, self.grid_shape, self.unpad, self.max_crops = model, grid_shape, unpad, max_crops
        self.crop = int(cfg.vision_config.image_size)
        self.side = self.crop // int(cfg.vision_config.patch_size)
        self.pinpoints = [list(p) for p in cfg.image_grid_pinpoints]

    # ---- grids ------------------------------------------------------------------------------------------
    def shrink(self, rows: int, cols: int) -> tuple[int, int]:
        """AnyRes-Max: the grid an unpadded `rows × cols` canvas is interpolated to (unchanged for NeXT, or when
        it holds at most ~1.1² · N crops' worth of patches), by the model's own rule."""
        if self.max_crops is None:
            return rows, cols
        ratio = math.sqrt(rows * cols / (self.max_crops * self.side ** 2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def from_size(self, image_size: torch.Tensor) -> Packing:
        """The packing of an image of `image_size` (height, width), with the model's own canvas and unpad rules."""
        crops_h, crops_w = self.grid_shape(image_size, self.pinpoints, self.crop)
        canvas = (crops_h * self.side, crops_w * self.side)
        unpadded = tuple(int(x) for x in self.unpad(torch.empty(0, *canvas), image_size).shape[1:])
        return Packing(*self.shrink(*unpadded), ((*canvas, *unpadded),))

    def from_features(self, features: torch.Tensor) -> Packing:
        """The packing read from one image's packed features (what `generate()` passes at prefill): the newline
        tokens are the rows equal to `image_newline`.

        Raises:
            ValueError: if the features do not have the AnyRes shape.
        """
        base = self.side * self.side
        newline = self.model.model.image_newline.to(features.device, features.dtype)
        is_newline = (features[base:] == newline).all(-1)
        n_crop, rows = is_newline.numel(), int(is_newline.sum())
        if n_crop == 1 and rows == 1:
            return Packing(0, 0, ())
        cols = n_crop // rows - 1 if rows else 0
        expected = torch.zeros(rows, cols + 1, dtype=torch.bool, device=features.device)
        expected[:, -1] = True
        if rows == 0 or n_crop != rows * (cols + 1) or not torch.equal(is_newline, expected.flatten()):
            raise ValueError(
                f"cannot read the AnyRes layout from {features.shape[0]} packed image features: expected a "
                f"{self.side}x{self.side} base view then rows of crop tokens each ending with image_newline"
            )
        return Packing(rows, cols, self.options(rows, cols))

    def options(self, rows: int, cols: int) -> tuple[Option, ...]:
        """Every (canvas, unpadded size) a `rows × cols` grid can come from: the unpadded canvas fills one side and
        is centred on the other (so it keeps the canvas' parity there), then is shrunk (AnyRes-Max)."""
        found = set()
        for h, w in self.pinpoints:
            ch, cw = h // self.crop * self.side, w // self.crop * self.side
            unpadded = {(ch, c) for c in range(cw, 0, -2)} | {(r, cw) for r in range(ch, 0, -2)}
            found.update((ch, cw, r, c) for r, c in unpadded if self.shrink(r, c) == (rows, cols))
        return tuple(sorted(found))

    # ---- layout -------------------------------------------------------------------------------------
    def layout(self, input_ids: torch.Tensor, image_token_id: int, images: list[Packing]) -> Layout:
        """Prunable positions and grids: per image, the base `side × side` grid, then the crop grid (`rows ×
        cols`, without the newline column). Newline tokens are the layout's `fixed` positions.

        Raises:
            ValueError: if rows hold different image layouts, or the placeholders do not match the images.
        """
        every = image_positions(input_ids, image_token_id)  # (B, M) every placeholder, newlines included
        per_row, m = len(images) // input_ids.shape[0], every.shape[1]
        row_layouts = {tuple(g[:2] for g in c) for c in chunks(images, per_row)}
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

    # ---- vision records ---------------------------------------------------------------------------------
    def stitch(self, per_crop: dict[str, torch.Tensor], layout: Layout,
               image_sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-crop records `(crops, side², C)` stitched per batch row in layout order: `(B, N, C)`.

        Each image's base crop comes first; its canvas crops are stitched, unpadded (the centred crop) and, for
        AnyRes-Max, interpolated bilinearly to the token grid, exactly as the model packs its features.
        `image_sizes` (those the encoder was called with, `ImageSizes`) decide the canvas when the grids alone
        cannot: a square image unpads to the same grid from a 1×2 and a 2×1 canvas.

        Raises:
            ValueError: if the crops the tower saw cannot be matched to the layout's grids.
        """
        images, per_row = layout.source
        n_seen = next(iter(per_crop.values())).shape[0]
        options = self._from_sizes(images, image_sizes, n_seen) or self._match(images, per_row, n_seen)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in per_crop}
        crop = 0
        for (rows, cols, _), option in zip(images, options, strict=True):
            n_crops = option[0] // self.side * (option[1] // self.side) if rows else 0
            for name, x in per_crop.items():
                parts = [x[crop]]
                if rows:
                    parts.append(self._canvas(x[crop + 1: crop + 1 + n_crops], option, rows, cols))
                out[name].append(torch.cat(parts))
            crop += 1 + n_crops
        return {name: torch.stack([torch.cat(c) for c in chunks(parts, per_row)]) for name, parts in out.items()}

    def _canvas(self, tiles: torch.Tensor, option: Option, rows: int, cols: int) -> torch.Tensor:
        """`(n_crops, side², C)` crop records → `(rows · cols, C)` tokens of the packed canvas."""
        ch, cw, ur, uc = option
        s = self.side
        grid = tiles.view(ch // s, cw // s, s, s, -1).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
        r0, c0 = (ch - ur) // 2, (cw - uc) // 2                                     # unpad_image's centred crop
        grid = grid[:, r0:r0 + ur, c0:c0 + uc]
        if (ur, uc) != (rows, cols):                                                  # AnyRes-Max
            grid = torch.nn.functional.interpolate(grid[None], [rows, cols], mode="bilinear")[0]
        return grid.flatten(1).T

    def _from_sizes(self, images: list[Packing], sizes: torch.Tensor | None, n_seen: int) -> list[Option] | None:
        """Each image's canvas from the sizes the encoder saw, when they account for the layout's images (those
        with crops, in order) and the crops; otherwise None."""
        if sizes is None:
            return None
        tiled = [i for i, p in enumerate(images) if p.rows]
        if len(sizes) not in (len(images), len(tiled)):
            return None
        sized = tiled if len(sizes) == len(tiled) < len(images) else range(len(images))
        options: list[Option] = [(0, 0, 0, 0)] * len(images)
        for i, size in zip(sized, sizes, strict=True):
            packing = self.from_size(size)
            if images[i].rows and packing[:2] != images[i][:2]:
                return None
            options[i] = packing.options[0] if images[i].rows else (0, 0, 0, 0)
        crops = sum(1 + (h // self.side) * (w // self.side) for h, w, *_ in options)
        return options if crops == n_seen else None

    def _match(self, images: list[Packing], per_row: int, n_seen: int) -> list[Option]:
        """One option per image such that the crops add up to the `n_seen` crops the tower encoded."""
        options = [p.options or ((0, 0, 0, 0),) for p in images[:per_row]]
        fits = [combo for combo in itertools.product(*options)
                if n_seen == len(images) // per_row * sum(1 + (h // self.side) * (w // self.side) for h, w, *_ in combo)]
        if len(fits) != 1:
            raise ValueError(f"cannot match the {n_seen} crops the vision tower saw to the AnyRes grids "
                             f"{[g[:2] for g in images]}; pass image_sizes")
        return list(fits[0]) * (len(images) // per_row)


class ImageSizes:
    """A hook-like handle that records the `image_sizes` each `get_image_features` call of `model` receives into
    `sink["image_sizes"]`; `remove()` restores the method. `generate()` encodes the images itself and passes only
    packed features to the language model, so the vision records' stitching reads the sizes from here."""

    def __init__(self, model: torch.nn.Module, sink: dict[str, Any]) -> None:
        self.base = getattr(model, "base_model", model)
        real = self.base.get_image_features
        self.own = vars(self.base).get("get_image_features")
        signature = inspect.signature(real)

        @functools.wraps(real)  # generate reads the signature to pick the encoder's arguments
        def recorded(*args: Any, **kwargs: Any) -> Any:
            sizes = signature.bind_partial(*args, **kwargs).arguments.get("image_sizes")
            if sizes is not None:
                sink["image_sizes"] = sizes
            return real(*args, **kwargs)

        self.base.get_image_features = recorded  # an instance attribute shadows the class's method

    def remove(self) -> None:
        if self.own is None:
            vars(self.base).pop("get_image_features", None)
        else:
            self.base.get_image_features = self.own


def chunks(items: list, size: int) -> list[list]:
    """`items` in consecutive groups of `size` (the images of each batch row)."""
    return [items[i:i + size] for i in range(0, len(items), max(size, 1))]
