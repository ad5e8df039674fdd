"""Figures: structure, shared colour scales, deterministic files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_inputs  # noqa: E402

import tpx  # noqa: E402
from tpx import viz
from tpx.analysis import spatial  # noqa: E402


@pytest.fixture(autouse=True)
def live_widgets(monkeypatch):
    """Explorers are built live here even under `make test`, which makes notebook runs static."""
    monkeypatch.delenv("TPX_STATIC_WIDGETS", raising=False)


def test_kept_tokens_figure_and_save(tiny_models, tmp_path):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1)
    with torch.no_grad(), tpx.pruning(model, "fastv", retention=0.25) as run:
        model(**inputs)
    def draw():
        return viz.kept_tokens(viz.model_view(inputs["pixel_values"], processor), run.trace[0])

    fig = draw()
    assert len(fig.axes) == 3  # image, score map, colour bar
    png, pdf = viz.save(fig, "kept", tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG" and b"CreationDate" not in pdf.read_bytes()
    first = pdf.read_bytes()
    viz.save(draw(), "kept", tmp_path)
    assert pdf.read_bytes() == first  # re-running does not churn the file


def test_kept_tokens_draws_every_grid_of_a_layout():
    """LLaVA-NeXT-like entry: a 2×2 base view then a 3×4 crop grid; one row of panels per grid, each titled."""
    from tpx.engine import TraceEntry

    kept = torch.tensor([[0, 3, 4, 15]])  # 2 of the base's 4, 2 of the crops' 12 (local 0 and 11)
    entry = TraceEntry("fastv", "L", 2, 0, {"retention": 0.25}, 16, 4, kept, torch.zeros(1, 4, dtype=torch.long),
                       torch.zeros(1, 4, 2, dtype=torch.long), torch.rand(1, 16), grids=[(2, 2), (3, 4)])
    fig = viz.kept_tokens(torch.rand(96, 96, 3).numpy(), entry)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "grid 1 (2×2): kept tokens (2 of 4)" in titles and "grid 2 (3×4): kept tokens (2 of 12)" in titles
    assert [im.get_array().shape for ax in fig.axes for im in ax.images][1::2] == [(2, 2), (3, 4)]  # score maps


def test_model_view_falls_back_to_the_image_for_packed_patches(tiny_models):
    from PIL import Image

    _, processor = tiny_models["sdpa"]
    image = Image.new("RGB", (8, 6), (255, 0, 0))
    view = viz.model_view(torch.rand(24, 1176), processor, image)  # Qwen2-VL packs (patches, C·T·P·P)
    assert view.shape == (6, 8, 3) and view[..., 0].min() == 1.0 and view[..., 1].max() == 0.0
    with pytest.raises(ValueError, match="packed patches"):
        viz.model_view(torch.rand(24, 1176), processor)


def test_frequency_maps_share_one_scale():
    g = torch.Generator().manual_seed(0)
    kept = torch.stack([torch.randperm(144, generator=g)[:36] for _ in range(20)])
    maps = {"random": spatial.keep_frequency(kept, (12, 12)), "bottom": spatial.keep_frequency(torch.arange(108, 144)[None], (12, 12))}
    fig = viz.keep_frequency_maps(maps)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 2 and all((im.norm.vmin, im.norm.vmax) == (0.0, 1.0) for im in images)
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1


def test_model_view_undoes_normalisation(tiny_models):
    _, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1)
    img = viz.model_view(inputs["pixel_values"], processor)
    assert img.shape == (96, 96, 3) and 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.1


def test_alpha_heatmap_shares_one_diverging_scale_and_boxes_best():
    import matplotlib.pyplot as plt
    import pandas as pd

    tables = {u: pd.DataFrame({"unpruned": [80.0, 60.0], 0.0: [70.0, 50.0 + k], 1.0: [75.0, 40.0]}, index=["exist", "read"])
              for k, u in enumerate(["last", "dup"])}
    best = {u: pd.DataFrame({"near": [[1.0], [0.0]]}, index=["exist", "read"]) for u in tables}
    fig = viz.alpha_heatmap(tables, best, title="t")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and len({(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in panels}) == 1
    assert panels[0].images[0].norm.vmin == -20.0 and len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    assert [len(ax.patches) for ax in panels] == [2, 2] and len(panels[0].texts) == 4
    plt.close(fig)


def test_alpha_curves_and_alpha_kept(tiny_models):
    import matplotlib.pyplot as plt
    import pandas as pd

    from tpx import widgets
    from tpx.data import load_samples

    fig = viz.alpha_curves({"last": pd.Series({0.0: 90.0, 1.0: 80.0}), "dup": pd.Series({0.0: 95.0, 1.0: 80.0})})
    assert len(fig.axes[0].lines) == 4  # two readings, unpruned, FastV point
    band = pd.DataFrame({"estimate": [90.0, 80.0], "ci_low": [85.0, 75.0], "ci_high": [95.0, 85.0]}, index=[0.0, 1.0])
    fig = viz.alpha_curves({"dup": band})
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].collections) == 1  # one CI band
    model, processor = tiny_models["sdpa"]
    s = load_samples("organism", n=1, tasks=["count"])[0]
    fig = widgets.alpha_figure(model, processor, s.image, s.prompt, alpha=0.3, uniqueness="last", reference=s.answer)
    assert fig._suptitle.get_text().startswith("α = 0.3, uniqueness 'last', retention 0.25, layer 2")
    assert len(fig.axes) == 3 and widgets.alpha_explorer(model, processor, s.image, s.prompt).children
    plt.close("all")


def _q3_table():
    import pandas as pd

    rows = [dict(method="unpruned", retention=1.0, haystack=h, score=60.0 + h, se=2.0) for h in (1, 2, 4)]
    rows += [dict(method=m, retention=r, haystack=h, score=50.0 + h, se=3.0)
             for m in ("fastv", "fastervlm") for r in (0.25, 0.111) for h in (1, 2, 4)]
    return pd.DataFrame(rows)


def test_score_panels_one_axis_per_panel_and_a_dashed_baseline():
    t = _q3_table()
    fig = viz.score_panels(t, "haystack", "retention", xlabel="panels holding objects")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert [ax.get_title() for ax in axes] == ["retention 0.25", "retention 0.111"]
    base = [ln for ln in axes[0].lines if ln.get_label() == "unpruned"]
    assert len(base) == 1 and base[0].get_linestyle() == "--" and list(base[0].get_ydata()) == [61.0, 62.0, 64.0]
    assert len(fig.legends) == 1
    one = viz.score_panels(t[t.haystack == 1].assign(task="count"), "retention", "task", methods=["fastv"])
    ax = one.axes[0]
    assert ax.get_title() == "count" and [ln.get_label() for ln in ax.lines][0] == "unpruned"  # a horizontal line


def test_panel_keep_maps_grid_scale_and_outline():
    masks = {p: torch.zeros(12, 12, dtype=torch.bool) for p in "ABCD"}
    for k, p in enumerate("ABCD"):
        masks[p][6 * (k // 2):6 * (k // 2) + 6, 6 * (k % 2):6 * (k % 2) + 6] = True
    maps = {(m, 0.25): {p: masks[p].float() * 0.8 for p in "ABCD"} for m in ("fastv", "fastervlm", "random")}
    import pandas as pd

    shares = pd.DataFrame([dict(method=m, retention=0.25, panel=p, share=40.0) for m, _ in maps for p in "ABCD"])
    fig = viz.panel_keep_maps(maps, masks, shares, retention=0.25, methods=["fastv", "random"])
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 8 and all((im.norm.vmin, im.norm.vmax) == (0.0, 1.0) for im in images)
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    assert fig.axes[0].get_title() == "fastv\n40% in panel" and len(fig.axes[0].patches) == 1
    assert "25% in panel" in fig._suptitle.get_text()


def test_choice_explorer_redraws_with_the_picked_values():
    from tpx import widgets

    seen = []

    def plot(retention, methods):
        seen.append((retention, methods))
        return viz.score_panels(_q3_table(), "haystack", "retention", methods=methods, panels=[retention])

    box = widgets.choice_explorer(plot, {"retention": [0.25, 0.111], "methods": ["fastv", "fastervlm"]},
                                  {"retention": 0.25, "methods": ["fastv", "fastervlm"]})
    assert seen[0] == (0.25, ["fastv", "fastervlm"])
    box.children[0].children[0].value = 0.111
    assert seen[-1] == (0.111, ["fastv", "fastervlm"])
    import pytest

    with pytest.raises(ValueError, match="not among the options"):
        widgets.choice_explorer(plot, {"retention": [0.25]}, {"retention": 0.5})


def _q2_summary():
    import pandas as pd

    rows = [dict(method="unpruned", retention=1.0, duplication=0.9, accuracy=80.0, seeds=1)]
    for m, seeds in (("fastv", 1), ("dart", 1), ("dart:random", 3)):
        for r in (0.25, 0.5):
            rows.append(dict(method=m, retention=r, duplication=0.5 + r, accuracy=60 + 20 * r, seeds=seeds))
    df = pd.DataFrame(rows)
    for col in ("duplication", "accuracy"):
        df[f"{col}_min"], df[f"{col}_max"] = df[col] * 0.95, df[col] * 1.05
    return df


def test_redundancy_curves_two_panels_bands_for_seeds_and_the_unpruned_level():
    fig = viz.redundancy_curves(_q2_summary(), methods=["fastv", "dart", "dart:random"])
    dup, acc = fig.axes
    assert [ln.get_label() for ln in acc.lines] == ["fastv", "dart", "dart:random", "unpruned (all tokens)"]
    assert acc.lines[-1].get_linestyle() == "--" and acc.lines[1].get_color() == acc.lines[2].get_color()
    assert acc.lines[1].get_linestyle() != acc.lines[2].get_linestyle()  # a variant keeps its method's colour
    assert len(dup.collections) == 1                                      # min–max band only where seeds > 1


def test_overlap_heatmap_fixed_scale_annotated_with_chance_mark():
    import pandas as pd

    names = ["fastv", "dart", "random"]
    matrix = pd.DataFrame([[1.0, 0.2, 0.1], [0.2, 1.0, 0.15], [0.1, 0.15, 1.0]], index=names, columns=names)
    fig = viz.overlap_heatmap(matrix, title="t", chance=0.14)
    ax = fig.axes[0]
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0.0, 1.0)
    assert len(ax.texts) == 9 and ax.texts[1].get_text() == "0.20" and "chance, 0.14" in fig.axes[1].get_ylabel()
    assert len([a for a in fig.axes if a.get_label() == "<colorbar>"]) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == names


def test_overlap_figure_picks_dart_under_the_pivot_rule():
    import pandas as pd

    from tpx import widgets

    rows = [dict(id=i, method=m, retention=0.25, seed=0, n_visual=8, kept=k)
            for i in range(2) for m, k in (("fastv", [0, 1]), ("dart", [0, 2]), ("dart:min", [0, 1]))]
    df = pd.DataFrame(rows)
    fig = widgets.overlap_figure(df, ["fastv", "dart"], 0.25, pivot="min")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fastv", "dart:min"] and ax.texts[1].get_text() == "1.00"
    assert widgets.overlap_figure(df, ["fastv", "dart"], 0.25).axes[0].texts[1].get_text() == "0.33"


def test_overlap_figure_names_methods_that_did_not_run_at_the_retention():
    import pandas as pd
    import pytest

    from tpx import widgets

    rows = [dict(id=i, method=m, retention=0.25, seed=0, n_visual=8, kept=k)
            for i in range(2) for m, k in (("fastv", [0, 1]), ("dart", [0, 2]))]
    df = pd.DataFrame(rows)
    fig = widgets.overlap_figure(df, ["fastv", "dart", "pooling"], 0.25)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["fastv", "dart"]
    assert "not evaluated at this retention: pooling" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="methods: fewer than two"):
        widgets.overlap_figure(df, ["fastv", "pooling"], 0.25)


# ---- Q1: position bias -------------------------------------------------------------------------------------

def _q1_table():
    import pandas as pd

    from tpx.analysis import tables

    rows = []
    for method, r, seed, s in [("unpruned", 1.0, 0, 1.0), ("fastv", 0.25, 0, 0.5), ("random", 0.25, 0, 1.0),
                               ("random", 0.25, 1, 0.5), ("fastv", 1 / 9, 0, 0.25)]:
        rows += [{"id": f"{t}{i}", "benchmark": "organism", "task": t, "method": method, "retention": r,
                  "seed": seed, "score": s, "kept": None} for t in ("exist", "locate") for i in range(2)]
    return tables.method_table(pd.DataFrame(rows), tasks=["exist", "locate"], average=["exist"])


def test_method_table_figure_annotates_spread():
    fig = viz.method_table(_q1_table(), title="relative scores")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "100.0" in texts and "75.0±35.4" in texts and len(texts) == 4 * 3
    assert fig.axes[0].images[0].norm.vmin == -fig.axes[0].images[0].norm.vmax  # centred on the unpruned model
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == "fastv @ 1/9"


def test_relative_bars_one_panel_per_column():
    fig = viz.relative_bars(_q1_table(), ["Avg", "locate"])
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == 2 and len(axes[0].patches) == 3  # fastv at two retentions, random at one
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1/4", "1/9"]


def test_attention_distance_two_panels():
    d = torch.arange(0, 200)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
    fig = viz.attention_distance((d, spatial.rope_decay(inv_freq, d)), (torch.arange(12.0), torch.rand(12)),
                                 visual=(10, 150))
    assert len(fig.axes) == 2 and fig.axes[1].xaxis_inverted()


def test_keep_frequency_figure_names_missing_methods():
    import pandas as pd

    from tpx import widgets

    df = pd.DataFrame({"id": ["a", "a", "a"], "method": ["fastv", "random", "pdrop"], "retention": [0.5, 0.5, 1 / 3],
                       "kept": [[0, 1], [2, 3], [0, 3]]})
    fig = widgets.keep_frequency_figure(df, ["fastv", "random", "pdrop"], 0.5, (2, 2))
    assert len([im for ax in fig.axes for im in ax.images]) == 2
    assert "(1 samples" in fig._suptitle.get_text()
    assert "not evaluated at this retention: pdrop" in fig._suptitle.get_text()


def test_q5_latency_figures():
    import pandas as pd
    from test_analysis_protocol import measured

    from tpx.analysis import protocol

    df = pd.DataFrame([measured("unpruned", "sdpa", [], 100, 1000), measured("fastv", "sdpa", [(2, 192)], 50, 400),
                       measured("pdrop", "sdpa", [(2, 300), (4, 100)], 45, 350),
                       measured("unpruned", "eager", [], 150, 1000), measured("fastv", "eager", [(2, 192)], 90, 400)])
    table = protocol.summary_table(df)
    fig = viz.flops_vs_time(table)
    assert len(fig.axes[0].collections) == 5 and fig.axes[0].get_xlim() == fig.axes[0].get_ylim()
    bars = viz.attention_cost(table)
    assert len(bars.axes[0].patches) == 4  # unpruned and fastv under both; pdrop has no eager run
    fig = viz.tokens_per_layer(protocol.visual_per_layer(df, 6), table)
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[1].patches) == 2


def test_q5_protocol_figures():
    import pandas as pd
    from test_analysis_protocol import GRID, rows

    from tpx.analysis import protocol

    drops = protocol.task_drops(GRID)
    fig = viz.task_drops(drops)
    im = fig.axes[0].images[0]
    assert im.norm.vcenter == 0 and im.norm.vmin == -im.norm.vmax and len(fig.axes) == 2  # one colour bar
    fig = viz.seed_spread(protocol.task_scores(GRID), 0.25)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"unpruned", "fastv", "random"}
    base = ("unpruned", 1.0, 0)
    blind = pd.concat([rows({base: {"a": [1, 1]}}), rows({base: {"a": [0, 1]}}, "blank"),
                       rows({base: {"a": [0, 0]}}, "no_image")])
    assert len(viz.vision_need(protocol.vision_need(blind)).axes[0].patches) == 6


def test_training_aware_figure_names_each_trr_once():
    import pandas as pd

    from tpx.analysis import accounting

    def frame(method, n_keep, scores):
        return pd.DataFrame([dict(task=t, method=method, retention=n_keep / 144, seed=0, n_keep=n_keep, score=s)
                             for t, s in scores.items()])

    full = pd.concat([frame("unpruned", 144, {"a": 1.0, "b": 1.0}), frame("fastv", 36, {"a": 0.8, "b": 0.6}),
                      frame("fastv", 9, {"a": 0.5, "b": 0.4})])
    pooled = pd.concat([frame("unpruned", 36, {"a": 0.9, "b": 0.9}), frame("fastv", 9, {"a": 0.7, "b": 0.5})])
    table = accounting.token_table({"full": full, "pool2": pooled}, raw=144, natives={"full": 144, "pool2": 36})
    fig = viz.accuracy_vs_tokens(table, "Avg", reference=100.0)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["9\nTRR 16×", "36\nTRR 4×", "144\nTRR 1×"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == len(set(labels)) == 4 and "full: unpruned" in labels
    assert not ax.texts  # no per-point labels to overlap where lines meet


def test_explorers_are_static_notes_when_headless(monkeypatch):
    from IPython.display import Markdown

    from tpx import widgets

    monkeypatch.setenv(widgets.STATIC_ENV, "1")
    note = widgets.choice_explorer(lambda retention: None, {"retention": [0.25]}, {"retention": 0.25})
    assert isinstance(note, Markdown) and "JupyterLab" in note.data
    with pytest.raises(ValueError, match="same arguments"):  # bad input is still rejected
        widgets.choice_explorer(lambda retention: None, {"retention": [0.25]}, {"layer": 2})
