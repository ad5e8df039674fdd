"""Procedural scenes for the organism: objects, glyphs, clutter and panels, drawn with PIL.

A scene is fully determined by the `numpy.random.Generator` it is drawn with. Besides the
image it carries its ground truth (object boxes, glyph boxes, panel layout) and per-patch
labels (colour, shape, character, object centre) for the vision tower's auxiliary loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from tpx.organism import font

IMAGE = 96
PATCH = 8
GRID = IMAGE // PATCH
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235),
    "yellow": (230, 210, 40), "purple": (160, 60, 210), "cyan": (40, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Non-uniform frequencies, so that "popular" negatives (POPE) mean something.
COLOUR_P = np.array([0.24, 0.2, 0.17, 0.15, 0.13, 0.11])
SHAPE_P = np.array([0.34, 0.28, 0.22, 0.16])
SIZE_RANGE = (16, 26)  # px: objects span 2-4 patches across
PANEL_LETTERS = font.LETTERS
COPY_P = 0.35  # chance that a new object copies the colour or shape of an earlier one (co-occurrence)


@dataclass(frozen=True)
class Obj:
    """One drawn object; `box` is (x0, y0, x1, y1) in pixels, end-exclusive."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    panel: str | None = None

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the patch holding the object's centre."""
        cx, cy = self.centre
        return (min(int(cy // PATCH), GRID - 1), min(int(cx // PATCH), GRID - 1))

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Glyph:
    """One drawn character; `box` is its ink bounding box (x0, y0, x1, y1), end-exclusive."""

    char: str
    box: tuple[int, int, int, int]
    panel: str | None = None


@dataclass
class Scene:
    """An image with its ground truth and per-patch labels (each `(GRID, GRID)` int64).

    `filled` lists the panels that were given objects (all four unless `make_panel_scene` was asked for a
    smaller haystack); a panel question names one of them. Empty for a free scene.
    """

    image: np.ndarray
    objects: list[Obj]
    glyphs: list[Glyph]
    panels: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    filled: tuple[str, ...] = ()

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def _background(rng: np.random.Generator) -> np.ndarray:
    level = rng.integers(30, 91)
    img = np.full((IMAGE, IMAGE, 3), level, dtype=np.float32) + rng.integers(-8, 9, 3)
    if rng.random() < 0.3:  # a second uniform region: still large flat areas, more layout variety
        cut = int(rng.integers(24, 73))
        other = rng.integers(30, 91) + rng.integers(-8, 9, 3)
        if rng.random() < 0.5:
            img[cut:] = other
        else:
            img[:, cut:] = other
    if rng.random() < 0.3:
        img += rng.normal(0.0, rng.uniform(1.0, 5.0), img.shape)
    return img


def _free(occupied: np.ndarray, box: tuple[int, int, int, int], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return not occupied[max(0, y0 - gap):y1 + gap, max(0, x0 - gap):x1 + gap].any()


def _place(rng, occupied, w, h, area, gap=2, tries=60):
    ax0, ay0, ax1, ay1 = area
    for _ in range(tries):
        x0 = int(rng.integers(ax0, ax1 - w + 1))
        y0 = int(rng.integers(ay0, ay1 - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if _free(occupied, box, gap):
            occupied[y0:y0 + h, x0:x0 + w] = True
            return box
    return None


def _shape_polygon(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    s = x1 - x0
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 2, y1 - 2), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + (s - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == "cross":
        t = max(4, s // 3)
        a = x0 + (s - t) // 2
        b = y0 + (s - t) // 2
        draw.rectangle((a, y0, a + t - 1, y1 - 1), fill=fill)
        draw.rectangle((x0, b, x1 - 1, b + t - 1), fill=fill)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _pick_kind(rng, previous: list[Obj]) -> tuple[str, str]:
    colour = str(rng.choice(list(COLOURS), p=COLOUR_P))
    shape = str(rng.choice(SHAPES, p=SHAPE_P))
    if previous and rng.random() < COPY_P:
        ref = previous[int(rng.integers(len(previous)))]
        if rng.random() < 0.5:
            colour = ref.colour
        else:
            shape = ref.shape
    return colour, shape


def _draw_clutter(rng, img: np.ndarray, occupied: np.ndarray) -> None:
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 7))):
        level = int(rng.integers(105, 160))
        fill = tuple(int(v) for v in np.clip(level + rng.integers(-10, 11, 3), 0, 255))
        w, h = (int(rng.integers(3, 7)), 1) if rng.random() < 0.5 else (2, 2)
        if rng.random() < 0.5:
            w, h = h, w
        box = _place(rng, occupied, w, h, (0, 0, IMAGE, IMAGE), gap=1, tries=10)
        if box is not None:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill)
    img[...] = np.asarray(pil, dtype=np.float32)


def _patch_labels(obj_map: np.ndarray, ink_map: np.ndarray, objects, glyphs) -> dict[str, np.ndarray]:
    """Per-patch targets: the object covering >= 12 px of a patch, or a glyph whose ink box covers >= 16 px."""
    colour = np.zeros((GRID, GRID), np.int64)
    shape = np.zeros((GRID, GRID), np.int64)
    char = np.zeros((GRID, GRID), np.int64)
    centre = np.zeros((GRID, GRID), np.int64)
    best = np.zeros((GRID, GRID), np.int64)
    for k, obj in enumerate(objects, start=1):
        cover = (obj_map == k).reshape(GRID, PATCH, GRID, PATCH).sum((1, 3))
        hit = (cover >= 12) & (cover > best)
        best = np.where(hit, cover, best)
        colour[hit] = 1 + list(COLOURS).index(obj.colour)
        shape[hit] = 1 + SHAPES.index(obj.shape)
        centre[obj.cell] = 1
    for k, glyph in enumerate(glyphs, start=1):
        cover = (ink_map == k).reshape(GRID, PATCH, GRID, PATCH).sum((1, 3))
        hit = (cover >= 16) & (cover > best)
        best = np.where(hit, cover, best)
        colour[hit] = 1 + len(COLOURS)
        shape[hit] = 1 + len(SHAPES)
        char[hit] = 1 + font.CHARS.index(glyph.char)
    return {"colour": colour, "shape": shape, "char": char, "centre": centre}


N_CLASSES = {"colour": 2 + len(COLOURS), "shape": 2 + len(SHAPES), "char": 1 + len(font.CHARS), "centre": 2}


def _render(rng, img, objects, glyphs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw objects and glyphs onto the float background; return the uint8 image and patch labels."""
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    obj_l = Image.new("L", (IMAGE, IMAGE), 0)
    obj_draw = ImageDraw.Draw(obj_l)
    for k, obj in enumerate(objects, start=1):
        rgb = np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-12, 13, 3), 0, 255)
        _shape_polygon(draw, obj.shape, obj.box, tuple(int(v) for v in rgb))
        _shape_polygon(obj_draw, obj.shape, obj.box, k)
    out = np.asarray(pil).copy()
    ink_map = np.zeros((IMAGE, IMAGE), np.int64)
    for k, glyph in enumerate(glyphs, start=1):
        x0, y0, x1, y1 = glyph.box
        mask = font.bitmap(glyph.char)
        ink = int(rng.integers(225, 251))
        out[y0:y1, x0:x1][mask] = ink
        ink_map[y0:y1, x0:x1] = k
    labels = _patch_labels(np.asarray(obj_l, dtype=np.int64), ink_map, objects, glyphs)
    return out, labels


def make_scene(rng: np.random.Generator, n_objects: int | None = None, glyph: bool | None = None,
               max_objects: int = 5) -> Scene:
    """Draw a free scene: 1..max_objects objects placed uniformly, an optional digit glyph, clutter."""
    img = _background(rng)
    occupied = np.zeros((IMAGE, IMAGE), bool)
    glyphs: list[Glyph] = []
    if glyph if glyph is not None else rng.random() < 0.7:
        box = _place(rng, occupied, font.GLYPH_W, font.GLYPH_H, (0, 0, IMAGE, IMAGE), gap=3)
        glyphs.append(Glyph(str(rng.choice(font.DIGITS)), box))
    n = int(rng.integers(1, max_objects + 1)) if n_objects is None else n_objects
    objects: list[Obj] = []
    for _ in range(n):
        s = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
        box = _place(rng, occupied, s, s, (0, 0, IMAGE, IMAGE))
        if box is None:
            continue
        colour, shape = _pick_kind(rng, objects)
        objects.append(Obj(shape, colour, box))
    _draw_clutter(rng, img, occupied)
    image, labels = _render(rng, img, objects, glyphs)
    return Scene(image, objects, glyphs, {}, labels)


def check_haystack(haystack: int | None) -> None:
    """Raise ValueError unless `haystack` is None or a panel count in 1..4."""
    n = len(PANEL_LETTERS)
    if haystack is not None and (isinstance(haystack, bool) or not isinstance(haystack, int) or not 1 <= haystack <= n):
        raise ValueError(f"haystack must be None or an int in 1..{n} (panels holding objects), got {haystack!r}")


def make_panel_scene(rng: np.random.Generator, haystack: int | None = None) -> Scene:
    """Draw a 2x2 panel scene: panels lettered A-D in reading order, 1-2 objects per panel.

    Args:
        rng: the scene's random stream.
        haystack: how many panels hold objects (1-4), drawn at random; the others show only their letter on
            the background. It sizes the haystack of the Visual Haystack analogue (Wen et al. 2025, arXiv
            2502.11501, Q3). None or 4: every panel, with exactly the random draws of the training
            distribution (the same rng gives the same scene).

    Raises:
        ValueError: for a haystack outside 1..4.
    """
    check_haystack(haystack)
    img = _background(rng)
    occupied = np.zeros((IMAGE, IMAGE), bool)
    half = IMAGE // 2
    line = np.clip(rng.integers(150, 190) + rng.integers(-6, 7, 3), 0, 255)
    img[half - 1:half + 1, :] = line
    img[:, half - 1:half + 1] = line
    occupied[half - 1:half + 1, :] = True
    occupied[:, half - 1:half + 1] = True
    filled = tuple(PANEL_LETTERS)  # the default draws nothing here: the training distribution stays as it was
    if haystack is not None and haystack < len(PANEL_LETTERS):
        filled = tuple(sorted(str(v) for v in rng.choice(PANEL_LETTERS, haystack, replace=False)))
    panels, objects, glyphs = {}, [], []
    for i, letter in enumerate(PANEL_LETTERS):
        x0, y0 = (i % 2) * half, (i // 2) * half
        panels[letter] = (x0, y0, x0 + half, y0 + half)
        gbox = (x0 + 3, y0 + 3, x0 + 3 + font.GLYPH_W, y0 + 3 + font.GLYPH_H)
        occupied[gbox[1]:gbox[3], gbox[0]:gbox[2]] = True
        glyphs.append(Glyph(letter, gbox, letter))
        for _ in range(int(rng.integers(1, 3)) if letter in filled else 0):
            s = int(rng.integers(16, 21))
            box = _place(rng, occupied, s, s, (x0 + 1, y0 + 1, x0 + half - 2, y0 + half - 2))
            if box is not None:
                colour, shape = _pick_kind(rng, objects)
                objects.append(Obj(shape, colour, box, letter))
    _draw_clutter(rng, img, occupied)
    image, labels = _render(rng, img, objects, glyphs)
    return Scene(image, objects, glyphs, panels, labels, filled)
