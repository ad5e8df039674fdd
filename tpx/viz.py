"""Figures: which visual tokens survive, drawn over the image the model saw.

Viz functions take results (a `TraceEntry`, pixel values) and an optional axis, return the `Figure` and
compute nothing experimental. Style is applied inside `plt.rc_context`, never globally. `save` writes PNG
(200 dpi) and PDF with no creation date, so re-running a notebook does not churn git.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["accuracy_vs_tokens", "alpha_curves", "alpha_heatmap", "alpha_kept", "colour", "keep_frequency_maps", "kept_tokens",
           "model_view", "overlap_heatmap", "panel_keep_maps", "redundancy_curves", "save", "score_panels"]
__all__ += ["attention_cost", "flops_vs_time", "seed_spread", "task_drops", "tokens_per_layer", "vision_need"]  # Q5
__all__ += ["attention_distance", "method_table", "relative_bars"]  # Q1

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


def model_view(pixel_values: torch.Tensor, processor: Any) -> np.ndarray:
    """The image as the vision tower sees it (resized, cropped), undoing the processor's normalisation.

    Args:
        pixel_values: `(3, H, W)` or `(1, 3, H, W)` processor output.
        processor: the model's processor (its image processor's mean and std are used).

    Returns:
        `(H, W, 3)` float array in [0, 1].
    """
    ip = processor.image_processor
    x = pixel_values.detach().float().reshape(-1, *pixel_values.shape[-3:])[0].cpu()
    mean = torch.tensor(ip.image_mean)[:, None, None]
    std = torch.tensor(ip.image_std)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def kept_tokens(image: np.ndarray, entry: Any, row: int = 0, title: str | None = None) -> Any:
    """Two panels: the image with dropped patches dimmed and kept ones outlined; the score map.

    Args:
        image: `(H, W, 3)` array in [0, 1] (see `model_view`).
        entry: a `tpx.engine.TraceEntry`.
        row: batch row to draw.
        title: figure title; default names the method, budget and layer.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows, cols = entry.grid
    h, w = image.shape[:2]
    ph, pw = h / rows, w / cols
    kept = torch.zeros(rows * cols, dtype=torch.bool)
    kept[entry.kept[row].cpu()] = True
    keep_map = kept.view(rows, cols).numpy()
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), constrained_layout=True)
        dim = np.kron(np.where(keep_map, 1.0, 0.25), np.ones((int(ph), int(pw))))[:h, :w]
        axes[0].imshow(image[: dim.shape[0], : dim.shape[1]] * dim[..., None])
        for r, c in zip(*np.nonzero(keep_map), strict=True):
            axes[0].add_patch(Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, lw=0.8, ec="#ffd400"))
        axes[0].set_title(f"kept tokens ({entry.n_keep} of {entry.n_visual})")
        axes[0].set_axis_off()
        if entry.scores is not None:
            scores = entry.scores[row].float().cpu().view(rows, cols).numpy()
            im = axes[1].imshow(scores, cmap="viridis")
            fig.colorbar(im, ax=axes[1], shrink=0.8, label="score (method's units)")
            axes[1].scatter(*np.nonzero(keep_map)[::-1], s=6, c="white", marker="s", label="kept")
            axes[1].legend(loc="upper right", fontsize=8, framealpha=0.6)
            axes[1].set_title("score per visual token")
        else:
            axes[1].imshow(keep_map, cmap="Greys", vmin=0, vmax=1)
            axes[1].set_title(f"kept cells ({entry.method} is not scored)")
        axes[1].set_xlabel("grid column")
        axes[1].set_ylabel("grid row (0 = top)")
        where = "input embeddings (hook E)" if entry.hook == "E" else f"before decoder layer {entry.layer}"
        fig.suptitle(title or f"{entry.method}: retention {entry.params['retention']:.3g}, {where}")
    return fig


def keep_frequency_maps(freqs: dict[str, Any], title: str | None = None, cols: int = 3) -> Any:
    """Retention-frequency heatmaps of several methods side by side on one colour scale.

    Args:
        freqs: method name → `(rows, cols)` share of samples that kept each cell (see
            `tpx.spatial.keep_frequency`), in the order to draw.
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


# ---- Q4: importance vs. redundancy (the α sweep) -----------------------------------------------------------

def alpha_heatmap(tables: dict[str, Any], best: dict[str, Any] | None = None, title: str | None = None) -> Any:
    """Task × α heatmaps of the study's Table 6, one panel per uniqueness reading, on one colour scale.

    Colour is the score minus the task's unpruned score (diverging, centred on 0, shared by the panels);
    each cell is annotated with the score itself and each task's best α is outlined.

    Args:
        tables: reading → `tpx.sweep.alpha_table` (tasks × ["unpruned", α...]).
        best: reading → `tpx.sweep.best_alpha` of that table; its `ties` column is outlined.
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
                for a in best[u].loc[task, "ties"]:
                    ax.add_patch(Rectangle((alphas.index(a) - 0.5, i - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
            ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
            ax.set_yticks(range(len(t)), [f"{task} ({s:.0f})" for task, s in t["unpruned"].items()])
            ax.set_title(f"uniqueness {u!r}")
        axes[0, 0].set_ylabel("task (unpruned score)")
        fig.supxlabel("α, the importance weight (0 = uniqueness only, 1 = FastV)")
        fig.colorbar(im, ax=axes, shrink=0.8, label="score − unpruned (points); boxed: best α")
        if title:
            fig.suptitle(title)
    return fig


def alpha_curves(curves: dict[str, Any], title: str | None = None, ylabel: str = "mean relative score (%)") -> Any:
    """One line per uniqueness reading over α (e.g. `tpx.sweep.mean_relative`), the unpruned 100 % dashed grey.

    Args:
        curves: reading → Series indexed by α.
        title: axes title. ylabel: y-axis label (with its unit).

    Returns:
        The `Figure`.
    """
    import matplotlib.pyplot as plt

    with _style():
        fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
        for (u, s), style in zip(curves.items(), ["-o", "--s", ":^"], strict=False):
            ax.plot(s.index, s.to_numpy(), style, color=colour("alpha"), ms=4, label=f"α mix, uniqueness {u!r}")
        ax.axhline(100, color=colour("unpruned"), ls="--", lw=1, label="unpruned")
        fastv = next(iter(curves.values())).get(1.0, np.nan)  # α = 1 is FastV under every reading
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
    fig.set_size_inches(9, 5.2)  # room for the two-line title above and the axis label below
    return fig


# ---- Q3: is language information helpful? ------------------------------------------------------------------

def score_panels(table: Any, x: str, panel: str, *, methods: list[str] | None = None, panels: list[Any] | None = None,
                 value: str = "score", xlabel: str | None = None, ylabel: str = "accuracy (%)",
                 title: str | None = None, cols: int = 3) -> Any:
    """Small multiples: one axis per value of `panel`, `value` over `x` (±1 s.e.), one line per method.

    Rows of method "unpruned" are the dashed grey baseline: a line over `x` where they vary with it (haystack
    size), a horizontal line where there is one of them (retention 1.0 on a retention axis). Lines are dodged
    slightly along `x` so that error bars stay apart.

    Args:
        table: columns method, `x`, `panel`, `value`, se (e.g. `tpx.guidance.score_table`).
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
                    retention: float, methods: list[str] | None = None, title: str | None = None) -> Any:
    """Where kept tokens fall by the panel the question names: rows = named panel, columns = methods.

    Keep frequencies share one [0, 1] colour scale and one colour bar; the named panel is outlined, and each
    title gives the share of kept tokens inside it (a position-blind method keeps the panel's area share).

    Args:
        maps: {(method, retention): {panel: (rows, cols) keep frequency}} (`tpx.guidance.panel_maps`).
        masks: {panel: (rows, cols) bool}: the grid cells of each panel (`tpx.guidance.panel_mask`).
        shares: optional table with columns method, retention, panel, share (%) (`score_table` of
            `tpx.guidance.panel_frame` by those three).
        retention: which retention to draw. methods: which methods, in order (default: all at that retention).
        title: figure title.

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
        fig.suptitle(title or f"kept tokens by named panel (outlined), retention {retention:.3g}; "
                              f"position-blind: {chance:.0f}% in panel")
    return fig


# ---- Q2: duplication of kept sets, agreement between methods --------------------------------------------

def _variant_style(label: str) -> dict[str, Any]:
    """Colour of the base method; variants (`"dart:min"`) get their own line style and marker."""
    base, _, variant = label.partition(":")
    styles = {"": ("-", "o"), "min": (":", "s"), "random": ("-.", "^")}
    ls, marker = styles.get(variant, ((0, (5, 1)), "D"))
    return {"color": colour(base), "ls": ls, "marker": marker}


def redundancy_curves(summary: Any, methods: list[str] | None = None, title: str | None = None) -> Any:
    """Kept-set duplication and accuracy against retention, one line per method, side by side.

    Args:
        summary: `tpx.redundancy.summarize_redundancy` table (method, retention, duplication[_min/_max],
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
        matrix: square DataFrame from `tpx.redundancy.overlap_matrix`.
        title: figure title.
        chance: overlap expected from two independent random sets (`tpx.redundancy.chance_overlap`), marked
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


def accuracy_vs_tokens(table: Any, task: str = "Avg", reference: float | None = None,
                       title: str | None = None) -> Any:
    """Accuracy against the visual tokens the LLM keeps, one line per (model, method) (study Q5b).

    Args:
        table: `tpx.accounting.token_table` output (columns model, method, kept, TRR, task, score).
        task: the task to draw ("Avg": mean over tasks).
        reference: accuracy of the unpruned full-token model, drawn dashed.
        title: figure title; default names the task.

    Returns:
        The matplotlib `Figure`: x = kept tokens (log scale, fewer to the right), y = accuracy (%), each point
        labelled with its total reduction ratio TRR.
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
            for k, s, trr in zip(g["kept"], g["score"], g["TRR"]):
                ax.annotate(f"{trr:.3g}×", (k, s), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if reference is not None:
            ax.axhline(reference, color=colour("unpruned"), ls=":", label="all tokens, unpruned")
        ax.set_xscale("log", base=2)
        ax.invert_xaxis()
        ticks = sorted(rows["kept"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.set_xlabel("visual tokens the LLM sees (label: total reduction TRR = TACR × TFRR)")
        ax.set_ylabel(f"accuracy (%), {task}")
        ax.set_title(title or f"Training-aware vs. training-free compression ({task})")
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    return fig


# ---- Q5: latency and the evaluation protocol (notebooks 05 and 07) ------------------------------------------

_MARKERS = {"sdpa": "o", "eager": "s", "flash_attention_2": "D"}


def flops_vs_time(table: Any, time: str = "prefill time %", fit: tuple[float, float] | None = None,
                  title: str | None = None) -> Any:
    """Measured time against analytic FLOPs, both in % of the unpruned SDPA run (Wen et al. 2025, Q5a).

    On the dashed diagonal a method takes the time its FLOPs predict; above it, it pays more (attention maps,
    selection, several stages). Marker: attention implementation (circle SDPA, square eager).

    Args:
        table: `tpx.protocol.summary_table` (index attention, method; columns "FLOPs %" and `time`).
        time: "prefill time %", "decode time %" or "end-to-end time %".
        fit: `(intercept, slope)` of `tpx.protocol.time_fit` for `time`, drawn dotted (fixed + per-FLOP cost).
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
        table: `tpx.protocol.summary_table`; column: e.g. "prefill ms" or "peak memory MB".
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
        per_layer: `tpx.protocol.visual_per_layer`; table: `tpx.protocol.summary_table`.
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


def vision_need(table: Any, title: str | None = None) -> Any:
    """Per task, unpruned accuracy with the image, with a blank image and without one (horizontal bars).

    Args:
        table: `tpx.protocol.vision_need` (index task; columns image, blank, no_image, need).
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
        drops: `tpx.protocol.task_drops` (index method, retention; columns tasks and "mean").
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
        scores: `tpx.protocol.task_scores` (index method, retention, seed; columns tasks and "mean").
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


# ---- Q1: position bias -------------------------------------------------------------------------------------

def _fraction(r: float) -> str:
    from fractions import Fraction

    f = Fraction(r).limit_denominator(20)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - r) < 1e-6 and f.denominator > 1 else f"{r:.3g}"


def attention_distance(rope: tuple[Any, Any], measured: tuple[Any, Any], visual: tuple[float, float] | None = None,
                       title: str | None = None) -> Any:
    """Why FastV keeps late tokens: RoPE's decay with distance (left) and the measured attention (right).

    Args:
        rope: `(distances, bound)` from `tpx.spatial.rope_decay` with the model's own frequencies.
        measured: `(bin_centres, mean_attention)` from `tpx.spatial.attention_by_distance` on FastV's scores.
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
    """The method × task table (`tpx.tables.method_table`, relative scores) as an annotated heatmap.

    Colour is the relative score minus 100 (diverging, centred on the unpruned model, one symmetric scale);
    cells read "mean ± std over seeds"; retentions are separated by lines.

    Args:
        table: `tpx.tables.method_table(..., relative=True)`. columns: those drawn (default all, "Avg" last).
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
        table: `tpx.tables.method_table(..., relative=True)`. columns: the columns drawn, one panel each.
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
