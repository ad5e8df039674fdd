"""Shared style and the figures of one pruned forward: colours, the model's view, kept tokens, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

# one colour per method, everywhere; the unpruned baseline is dashed grey
_PALETTE = {
    "unpruned": "#7f7f7f", "random": "#1f77b4", "pooling": "#2ca02c", "fastv": "#d62728", "fastv_vis": "#ff9896",
    "window_fastv": "#ff7f0e", "alpha": "#9467bd", "sparsevlm": "#8c564b", "pdrop": "#e377c2", "dart": "#17becf",
    "divprune": "#bcbd22", "fastervlm": "#aec7e8", "visionzip": "#98df8a",
}


def colour(method: str) -> str:
    """The colour a method is drawn in across every figure."""
    return _PALETTE.get(method, "#333333")


def _style() -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt.rc_context({**sns.plotting_context("paper", font_scale=1.2), **sns.axes_style("ticks")})


def model_view(pixel_values: torch.Tensor, processor: Any, image: Any = None) -> np.ndarray:
    """The image as the vision tower sees it (resized, cropped), undoing the processor's normalisation.

    Args:
        pixel_values: `(3, H, W)` or `(..., 3, H, W)` processor output (LLaVA-NeXT: its first crop, the base view).
        processor: the model's processor (its image processor's mean and std are used).
        image: the input image (PIL), shown instead when `pixel_values` are packed patches rather than images
            (Qwen2-VL's `(patches, C·T·P·P)`).

    Returns:
        `(H, W, 3)` float array in [0, 1].

    Raises:
        ValueError: packed patches and no `image`.
    """
    if pixel_values.ndim < 3 or pixel_values.shape[-3] != 3:
        if image is None:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)} are packed patches, not images; "
                             "pass the input image")
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    ip = processor.image_processor
    x = pixel_values.detach().float().reshape(-1, *pixel_values.shape[-3:])[0].cpu()
    mean = torch.tensor(ip.image_mean)[:, None, None]
    std = torch.tensor(ip.image_std)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def kept_tokens(image: np.ndarray, entry: Any, row: int = 0, title: str | None = None) -> Any:
    """Two panels per image grid: the image with dropped patches dimmed and kept ones outlined; the score map.

    A layout of several grids (LLaVA-NeXT's base view and AnyRes crops, several images) gets one row of panels
    per grid, each drawn over the whole image (every grid of a single-image prompt spans it).

    Args:
        image: `(H, W, 3)` array in [0, 1] (see `model_view`).
        entry: a `tpx.engine.TraceEntry`.
        row: batch row to draw.
        title: figure title; default names the method, budget and layer.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    grids = list(entry.grids) or [entry.grid]
    kept_all = entry.kept[row].cpu()
    with _style():
        fig, axes = plt.subplots(len(grids), 2, figsize=(9, 4.6 * len(grids)), squeeze=False, constrained_layout=True)
        start = 0
        for s, (rows, cols) in enumerate(grids):
            mine = kept_all[(kept_all >= start) & (kept_all < start + rows * cols)] - start
            kept = torch.zeros(rows * cols, dtype=torch.bool)
            kept[mine] = True
            scores = None if entry.scores is None else entry.scores[row, start:start + rows * cols]
            name = "" if len(grids) == 1 else f"grid {s + 1} ({rows}×{cols}): "
            count = (entry.n_keep, entry.n_visual) if len(grids) == 1 else (int(kept.sum()), rows * cols)
            _segment(axes[s], image, kept.view(rows, cols).numpy(), scores, entry.method, name, count)
            start += rows * cols
        where = "input embeddings (hook E)" if entry.hook == "E" else f"before decoder layer {entry.layer}"
        fig.suptitle(title or f"{entry.method}: retention {entry.params['retention']:.3g}, {where}")
    return fig


def _segment(axes: Any, image: np.ndarray, keep_map: np.ndarray, scores: torch.Tensor | None, method: str,
             name: str, count: tuple[int, int]) -> None:
    """One grid's two panels of `kept_tokens`."""
    from matplotlib.patches import Rectangle

    rows, cols = keep_map.shape
    h, w = image.shape[:2]
    ph, pw = h / rows, w / cols
    dim = np.kron(np.where(keep_map, 1.0, 0.25), np.ones((int(ph), int(pw))))[:h, :w]
    axes[0].imshow(image[: dim.shape[0], : dim.shape[1]] * dim[..., None])
    for r, c in zip(*np.nonzero(keep_map), strict=True):
        axes[0].add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, lw=0.8, ec="#ffd400"))
    axes[0].set_title(f"{name}kept tokens ({count[0]} of {count[1]})")
    axes[0].set_axis_off()
    if scores is not None:
        im = axes[1].imshow(scores.float().cpu().view(rows, cols).numpy(), cmap="viridis")
        axes[1].figure.colorbar(im, ax=axes[1], shrink=0.8, label="score (method's units)")
        axes[1].scatter(*np.nonzero(keep_map)[::-1], s=6, c="white", marker="s", label="kept")
        axes[1].legend(loc="upper right", fontsize=8, framealpha=0.6)
        axes[1].set_title(f"{name}score per visual token")
    else:
        axes[1].imshow(keep_map, cmap="Greys", vmin=0, vmax=1)
        axes[1].set_title(f"{name}kept cells ({method} is not scored)")
    axes[1].set_xlabel("grid column")
    axes[1].set_ylabel("grid row (0 = top)")


def keep_frequency_maps(freqs: dict[str, Any], title: str | None = None, cols: int = 3) -> Any:
    """Retention-frequency heatmaps of several methods side by side on one colour scale.

    Args:
        freqs: method name → `(rows, cols)` share of samples that kept each cell (see
            `tpx.analysis.spatial.keep_frequency`), in the order to draw.
        title: figure title.
        cols: panels per row.

    Returns:
        The `Figure`: one panel per method, a shared [0, 1] colour scale and one colour bar.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    n = len(freqs)
    ncols = min(cols, n)
    nrows = -(-n // ncols)
    norm = Normalize(vmin=0.0, vmax=1.0)
    with _style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 1.0, 3.2 * nrows), squeeze=False,
                                 constrained_layout=True)
        im = None
        for ax, (name, freq) in zip(axes.flat, freqs.items(), strict=False):
            grid = freq.detach().float().cpu().numpy()
            im = ax.imshow(grid, cmap="magma", norm=norm)
            ax.set_title(name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("grid column")
            ax.set_ylabel("grid row (0 = top)")
        for ax in list(axes.flat)[n:]:
            ax.set_axis_off()
        fig.colorbar(im, ax=axes, shrink=0.8, label="share of samples keeping the cell")
        if title:
            fig.suptitle(title)
    return fig


def save(fig: Any, name: str, figures_dir: str | Path = "figures") -> list[Path]:
    """Write `fig` as `<figures_dir>/<name>.png` (200 dpi) and `.pdf` (no creation date).

    Returns:
        The two paths written.
    """
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return paths


def _fraction(r: float) -> str:
    from fractions import Fraction

    f = Fraction(r).limit_denominator(20)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - r) < 1e-6 and f.denominator > 1 else f"{r:.3g}"
