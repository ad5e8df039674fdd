"""Q5b figures: training-aware against training-free compression."""

from __future__ import annotations

from typing import Any

from tpx.viz.core import _style, colour


def accuracy_vs_tokens(table: Any, task: str = "Avg", reference: float | None = None,
                       title: str | None = None) -> Any:
    """Accuracy against the visual tokens the LLM keeps, one line per (model, method) (study Q5b).

    Args:
        table: `tpx.analysis.accounting.token_table` output (columns model, method, kept, TRR, task, score).
        task: the task to draw ("Avg": mean over tasks).
        reference: accuracy of the unpruned full-token model, drawn dashed.
        title: figure title; default names the task.

    Returns:
        The matplotlib `Figure`: x = kept tokens (log scale, fewer to the right), each tick labelled with its total
        reduction ratio TRR; y = accuracy (%).
    """
    import matplotlib.pyplot as plt

    rows = table[table["task"] == task]
    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        for (model, method), g in rows.groupby(["model", "method"], sort=False):
            g = g.sort_values("kept", ascending=False)
            dashed = "pool" in str(model).lower()
            ax.plot(g["kept"], g["score"], marker="o" if not dashed else "s", ls="--" if dashed else "-",
                    color=colour(method), label=f"{model}: {method}")
        if reference is not None:
            ax.axhline(reference, color=colour("unpruned"), ls=":", lw=1,
                       label="_nolegend_" if (rows["method"] == "unpruned").any() else "all tokens, unpruned")
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
        trr = rows.groupby("kept")["TRR"].first()
        ax.set_xticks(list(trr.index), [f"{int(k)}\nTRR {t:.3g}×" for k, t in trr.items()])
        ax.minorticks_off()
        ax.set_xlabel("visual tokens the LLM sees (TRR = TACR × TFRR)")
        ax.set_ylabel(f"accuracy (%), {task}")
        ax.set_title(title or f"Training-aware vs. training-free compression ({task})")
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    return fig
