"""Where the visual tokens of a prompt are and how they lie on image grids: tpx's one `Layout` type.

An adapter reads a layout from a call's inputs (`tpx.models.layout(model, inputs)`); the plan reads its count
and grids to turn retentions into budgets; the engine reads its positions to cut the sequence; analysis code
reads geometry from it or from the trace instead of counting image placeholder ids. Visual tokens are indexed
0 … N−1 in layout order: segment after segment (an image, an AnyRes crop grid), row-major inside each.
Imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Layout"]


@dataclass(frozen=True, eq=False)
class Layout:
    """The visual tokens of a batch of prompts (every row has the same layout).

    Attributes:
        grids: `(rows, cols)` of every image segment, in visual-token order. Empty when only the count is known.
        positions: `(B, N)` ascending sequence positions of the visual tokens that may be pruned, or None for a
            layout known without inputs (the plan needs only counts and grids).
        fixed: `(B, M)` positions of image tokens that are never pruned (LLaVA-NeXT's `image_newline` after each
            crop row), or None when there are none.
        n_visual: N, the prunable visual tokens: the grids' areas summed (given explicitly only without grids).
        source: what the adapter read the layout from, for its own later use (LLaVA-NeXT: the AnyRes canvases
            the vision records are stitched from); no other module reads it.
        bidirectional: the tokens of each image segment attend to one another in both directions inside the LLM
            (Gemma 3 given `token_type_ids`), so the engine keeps that block structure among the kept tokens.
    """

    grids: tuple[tuple[int, int], ...] = ()
    positions: torch.Tensor | None = None
    fixed: torch.Tensor | None = None
    n_visual: int | None = None
    source: Any = field(default=None, repr=False)
    bidirectional: bool = False

    def __post_init__(self) -> None:
        grids = tuple((int(r), int(c)) for r, c in self.grids)
        object.__setattr__(self, "grids", grids)
        area = sum(r * c for r, c in grids)
        if self.n_visual is None:
            if not grids:
                raise ValueError("a Layout needs its grids or, without them, n_visual")
            object.__setattr__(self, "n_visual", area)
        elif grids and int(self.n_visual) != area:
            raise ValueError(f"n_visual={self.n_visual} does not match the grids {list(grids)} ({area} tokens)")
        if self.positions is not None and self.positions.shape[1] != self.n_visual:
            raise ValueError(f"{self.positions.shape[1]} visual positions for a layout of {self.n_visual} tokens")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Tokens per segment."""
        return tuple(r * c for r, c in self.grids)

    @property
    def starts(self) -> tuple[int, ...]:
        """Index of each segment's first token in the visual order."""
        out, start = [], 0
        for size in self.sizes:
            out.append(start)
            start += size
        return tuple(out)

    @property
    def grid(self) -> tuple[int, int]:
        """The grid of a single-segment layout.

        Raises:
            ValueError: for several segments (AnyRes, several images) or none.
        """
        if len(self.grids) != 1:
            raise ValueError(f"this layout has {len(self.grids)} image segments {list(self.grids)}, not one grid")
        return self.grids[0]

    def locate(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment and `(row, col)` on its segment's grid of visual token indices.

        Args:
            index: `(B, K)` indices into the N visual tokens.

        Returns:
            `(segment (B, K), grid_rc (B, K, 2))`, row 0 at the top of the image.
        """
        if not self.grids:
            raise ValueError("this layout knows only its token count, not its grids")
        dev = index.device
        starts = torch.tensor(self.starts, device=dev)
        segment = torch.searchsorted(starts, index, right=True) - 1
        local = index - starts[segment]
        cols = torch.tensor([c for _, c in self.grids], device=dev)[segment]
        return segment, torch.stack([local // cols, local % cols], dim=-1)

    def image_positions(self) -> torch.Tensor:
        """`(B, N + M)` sorted positions of every image token, the never-pruned ones included."""
        if self.positions is None:
            raise ValueError("this layout was made without inputs: it has no positions")
        if self.fixed is None or self.fixed.shape[1] == 0:
            return self.positions
        return torch.cat([self.positions, self.fixed], dim=1).sort(dim=1).values
