"""ipywidgets explorers: the same viz functions as the saved figures, redrawn from sliders.

Each explorer's default state is the notebook's parameters, so the interactive view starts from the
figure the headless run saved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["alpha_explorer", "alpha_figure", "choice_explorer", "explore_figure", "kept_tokens_explorer",
           "overlap_figure"]
__all__ += ["keep_frequency_figure"]  # Q1


STATIC_ENV = "TPX_STATIC_WIDGETS"


def _static(name: str) -> Any | None:
    """A note in place of a live explorer when `TPX_STATIC_WIDGETS=1` (set by `make test` and `tpx reproduce`).

    Headless runs have no browser to drive a widget, and nbclient can stall for a whole cell timeout on widget
    messages (jupyter/nbclient#312), so test and figure runs skip building them; the saved figure above an
    explorer is its default state. Interactive sessions (JupyterLab) build the live widget.
    """
    if os.environ.get(STATIC_ENV) != "1":
        return None
    from IPython.display import Markdown

    return Markdown(f"*{name}: live widgets are skipped in headless runs ({STATIC_ENV}=1); open the notebook in "
                    "JupyterLab to explore.*")


def kept_tokens_explorer(
    model: Any,
    processor: Any,
    samples: Sequence[Any],
    *,
    index: int = 0,
    method: str = "fastv",
    retention: float = 0.25,
    layer: int = 2,
    alpha: float | None = None,
    seed: int = 0,
    methods: list[str] | None = None,
) -> Any:
    """Pick a sample, a method, retention, layer and α; see the kept tokens, the score map and both answers.

    Args:
        model, processor: from `tpx.load`.
        samples: `tpx.data.Sample`s to choose from (e.g. `load_samples("organism", n=2)`).
        index, method, retention, layer, alpha, seed: the starting state (the notebook's parameters);
            `alpha` applies to methods that take it (`alpha`), None keeps each method's default.
        methods: choices offered (default: every registered method).

    Returns:
        An ipywidgets `VBox`; display it in a notebook.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    import tpx

    if not samples:
        raise ValueError("samples must hold at least one sample")
    if (note := _static("kept-tokens explorer")) is not None:
        return note
    n_layers = len(model.model.language_model.layers)
    labels = [(f"{i}: [{s.task}] {s.question}"[:80], i) for i, s in enumerate(samples)]
    controls = {
        "index": w.Dropdown(options=labels, value=index, description="sample", layout=w.Layout(width="420px")),
        "method": w.Dropdown(options=methods or tpx.list_methods(), value=method, description="method"),
        "retention": w.FloatSlider(value=retention, min=0.05, max=1.0, step=0.01, description="retention",
                                   continuous_update=False),
        "layer": w.IntSlider(value=layer, min=1, max=n_layers - 1, description="layer K", continuous_update=False),
        "alpha": w.FloatSlider(value=0.2 if alpha is None else alpha, min=0.0, max=1.0, step=0.05,
                               description="α", continuous_update=False),
    }

    def draw(index: int, method: str, retention: float, layer: int, alpha: float) -> None:
        controls["layer"].disabled = tpx.get_method(method).hook != "L"
        controls["alpha"].disabled = "alpha" not in tpx.get_method(method).defaults
        try:
            fig, text = explore_figure(model, processor, samples[index], method, retention, layer, alpha, seed)
        except ValueError as err:  # e.g. a pooling budget no grid can hold: say so, keep the explorer alive
            print(f"cannot prune: {err}")
            return
        display(fig)
        plt.close(fig)
        print(text)

    out = w.interactive_output(draw, controls)
    return w.VBox([w.HBox([controls["index"], controls["method"]]),
                   w.HBox([controls["retention"], controls["layer"], controls["alpha"]]), out])


def explore_figure(model: Any, processor: Any, sample: Any, method: str, retention: float, layer: int,
                   alpha: float | None = None, seed: int = 0) -> tuple[Any, str]:
    """The explorer's view of one state: kept tokens over the image, score map, and the two answers.

    Returns:
        `(figure, text)`: the `viz.kept_tokens` figure and the question with the reference, unpruned and
        pruned answers, and the kept-token count. `layer` applies to hook-"L" methods, `alpha` to methods that take it.
    """
    import tpx
    from tpx import viz
    from tpx.ask import ask

    spec = tpx.get_method(method)
    kwargs: dict[str, Any] = {"seed": seed}
    if spec.hook == "L":
        kwargs["layer"] = layer
    if alpha is not None and "alpha" in spec.defaults:
        kwargs["alpha"] = alpha
    full = ask(model, processor, sample.image, sample.prompt)
    pruned = ask(model, processor, sample.image, sample.prompt, method, retention=retention, **kwargs)
    entry = pruned.entry
    title = f"{method}, retention {retention:g}: kept {entry.n_keep} of {entry.n_visual} tokens"
    fig = viz.kept_tokens(viz.model_view(pruned.pixel_values, processor, sample.image), entry, title=title)
    reference = " | ".join(sample.answers) if getattr(sample, "answers", None) else "?"
    text = (f"Q: {sample.question}\nreference: {reference!r}\nunpruned:  {full.text!r}\n"
            f"pruned:    {pruned.text!r}\nkept {entry.n_keep} of {entry.n_visual} visual tokens")
    return fig, text


def alpha_figure(model: Any, processor: Any, image: Any, question: str, *, alpha: float = 0.2,
                 uniqueness: str = "dup", retention: float = 0.25, layer: int = 2, seed: int = 0,
                 reference: str | None = None, max_new_tokens: int = 8) -> Any:
    """Answer `question` under the `alpha` method and draw its kept tokens (`viz.alpha_kept`): the figure
    `alpha_explorer` redraws, so a notebook saving this call's figure saves the explorer's default state.

    Args:
        model, processor: from `tpx.load`. image: a PIL image; question: its prompt; reference: its answer.
        alpha, uniqueness, retention, layer, seed: the `alpha` method's settings (Wen et al. 2025, Eq. 6).
        max_new_tokens: answer length limit.

    Returns:
        The matplotlib `Figure`, captioned with the question, the pruned answer and the reference.
    """
    from tpx import viz
    from tpx.ask import ask

    out = ask(model, processor, image, question, "alpha", retention=retention, layer=layer, seed=seed,
              max_new_tokens=max_new_tokens, alpha=alpha, uniqueness=uniqueness)
    caption = f"Q: {question!r} → {out.text!r}" + (f" (reference {reference!r})" if reference is not None else "")
    return viz.alpha_kept(viz.model_view(out.pixel_values, processor, image), out.entry, caption=caption)


def alpha_explorer(model: Any, processor: Any, image: Any, question: str, *, alpha: float = 0.2,
                   uniqueness: str = "dup", retention: float = 0.25, layer: int = 2, seed: int = 0,
                   reference: str | None = None) -> Any:
    """Slide α (0 = uniqueness only, 1 = FastV) and switch the uniqueness reading; the kept-token map and the
    answer are recomputed (`alpha_figure`). The arguments are the starting state (the notebook's parameters).

    Returns:
        An ipywidgets `VBox`; display it in a notebook.
    """
    if (note := _static("α explorer")) is not None:
        return note
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    controls = {
        "alpha": w.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.1, description="α", continuous_update=False),
        "uniqueness": w.ToggleButtons(options=["last", "dup"], value=uniqueness, description="uniqueness"),
    }

    def draw(alpha: float, uniqueness: str) -> None:
        fig = alpha_figure(model, processor, image, question, alpha=round(alpha, 2), uniqueness=uniqueness,
                           retention=retention, layer=layer, seed=seed, reference=reference)
        display(fig)
        plt.close(fig)

    out = w.interactive_output(draw, controls)
    return w.VBox([w.HBox(list(controls.values())), out])


def choice_explorer(plot: Any, options: dict[str, list[Any]], value: dict[str, Any]) -> Any:
    """Redraw a figure from menus: `plot(**choices)` is called with the picked values and displayed.

    A list in `value` gives a multiple choice (a `SelectMultiple`, e.g. the methods or retentions drawn), a
    single value a drop-down (e.g. one retention). Pass the arguments of the saved figure as `value`, so that
    the explorer starts from it; a headless run shows that figure.

    Args:
        plot: returns a matplotlib `Figure`, e.g. `functools.partial(viz.score_panels, table, "haystack", "retention")`.
        options: argument name → the values offered.
        value: argument name → the starting value (a list for a multiple choice).

    Returns:
        An ipywidgets `VBox`; display it in a notebook.

    Raises:
        ValueError: `options` and `value` name different arguments, or a starting value is not offered.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    if set(options) != set(value):
        raise ValueError(f"options and value must name the same arguments, got {sorted(options)} and {sorted(value)}")
    if (note := _static(f"explorer over {', '.join(options)}")) is not None:
        return note
    controls = {}
    for name, offered in options.items():
        start = value[name]
        many = isinstance(start, list | tuple)
        if any(v not in offered for v in (start if many else [start])):
            raise ValueError(f"{name}: starting value {start!r} is not among the options {offered!r}")
        labelled = [(f"{v:.3g}" if isinstance(v, float) else str(v), v) for v in offered]
        controls[name] = (w.SelectMultiple(options=labelled, value=tuple(start), description=name,
                                           rows=min(6, len(offered)))
                          if many else w.Dropdown(options=labelled, value=start, description=name))

    def draw(**picked: Any) -> None:
        fig = plot(**{k: list(v) if isinstance(v, tuple) else v for k, v in picked.items()})
        display(fig)
        plt.close(fig)

    out = w.interactive_output(draw, controls)
    return w.VBox([w.HBox(list(controls.values())), out])


def overlap_figure(df: Any, methods: list[str], retention: float, pivot: str = "max", kind: str = "jaccard") -> Any:
    """The kept-set agreement matrix of `methods` at one retention, with DART under pivot rule `pivot`.

    Methods with no kept sets at this retention (a budget the method cannot reach on this layout, e.g. pooling
    on LLaVA-OneVision's 27×27 grid at r = 1/4) are named in the title, not drawn.

    Args:
        df: `tpx.evaluate.evaluate` rows (method = label) holding every method and the DART pivot variants.
        methods: labels to compare; "dart" stands for DART under `pivot` (`tpx.analysis.redundancy.pivot_label`).
        retention: one of the table's retentions.
        pivot: DART pivot rule ("max", "min", "random").
        kind: overlap measure ("jaccard" or "share").

    Returns:
        `tpx.viz.overlap_heatmap`'s `Figure`.
    """
    from tpx import viz
    from tpx.analysis import redundancy

    labels = [redundancy.pivot_label(pivot) if m == "dart" else m for m in methods]
    at = df[(df["retention"] == retention) & df["kept"].notna()]
    present = [m for m in labels if m in set(at["method"])]
    missing = [m for m in labels if m not in present]
    if len(present) < 2:
        raise ValueError(f"methods: fewer than two of {labels} have kept sets at retention {retention:g} "
                         f"(missing: {', '.join(missing)})")
    matrix = redundancy.overlap_matrix(df, retention, present, kind=kind)
    chance = redundancy.chance_overlap(retention) if kind == "jaccard" else None
    title = f"agreement of kept sets, retention {retention:g} ({len(df['id'].unique())} samples)"
    if missing:
        title += f"\nnot evaluated at this retention: {', '.join(missing)}"
    label = "Jaccard overlap of kept sets" if kind == "jaccard" else "share of common kept tokens"
    return viz.overlap_heatmap(matrix, title=title, chance=chance, label=label)



def keep_frequency_figure(df: Any, methods: list[str], retention: float, grid: tuple[int, int] | None = None) -> Any:
    """Keep-frequency heatmaps of `methods` at one retention from evaluation rows, on one colour scale (Q1).

    Methods with no rows at this retention (one that cannot reach it) are named in the title, not drawn. The
    map is on the image's own grid when every row has one single-grid layout, else on a common normalised grid
    (`tpx.analysis.spatial.map_grid`: LLaVA-NeXT's base and crop grids, Qwen2-VL images of several sizes), and
    the title says so.

    Args:
        df: `tpx.evaluate.evaluate` rows (columns kept, grids). methods: methods to draw, in order.
        retention: one of the evaluated retentions. grid: `(rows, cols)` of a single-grid image; None: from
            the rows' layouts.

    Returns:
        `tpx.viz.keep_frequency_maps`'s `Figure`.
    """
    from tpx import viz
    from tpx.analysis import spatial

    at = df[(df["retention"] - retention).abs() < 1e-9]
    present = [m for m in methods if m in set(at["method"])]
    missing = [m for m in methods if m not in present]
    n = at.loc[at["method"].isin(present), "id"].nunique()
    title = f"share of samples keeping each cell, retention {retention:.3g} ({n} samples, seeds pooled)"
    pruned = at[at["method"].isin(present)]
    if grid is None and len(pruned):
        shape, normalised = spatial.map_grid(spatial.row_grids(pruned))
        if normalised:
            title += (f"\non a common normalised {shape[0]}×{shape[1]} grid: every image grid "
                      f"({', '.join(sorted({f'{r}×{c}' for g in spatial.row_grids(pruned) for r, c in g}))}) "
                      "area-weighted onto it")
    if missing:
        title += f"\nnot evaluated at this retention: {', '.join(missing)}"
    maps = spatial.frequency_maps(df, retention, grid, present)
    return viz.keep_frequency_maps(maps, title=title, cols=min(3, max(len(maps), 1)))
