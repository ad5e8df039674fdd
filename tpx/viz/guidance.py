"""Q3 figures: language guidance on the panel (haystack) task."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour


def score_panels(table: Any, x: str, panel: str, *, methods: list[str] | None = None, panels: list[Any] | None = None,
                 value: str = "score", xlabel: str | None = None, ylabel: str = "accuracy (%)",
                 title: str | None = None, cols: int = 3) -> Any:
    """Small multiples: one axis per value of `panel`, `value` over `x` (±1 s.e.), one line per method.

    Rows of method "unpruned" are the dashed grey baseline: a line over `x` where they vary with it (haystack
    size), a horizontal line where there is one of them (retention 1.0 on a retention axis). Lines are dodged
    slightly along `x` so that error bars stay apart.

    Args:
        table: columns method, `x`, `panel`, `value`, se (e.g. `tpx.analysis.guidance.score_table`).
        x, panel: column names. methods, panels: subsets to draw, in order (default: all).
        value: the plotted column. xlabel, ylabel, title: labels (units included).
        cols: axes per row.

    Returns:
        The `Figure`, with one legend.
    """
    import matplotlib.pyplot as plt

    base, rest = table[table["method"] == "unpruned"], table[table["method"] != "unpruned"]
    methods = [m for m in (methods or dict.fromkeys(rest["method"])) if m != "unpruned"]
    panels = list(dict.fromkeys(rest[panel])) if panels is None else list(panels)
    xs = sorted(set(rest[x]))
    dodge = 0.015 * ((xs[-1] - xs[0]) or 1.0) if xs else 0.0
    ncols = max(1, min(cols, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    with _style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 1.8, 3.0 * nrows + 0.5), squeeze=False,
                                 sharey=True, constrained_layout=True)
        for ax, v in zip(axes.flat, panels):
            b = (base[base[panel] == v] if v in set(base[panel]) else base).sort_values(x)
            if len(b) == 1:
                ax.axhline(b[value].iloc[0], color=colour("unpruned"), ls="--", lw=1.2, label="unpruned")
            elif len(b):
                ax.plot(b[x], b[value], "--", color=colour("unpruned"), lw=1.2, label="unpruned")
            for i, m in enumerate(methods):
                r = rest[(rest["method"] == m) & (rest[panel] == v)].sort_values(x)
                ax.errorbar(r[x] + (i - (len(methods) - 1) / 2) * dodge, r[value], yerr=r["se"], marker="o", ms=4,
                            capsize=2, lw=1.3, color=colour(m), label=m)
            ax.set_title(f"{panel} {v:.3g}" if isinstance(v, float) else str(v))
            ax.set_xticks(xs, [f"{t:.3g}" for t in xs])
            ax.set_xlabel(xlabel or x)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_axis_off()
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel)
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside right upper", fontsize=9)
        if title:
            fig.suptitle(title)
    return fig


def panel_keep_maps(maps: dict[tuple[str, float], dict[str, Any]], masks: dict[str, Any], shares: Any = None, *,
                    retention: float, methods: list[str] | None = None, title: str | None = None,
                    normalised: bool = False) -> Any:
    """Where kept tokens fall by the panel the question names: rows = named panel, columns = methods.

    Keep frequencies share one [0, 1] colour scale and one colour bar; the named panel is outlined, and each
    title gives the share of kept tokens inside it (a position-blind method keeps the panel's area share).

    Args:
        maps: {(method, retention): {panel: (rows, cols) keep frequency}} (`tpx.analysis.guidance.panel_maps`).
        masks: {panel: (rows, cols) bool}: the grid cells of each panel (`tpx.analysis.guidance.panel_mask`).
        shares: optional table with columns method, retention, panel, share (%) (`score_table` of
            `tpx.analysis.guidance.panel_frame` by those three).
        retention: which retention to draw. methods: which methods, in order (default: all at that retention).
        title: figure title. normalised: the maps are on a common normalised grid
            (`tpx.analysis.spatial.map_grid`), which the default title then says.

    Returns:
        The `Figure`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    methods = [m for m, r in maps if r == retention] if methods is None else list(methods)
    panels = sorted(masks)
    lookup = {} if shares is None else shares.set_index(["method", "retention", "panel"])["share"].to_dict()
    norm, im = Normalize(vmin=0.0, vmax=1.0), None
    with _style():
        fig, axes = plt.subplots(len(panels), len(methods), figsize=(2.2 * len(methods) + 1.4, 2.2 * len(panels) + 0.8),
                                 squeeze=False, constrained_layout=True)
        for (i, p), (j, m) in ((ip, jm) for ip in enumerate(panels) for jm in enumerate(methods)):
            ax, freq = axes[i, j], maps.get((m, retention), {}).get(p)
            ax.set_xticks([])
            ax.set_yticks([])
            if freq is None:
                ax.set_title(f"{m}: no samples" if i == 0 else "no samples", fontsize=9)
                continue
            im = ax.imshow(freq.detach().float().cpu().numpy(), cmap="magma", norm=norm)
            rows, cols = np.nonzero(np.asarray(masks[p]))
            if rows.size:  # a panel holding no cell centre of a coarse grid has no outline
                ax.add_patch(Rectangle((cols.min() - 0.5, rows.min() - 0.5), np.ptp(cols) + 1, np.ptp(rows) + 1,
                                       fill=False, ec="#00e5ff", lw=1.6))
            share = lookup.get((m, retention, p))
            label = "" if share is None else f"{share:.0f}% in panel"
            ax.set_title(f"{m}\n{label}" if i == 0 else label, fontsize=9)
        for i, p in enumerate(panels):
            axes[i, 0].set_ylabel(f"question names {p}")
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.6, label="share of samples keeping the cell")
        chance = 100 * float(np.asarray(masks[panels[0]]).mean())
        grid = np.asarray(masks[panels[0]]).shape
        where = f"\non a common normalised {grid[0]}×{grid[1]} grid (every image grid area-weighted onto it)" \
            if normalised else ""
        fig.suptitle(title or f"kept tokens by named panel (outlined), retention {retention:.3g}; "
                              f"position-blind: {chance:.0f}% in panel{where}")
    return fig
