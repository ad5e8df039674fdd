"""Q1 figures: position bias, attention against distance, the method x task table."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour, _fraction


def attention_distance(rope: tuple[Any, Any], measured: tuple[Any, Any], visual: tuple[float, float] | None = None,
                       title: str | None = None) -> Any:
    """Why FastV keeps late tokens: RoPE's decay with distance (left) and the measured attention (right).

    Args:
        rope: `(distances, bound)` from `tpx.analysis.spatial.rope_decay` with the model's own frequencies.
        measured: `(bin_centres, mean_attention)` from `tpx.analysis.spatial.attention_by_distance` on FastV's scores.
        visual: `(min, max)` distance of the visual tokens to the query, shaded on the left panel.
        title: figure title.

    Returns:
        The `Figure` (two panels; x axes in positions, the query's own position at 0).
    """
    import matplotlib.pyplot as plt

    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        axes[0].plot(np.asarray(rope[0]), np.asarray(rope[1]), color="k")
        if visual is not None:
            axes[0].axvspan(*visual, color=colour("fastv"), alpha=0.12, label="visual tokens")
            axes[0].legend(fontsize=8)
        axes[0].set(xlabel="query–key distance (positions)", ylabel="RoPE logit bound (1 at distance 0)",
                    title="RoPE long-term decay (RoFormer §3.4.3)")
        axes[1].plot(np.asarray(measured[0]), np.asarray(measured[1]), "-o", ms=4, color=colour("fastv"))
        axes[1].set(xlabel="visual token's distance to the last token (positions)",
                    ylabel="mean attention from the last token", title="measured: FastV's scores")
        axes[1].invert_xaxis()  # left to right in sequence order: first visual token (top-left) first
        if title:
            fig.suptitle(title)
    return fig


def method_table(table: Any, columns: list[str] | None = None, title: str | None = None, digits: int = 1) -> Any:
    """The method × task table (`tpx.analysis.tables.method_table`, relative scores) as an annotated heatmap.

    Colour is the relative score minus 100 (diverging, centred on the unpruned model, one symmetric scale);
    cells read "mean ± std over seeds"; retentions are separated by lines.

    Args:
        table: `tpx.analysis.tables.method_table(..., relative=True)`. columns: those drawn (default all, "Avg" last).
        title: figure title. digits: decimals of the annotations.

    Returns:
        The `Figure`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    mean, std = table["mean"], table["std"]
    columns = list(mean.columns) if columns is None else list(columns)
    diff = mean[columns].to_numpy(dtype=float) - 100
    v = max(5.0, float(np.nanmax(np.abs(diff))))
    labels = [m if m == "unpruned" else f"{m} @ {_fraction(r)}" for r, m in mean.index]
    with _style():
        fig, ax = plt.subplots(figsize=(1.05 * len(columns) + 2.6, 0.34 * len(labels) + 1.4), constrained_layout=True)
        im = ax.imshow(diff, cmap="RdBu", norm=Normalize(-v, v), aspect="auto")
        for (i, j), d in np.ndenumerate(diff):
            s = std[columns].iloc[i, j]
            text = "–" if np.isnan(d) else f"{d + 100:.{digits}f}" + ("" if np.isnan(s) else f"±{s:.{digits}f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="white" if abs(np.nan_to_num(d)) > 0.6 * v else "black")
        retentions = [r for r, _ in mean.index]
        for i in range(1, len(retentions)):
            if retentions[i] != retentions[i - 1]:
                ax.axhline(i - 0.5, color="k", lw=0.8)
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(labels)), labels)
        ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
        fig.colorbar(im, ax=ax, shrink=0.8, label="relative score − 100 (points)")
        if title:
            ax.set_title(title)
    return fig


def relative_bars(table: Any, columns: list[str], title: str | None = None) -> Any:
    """Relative scores of each method by retention, one panel per column (e.g. "Avg" and a grounding task).

    Bars are mean over seeds with ± std error bars (seeded methods); the unpruned model is the dashed 100 %.

    Args:
        table: `tpx.analysis.tables.method_table(..., relative=True)`. columns: the columns drawn, one panel each.
        title: figure title.

    Returns:
        The `Figure`, panels sharing the y axis.
    """
    import matplotlib.pyplot as plt

    mean, std = table["mean"], table["std"]
    pruned = [(r, m) for r, m in mean.index if m != "unpruned"]
    retentions = list(dict.fromkeys(r for r, _ in pruned))
    methods = list(dict.fromkeys(m for _, m in pruned))
    width = 0.8 / max(len(methods), 1)
    with _style():
        fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns), 3.8), sharey=True, squeeze=False,
                                 constrained_layout=True)
        for ax, col in zip(axes[0], columns, strict=True):
            for k, m in enumerate(methods):
                x = [i + (k - (len(methods) - 1) / 2) * width for i, r in enumerate(retentions) if (r, m) in mean.index]
                keys = [(r, m) for r in retentions if (r, m) in mean.index]
                y, err = mean.loc[keys, col].to_numpy(dtype=float), std.loc[keys, col].to_numpy(dtype=float)
                ax.bar(x, y, width, color=colour(m), label=m if col == columns[0] else None)
                seeded = ~np.isnan(err)  # error bars only where there are several seeds
                ax.errorbar(np.asarray(x)[seeded], y[seeded], err[seeded], fmt="none", ecolor="k", capsize=2, lw=1)
            ax.axhline(100, color=colour("unpruned"), ls="--", lw=1, label="unpruned" if col == columns[0] else None)
            ax.set_xticks(range(len(retentions)), [_fraction(r) for r in retentions])
            ax.set(xlabel="retention (kept share of visual tokens)", title=col)
        axes[0, 0].set_ylabel("relative score (% of unpruned)")
        fig.legend(loc="outside right upper", fontsize=8, title="± std over seeds", title_fontsize=7)
        if title:
            fig.suptitle(title)
    return fig
