"""Q5c figures: what an evaluation protocol hides."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour


def vision_need(table: Any, title: str | None = None) -> Any:
    """Per task, unpruned accuracy with the image, with a blank image and without one (horizontal bars).

    Args:
        table: `tpx.analysis.protocol.vision_need` (index task; columns image, blank, no_image, need).
    """
    import matplotlib.pyplot as plt

    cols = {"image": "#333333", "blank": "#bbbbbb", "no_image": "#ffffff"}
    with _style():
        fig, ax = plt.subplots(figsize=(7, 0.55 * len(table) + 1.4), constrained_layout=True)
        for j, (col, c) in enumerate(cols.items()):
            ax.barh([i + (j - 1) * 0.27 for i in range(len(table))], table[col], 0.27, color=c, ec="k", lw=0.6,
                    label=col.replace("_", " "))
        ax.set_yticks(range(len(table)), [f"{t} ({n:+.0f})" for t, n in table.need.items()])
        ax.invert_yaxis()
        ax.set(xlabel="unpruned score (%); label: image − best control (points)", xlim=(0, 105),
               title=title or "how much each task needs the image")
        ax.legend(loc="lower right", fontsize=8)
    return fig


def task_drops(drops: Any, title: str | None = None, limit: float | None = None) -> Any:
    """Heatmap of points lost against the unpruned model, per configuration (rows) and task (columns + mean).

    A diverging map centred on 0, one scale; the mean column sits after a gap, so a task that collapses
    next to a small mean drop stands out.

    Args:
        drops: `tpx.analysis.protocol.task_drops` (index method, retention; columns tasks and "mean").
        limit: colour-scale half range in points (default: the largest absolute drop).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    values = drops.to_numpy(dtype=float)
    lim = limit or max(1.0, float(np.nanmax(np.abs(values))))
    with _style():
        fig, ax = plt.subplots(figsize=(0.9 * values.shape[1] + 3, 0.45 * len(drops) + 1.8), constrained_layout=True)
        im = ax.imshow(values, cmap="RdBu", norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            bold = "bold" if j == values.shape[1] - 1 else None
            ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=8, weight=bold,
                    color="w" if abs(v) > 0.6 * lim else "k")
        ax.axvline(values.shape[1] - 1.5, c="w", lw=4)
        ax.set_xticks(range(values.shape[1]), drops.columns)
        ax.set_yticks(range(len(drops)), [f"{m} @ {r:.2g}" for m, r in drops.index])
        fig.colorbar(im, ax=ax, shrink=0.8, label="points vs unpruned")
        ax.set_title(title or "what the mean over tasks hides")
    return fig


def seed_spread(scores: Any, retention: float, method: str = "random", title: str | None = None) -> Any:
    """One method's score per task over seeds (dots) next to the other methods and the unpruned model.

    Args:
        scores: `tpx.analysis.protocol.task_scores` (index method, retention, seed; columns tasks and "mean").
        retention: the retention drawn; method: the seeded method whose seeds are dots.
    """
    import matplotlib.pyplot as plt

    labels = list(scores.columns)
    with _style():
        fig, ax = plt.subplots(figsize=(0.95 * len(labels) + 2.5, 4.4), constrained_layout=True)
        for (m, r, _), row in scores.iterrows():
            if m == "unpruned":
                ax.hlines(row, np.arange(len(labels)) - 0.35, np.arange(len(labels)) + 0.35, colors=colour(m), ls="--",
                          label=m if "unpruned" not in ax.get_legend_handles_labels()[1] else None)
            elif abs(r - retention) < 1e-9:
                seeded = m == method
                x = np.arange(len(labels)) + (0.0 if seeded else 0.2)
                ax.scatter(x, row, s=22 if seeded else 45, c=colour(m), alpha=0.6 if seeded else 1.0,
                           marker="o" if seeded else "D", ec="k" if not seeded else None, lw=0.5,
                           label=m if m not in ax.get_legend_handles_labels()[1] else None, zorder=3)
        ax.set_xticks(range(len(labels)), labels)
        ax.set(ylabel="score (%)", title=title or f"{method} over seeds at retention {retention:.2g}")
        ax.legend(fontsize=8, loc="lower left")
    return fig
