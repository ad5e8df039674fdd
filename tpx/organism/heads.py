"""Auxiliary per-patch heads on the vision tower: the organism's stand-in for a pretrained encoder.

They read exactly the features the projector sees (the last hidden state, [CLS] dropped), predict
what each patch shows (colour, shape, glyph character, object centre, grid row / column) and are
discarded after training. They never touch attention maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpx.organism import draw

HEADS: dict[str, int] = {**draw.N_CLASSES, "row": draw.GRID, "col": draw.GRID}
GATED = ("colour", "shape", "char")  # foreground accuracy of these gates the vision stage
HEAD_WEIGHT = {"colour": 1.0, "shape": 1.0, "char": 1.0, "centre": 0.5, "row": 0.1, "col": 0.1}


class AuxHeads(nn.Module):
    """LayerNorm (no affine) followed by one linear classifier per head."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.linear = nn.Linear(dim, sum(HEADS.values()))

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, N, D) features -> {head: (B, N, classes) logits}."""
        logits = self.linear(self.norm(h))
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=-1)))


def position_labels(batch: int, device=None) -> dict[str, torch.Tensor]:
    idx = torch.arange(draw.GRID * draw.GRID, device=device)
    return {"row": (idx // draw.GRID).expand(batch, -1), "col": (idx % draw.GRID).expand(batch, -1)}


def loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], bg_weight: float) -> torch.Tensor:
    """Foreground-weighted dense CE: background patches weigh `bg_weight`, so rare glyph patches count."""
    labels = {**labels, **position_labels(next(iter(labels.values())).shape[0])}
    total = 0.0
    for name, w_head in HEAD_WEIGHT.items():
        lg, y = logits[name], labels[name]
        ce = F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="none")
        if name in ("row", "col"):
            total = total + w_head * ce.mean()
            continue
        w = torch.where(y.flatten() != 0, 1.0, bg_weight)
        total = total + w_head * (ce * w).sum() / w.sum()
    return total / sum(HEAD_WEIGHT.values())


def features(vision_tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N, D) last-layer patch features ([CLS] dropped): what the projector receives."""
    return vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
