"""ipywidgets explorers: the same viz functions as the saved figures, redrawn from sliders.

Each explorer's default state is the notebook's parameters, so the interactive view starts from the
figure the headless run saved.
"""

from __future__ import annotations

from typing import Any

__all__ = ["kept_tokens_explorer"]


def kept_tokens_explorer(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    *,
    method: str = "fastv",
    retention: float = 0.25,
    layer: int = 2,
    seed: int = 0,
    methods: list[str] | None = None,
) -> Any:
    """Pick a method, retention and layer; see the kept tokens, the score map and both answers.

    Args:
        model, processor: from `tpx.load`.
        image: a PIL image; question: its question.
        method, retention, layer, seed: the starting state (the notebook's parameters).
        methods: choices offered (default: every registered method).

    Returns:
        An ipywidgets `VBox`; display it in a notebook.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    import tpx
    from tpx import viz
    from tpx.ask import ask

    n_layers = len(model.model.language_model.layers)
    unpruned = ask(model, processor, image, question).text
    controls = {
        "method": w.Dropdown(options=methods or tpx.list_methods(), value=method, description="method"),
        "retention": w.FloatSlider(value=retention, min=0.05, max=1.0, step=0.01, description="retention",
                                   continuous_update=False),
        "layer": w.IntSlider(value=layer, min=1, max=n_layers - 1, description="layer K", continuous_update=False),
    }

    def draw(method: str, retention: float, layer: int) -> None:
        hook_l = tpx.get_method(method).hook == "L"
        controls["layer"].disabled = not hook_l
        kwargs = {"layer": layer} if hook_l else {}
        try:
            pruned = ask(model, processor, image, question, method, retention=retention, seed=seed, **kwargs)
        except ValueError as err:  # e.g. a pooling budget no grid can hold: say so, keep the explorer alive
            print(f"cannot prune: {err}")
            return
        fig = viz.kept_tokens(viz.model_view(pruned.pixel_values, processor), pruned.entry)
        display(fig)
        plt.close(fig)
        print(f"Q: {question}\nunpruned: {unpruned!r}\npruned:   {pruned.text!r}")

    out = w.interactive_output(draw, controls)
    return w.VBox([w.HBox(list(controls.values())), out])
