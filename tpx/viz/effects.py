"""Figures of estimates with confidence intervals: forest plots of findings, the vision-need-by-depth curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from tpx.viz.core import _style, colour

VERDICT_COLOURS = {"agrees": "#2ca02c", "disagrees": "#d62728", "inconclusive": "#7f7f7f"}


def effects(table: pd.DataFrame, *, title: str = "", xlabel: str = "effect (points)", ax: Any = None) -> Any:
    """A forest plot: one row per estimate, its CI as a bar, a line at 0; coloured by verdict when given.

    Args:
        table: columns name, estimate, ci_low, ci_high, and optionally verdict (agrees / disagrees /
            inconclusive) or colour.
        title, xlabel: text. ax: an axis to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt

    with _style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(table) + 1.4))
        fig = ax.figure
        y = list(range(len(table)))[::-1]
        for yi, (_, r) in zip(y, table.iterrows()):
            c = r.get("colour") or VERDICT_COLOURS.get(r.get("verdict", ""), "#1f77b4")
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=c, lw=2.5, solid_capstyle="butt")
            ax.plot([r["estimate"]], [yi], "o", color=c, ms=6)
        ax.axvline(0, color="#7f7f7f", ls="--", lw=1)
        if table.empty:  # e.g. no comparison is defined on this model: say so rather than draw empty axes
            ax.text(0.5, 0.5, "no estimate on this model (the notebook says why)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_yticks(y, list(table["name"]))
        ax.set_xlabel(xlabel)
        if "verdict" in table.columns and not table.empty:
            handles = [plt.Line2D([], [], color=c, lw=2.5, label=v) for v, c in VERDICT_COLOURS.items()
                       if v in set(table["verdict"])]
            ax.legend(handles=handles, loc="best", fontsize=8, title="vs the study", title_fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
    return fig


def depth_curve(table: pd.DataFrame, *, title: str = "", ax: Any = None) -> Any:
    """Relative score (% of unpruned) against the layer K from which only n_keep random tokens remain.

    Args:
        table: from `tpx.analysis.position.depth_table` (columns K, n_keep, estimate, ci_low, ci_high,
            n_per_task, n_seeds).
    """
    import matplotlib.pyplot as plt

    with _style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        fig = ax.figure
        for i, (n_keep, g) in enumerate(table.groupby("n_keep", sort=True)):
            g = g.sort_values("K")
            ax.errorbar(g["K"] + 0.04 * i, g["estimate"], yerr=[g["estimate"] - g["ci_low"], g["ci_high"] - g["estimate"]],
                        marker="o", capsize=3, label=f"{n_keep} random token{'s' if n_keep > 1 else ''} kept")
        ax.axhline(100, color=colour("unpruned"), ls="--", lw=1, label="unpruned")
        ax.set_xlabel("K: first decoder layer that sees only the kept tokens (0 = hook E)")
        ax.set_ylabel("relative score (% of unpruned)")
        ax.set_xticks(sorted(table["K"].unique()))
        ax.legend(fontsize=8)
        n = int(table["n_per_task"].min())
        ax.set_title(title or f"vision need by depth ({n} samples per task, {int(table['n_seeds'].max())} seeds)",
                     fontsize=10)
        fig.tight_layout()
    return fig


def estimates(table: pd.DataFrame, names: Sequence[str] | None = None, *, title: str = "",
              xlabel: str = "relative score (% of unpruned)") -> Any:
    """Scores with CIs per configuration (from `estimate_table`), coloured by method."""
    t = table.copy()
    t["name"] = names if names is not None else t["label"]
    t["colour"] = t["method"].map(colour)
    fig = effects(t, title=title, xlabel=xlabel)
    fig.axes[0].axvline(100, color=colour("unpruned"), ls="--", lw=1)
    return fig
