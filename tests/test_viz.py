"""Figures: structure, shared colour scales, deterministic files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from conftest import make_inputs  # noqa: E402

import tpx  # noqa: E402
from tpx import spatial, viz  # noqa: E402


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
