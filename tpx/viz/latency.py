"""Q5a figures: measured time against FLOPs, attention kernels, tokens per layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpx.viz.core import _style, colour

_MARKERS = {"sdpa": "o", "eager": "s", "flash_attention_2": "D"}  # attention kernel of a timing row


def flops_vs_time(table: Any, time: str = "prefill time %", fit: tuple[float, float] | None = None,
                  title: str | None = None) -> Any:
    """Measured time against analytic FLOPs, both in % of the unpruned SDPA run (Wen et al. 2025, Q5a).

    On the dashed diagonal a method takes the time its FLOPs predict; above it, it pays more (attention maps,
    selection, several stages). Marker: attention implementation (circle SDPA, square eager).

    Args:
        table: `tpx.analysis.protocol.summary_table` (index attention, method; columns "FLOPs %" and `time`).
        time: "prefill time %", "decode time %" or "end-to-end time %".
        fit: `(intercept, slope)` of `tpx.analysis.protocol.time_fit` for `time`, drawn dotted (fixed + per-FLOP cost).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    with _style():
        fig, ax = plt.subplots(figsize=(6.4, 5.2), constrained_layout=True)
        top = 1.1 * max(100.0, float(table[time].max()))
        ax.plot([0, top], [0, top], ls="--", c=colour("unpruned"), lw=1)
        if fit is not None:
            ax.plot([0, top], [fit[0], fit[0] + fit[1] * top], ls=":", c="k", lw=1)
        for (impl, method), r in table.iterrows():
            ax.scatter(r["FLOPs %"], r[time], s=70, c=colour(method), marker=_MARKERS.get(impl, "^"), ec="k", lw=0.5,
                       zorder=3)
        impls = list(dict.fromkeys(table.index.get_level_values(0)))
        methods = list(dict.fromkeys(table.index.get_level_values(1)))
        handles = [Line2D([], [], ls="", marker="o", mfc=colour(m), mec="k", label=m) for m in methods]
        handles += [Line2D([], [], ls="", marker=_MARKERS.get(i, "^"), mfc="w", mec="k", label=i) for i in impls]
        handles.append(Line2D([], [], ls="--", c=colour("unpruned"), label="time ∝ FLOPs"))
        if fit is not None:
            handles.append(Line2D([], [], ls=":", c="k", label=f"fit: {fit[0]:.0f}% + {fit[1]:.2f}·FLOPs%"))
        ax.legend(handles=handles, loc="upper left", fontsize=8, ncol=2)
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="analytic decoder FLOPs (% of unpruned)",
               ylabel=f"measured {time[:-2]} (% of unpruned SDPA)", title=title or f"{time[:-2]} vs FLOPs")
    return fig


def attention_cost(table: Any, column: str = "prefill ms", title: str | None = None) -> Any:
    """Bars of one measured column per method, one bar per attention implementation (hatched: not SDPA).

    Shows what reading eager attention maps costs against recomputing the needed rows under SDPA; only
    methods measured under every implementation are drawn.

    Args:
        table: `tpx.analysis.protocol.summary_table`; column: e.g. "prefill ms" or "peak memory MB".
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    impls = list(dict.fromkeys(table.index.get_level_values(0)))
    methods = list(dict.fromkeys(table.index.get_level_values(1)))
    wide = table[column].unstack(0).reindex(index=methods, columns=impls).dropna()
    width = 0.8 / len(impls)
    with _style():
        fig, ax = plt.subplots(figsize=(1.4 * len(wide) + 2.5, 4.2), constrained_layout=True)
        for j, impl in enumerate(impls):
            x = np.arange(len(wide)) + (j - (len(impls) - 1) / 2) * width
            ax.bar(x, wide[impl], width, color=[colour(m) for m in wide.index], ec="k", lw=0.5,
                   hatch=None if impl == "sdpa" else "//")
        ax.set_xticks(range(len(wide)), wide.index)
        ax.set(ylabel=column.replace(" ms", " (ms)").replace(" MB", " (MB)"), title=title or column)
        ax.legend(handles=[Patch(fc="w", ec="k", hatch=None if i == "sdpa" else "//", label=i) for i in impls],
                  title="attention", fontsize=8)
    return fig


def tokens_per_layer(per_layer: Any, table: Any, attention: str = "sdpa", title: str | None = None) -> Any:
    """Left: visual tokens each decoder layer sees, per method; right: each method's scoring + selection time.

    One pruning layer (FastV) against several (SparseVLM, PDrop): the area under a step curve is what FLOPs
    count; each stage adds one round of scoring and selection.

    Args:
        per_layer: `tpx.analysis.protocol.visual_per_layer`; table: `tpx.analysis.protocol.summary_table`.
        attention: the implementation to draw.
    """
    import matplotlib.pyplot as plt

    part = per_layer[per_layer.attn_implementation == attention]
    rows = table.xs(attention, level="attention")
    with _style():
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.3), width_ratios=[1.6, 1], constrained_layout=True)
        for i, (method, g) in enumerate(part.groupby("method", sort=False)):  # thinner on top: equal curves show
            ax.step(g.layer, g.n_visual, where="post", c=colour(method), ls="--" if method == "unpruned" else "-",
                    lw=max(1.2, 3.6 - 0.4 * i), label=f"{method}: FLOPs {rows.loc[method, 'FLOPs %']:.0f}%, "
                                f"prefill {rows.loc[method, 'prefill time %']:.0f}%")
        ax.set(xlabel="decoder layer", ylabel="visual tokens in the layer", title="tokens per layer (analytic)",
               ylim=(0, 1.7 * part.n_visual.max()))
        ax.legend(fontsize=7)
        pruned = rows.drop(index="unpruned", errors="ignore")
        bx.barh(range(len(pruned)), pruned["scoring ms"], color=[colour(m) for m in pruned.index])
        bx.set_yticks(range(len(pruned)), [f"{m} ({s} stage{'s' * (s > 1)})" for m, s in pruned.stages.items()])
        bx.invert_yaxis()
        bx.set(xlabel="scoring + selection per prefill (ms)", title="selection overhead (measured)")
        fig.suptitle(title or f"one pruning layer vs several ({attention})")
    return fig
