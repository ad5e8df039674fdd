"""Q4 figures: the importance / redundancy trade-off over alpha."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour, kept_tokens


def alpha_heatmap(tables: dict[str, Any], best: dict[str, Any] | None = None, title: str | None = None,
                  mark: str = "near") -> Any:
    """Task × α heatmaps of the study's Table 6, one panel per uniqueness reading, on one colour scale.

    Colour is the score minus the task's unpruned score (diverging, centred on 0, shared by the panels);
    each cell is annotated with the score itself and each task's best α is outlined.

    Args:
        tables: reading → `tpx.analysis.sweep.alpha_table` (tasks × ["unpruned", α...]).
        best: reading → `tpx.analysis.sweep.task_sets` of that reading (indexed by task); the α values in its
            `mark` column are outlined (default "near": the α not significantly below the task's best).
        title: figure title.

    Returns:
        The `Figure`: one panel per reading and one colour bar.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    diffs = {u: t.drop(columns="unpruned").sub(t["unpruned"], axis=0) for u, t in tables.items()}
    v = max(1.0, *(float(np.nanmax(np.abs(d.to_numpy()))) for d in diffs.values()))
    norm = Normalize(vmin=-v, vmax=v)
    first = next(iter(tables.values()))
    with _style():
        fig, axes = plt.subplots(1, len(tables), figsize=(0.55 * first.shape[1] * len(tables) + 2.5,
                                 0.42 * len(first) + 1.6), squeeze=False, constrained_layout=True)
        for ax, (u, t) in zip(axes[0], tables.items(), strict=True):
            d, alphas = diffs[u], list(diffs[u].columns)
            im = ax.imshow(d.to_numpy(dtype=float), cmap="RdBu", norm=norm, aspect="auto")
            for (i, j), s in np.ndenumerate(t.drop(columns="unpruned").to_numpy(dtype=float)):
                dark = abs(d.iat[i, j]) > 0.6 * v  # white text on the saturated ends of the map
                ax.text(j, i, f"{s:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
            for i, task in enumerate(t.index if best is not None else []):
                for a in best[u].loc[task, mark]:
                    ax.add_patch(Rectangle((alphas.index(a) - 0.5, i - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
            ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
            ax.set_yticks(range(len(t)), [f"{task} ({s:.0f})" for task, s in t["unpruned"].items()])
            ax.set_title(f"uniqueness {u!r}")
        axes[0, 0].set_ylabel("task (unpruned score)")
        fig.supxlabel("α, the importance weight (0 = uniqueness only, 1 = FastV)")
        fig.colorbar(im, ax=axes, shrink=0.8, label="score − unpruned (points)\nboxed: not below the task's best α")
        if title:
            fig.suptitle(title)
    return fig


def alpha_curves(curves: dict[str, Any], title: str | None = None, ylabel: str = "mean relative score (%)") -> Any:
    """One line per uniqueness reading over α, the unpruned 100 % dashed grey; CIs as bands when given.

    Args:
        curves: reading → Series indexed by α (e.g. `tpx.analysis.sweep.mean_relative`), or a DataFrame indexed
            by α with columns estimate, ci_low, ci_high (e.g. from `tpx.analysis.position.estimate_table`).
        title: axes title. ylabel: y-axis label (with its unit).

    Returns:
        The `Figure`.
    """
    import matplotlib.pyplot as plt

    with _style():
        fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
        for (u, s), style in zip(curves.items(), ["-o", "--s", ":^"], strict=False):
            if hasattr(s, "columns"):
                ax.fill_between(s.index, s["ci_low"], s["ci_high"], color=colour("alpha"), alpha=0.15, lw=0)
                s = s["estimate"]
            ax.plot(s.index, s.to_numpy(), style, color=colour("alpha"), ms=4, label=f"α mix, uniqueness {u!r}")
        ax.axhline(100, color=colour("unpruned"), ls="--", lw=1, label="unpruned")
        first = next(iter(curves.values()))
        first = first["estimate"] if hasattr(first, "columns") else first
        fastv = first.get(1.0, np.nan)  # α = 1 is FastV under every reading
        ax.plot([1.0], [fastv], "o", color=colour("fastv"), label="α = 1: FastV")
        ax.set_xlabel("α (importance weight)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title)
    return fig


def alpha_kept(image: np.ndarray, entry: Any, caption: str | None = None) -> Any:
    """`kept_tokens` of an `alpha` run, titled with its α and uniqueness reading; the right panel is the FastV
    importance that the α mix weighs (Wen et al. 2025, Eq. 6), so kept tokens off its peaks are uniqueness picks.

    Args:
        image: `(H, W, 3)` array in [0, 1]. entry: the run's `TraceEntry`. caption: appended to the title.
    """
    p = entry.params
    title = f"α = {p['alpha']:g}, uniqueness {p['uniqueness']!r}, retention {p['retention']:.3g}, layer {entry.layer}"
    fig = kept_tokens(image, entry, title=f"{title}\n{caption}" if caption else title)
    fig.axes[1].set_title("FastV importance (white: kept)")
    fig.set_size_inches(9, 5.2 * max(1, len(entry.grids)))  # room for the two-line title and the axis label
    return fig
