"""Data for tpx: real pictures shipped inside installed packages (no download).

The synthetic visual-QA suite of the model organism and the real benchmark loaders (POPE, GQA, MME, ...)
join this module in later issues; nothing here downloads at import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sample_picture"]


def sample_picture() -> Any:
    """A real photograph (Grace Hopper, 512×600) shipped with matplotlib, as an RGB PIL image."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")
