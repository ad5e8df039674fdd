"""Q2 figures: duplication of kept sets, DART pivots, overlap between methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour


def _variant_style(label: str) -> dict[str, Any]:
    """Colour of the base method; variants (`"dart:min"`) get their own line style and marker."""
    base, _, variant = label.partition(":")
    styles = {"": ("-", "o"), "min": (":", "s"), "random": ("-.", "^")}
    ls, marker = styles.get(variant, ((0, (5, 1)), "D"))
    return {"color": colour(base), "ls": ls, "marker": marker}


def redundancy_curves(summary: Any, methods: list[str] | None = None, title: str | None = None) -> Any:
    """Kept-set duplication and accuracy against retention, one line per method, side by side.

    Args:
        summary: `tpx.analysis.redundancy.summarize_redundancy` table (method, retention, duplication[_min/_max],
            accuracy[_min/_max], seeds); the "unpruned" row is drawn as a dashed grey level.
        methods: labels to draw, in order (default: every pruned one); variants like "dart:min" share the
            base method's colour with another line style.
        title: figure title.

    Returns:
        The `Figure`; shaded bands span the min–max over seeds where a method ran several.
    """
    import matplotlib.pyplot as plt

    pruned = summary[summary["method"] != "unpruned"]
    methods = list(dict.fromkeys(pruned["method"])) if methods is None else methods
    base = summary[summary["method"] == "unpruned"]
    panels = [("duplication", "mean max cosine among kept tokens"), ("accuracy", "accuracy (%)")]
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
        for ax, (col, label) in zip(axes, panels, strict=True):
            for m in methods:
                rows = pruned[pruned["method"] == m].sort_values("retention")
                style = _variant_style(m)
                ax.plot(rows["retention"], rows[col], label=m, ms=5, **style)
                if (rows["seeds"] > 1).any():
                    ax.fill_between(rows["retention"], rows[f"{col}_min"], rows[f"{col}_max"],
                                    color=style["color"], alpha=0.2, lw=0)
            if len(base):
                ax.axhline(float(base[col].iloc[0]), color=colour("unpruned"), ls="--", label="unpruned (all tokens)")
            ax.set_xlabel("retention (share of visual tokens kept)")
            ax.set_ylabel(label)
        axes[0].set_title("how duplicated is the kept set? (lower = more diverse)")
        axes[1].set_title("answer accuracy")
        axes[1].legend(loc="lower right", fontsize=8, framealpha=0.8)
        if title:
            fig.suptitle(title)
    return fig


def overlap_heatmap(matrix: Any, title: str | None = None, chance: float | None = None,
                    label: str = "Jaccard overlap of kept sets") -> Any:
    """Agreement between methods' kept sets as an annotated matrix on a fixed [0, 1] scale.

    Args:
        matrix: square DataFrame from `tpx.analysis.redundancy.overlap_matrix`.
        title: figure title.
        chance: overlap expected from two independent random sets (`tpx.analysis.redundancy.chance_overlap`), marked
            on the colour bar.
        label: colour-bar label (the overlap measure).

    Returns:
        The `Figure`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    values = np.asarray(matrix, dtype=float)
    n = len(values)
    with _style():
        fig, ax = plt.subplots(figsize=(1.0 * n + 2.6, 0.85 * n + 1.4), constrained_layout=True)
        im = ax.imshow(values, cmap="viridis", norm=Normalize(vmin=0.0, vmax=1.0))
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if values[i, j] > 0.6 else "white")
        ax.set_xticks(range(n), list(matrix.columns), rotation=35, ha="right")
        ax.set_yticks(range(n), list(matrix.index))
        if chance is not None:
            label = f"{label}\n(white line: chance, {chance:.2f})"
        bar = fig.colorbar(im, ax=ax, shrink=0.85, label=label)
        if chance is not None:
            bar.ax.axhline(chance, color="white", lw=2)
        if title:
            ax.set_title(title)
    return fig
