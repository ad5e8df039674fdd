"""A hand-made 5x7 bitmap font for the organism's glyphs (digits and panel letters).

Glyphs are drawn scaled 2x (10x14 px), so that at patch size 8 each one covers
at least 2x2 patch tokens and stays recognisable from the patches it covers.
"""

from __future__ import annotations

import numpy as np

_ROWS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
}

DIGITS: tuple[str, ...] = tuple("0123456789")
LETTERS: tuple[str, ...] = tuple("ABCD")
CHARS: tuple[str, ...] = DIGITS + LETTERS
SCALE = 2
GLYPH_W, GLYPH_H = 5 * SCALE, 7 * SCALE


def bitmap(char: str) -> np.ndarray:
    """Return the (14, 10) boolean ink mask of `char`, scaled 2x."""
    if char not in _ROWS:
        raise ValueError(f"char must be one of {''.join(CHARS)}, got {char!r}")
    base = np.array([[c == "#" for c in row] for row in _ROWS[char]], dtype=bool)
    return np.kron(base, np.ones((SCALE, SCALE), dtype=bool))
