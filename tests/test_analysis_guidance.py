"""Q3 helpers: in-panel masks and shares, keep maps by named panel, tables with errors, per-method settings."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tpx.analysis import guidance
from tpx.data import load_samples


def test_panel_mask_on_the_organism_and_a_finer_grid():
    top_right = (48, 0, 96, 48)
    m = guidance.panel_mask(top_right, (96, 96), (12, 12))
    assert m.shape == (12, 12) and int(m.sum()) == 36
    assert m[:6, 6:].all() and not m[6:].any() and not m[:, :6].any()
    fine = guidance.panel_mask(top_right, (96, 96), (24, 24))
    assert int(fine.sum()) == 144 and fine[:12, 12:].all()
    assert int(guidance.panel_mask((0, 0, 5, 5), (96, 96), (12, 12)).sum()) == 1  # only cell (0, 0)'s centre


def test_square_grid():
    assert guidance.square_grid(144) == (12, 12) and guidance.square_grid(576) == (24, 24)
    with pytest.raises(ValueError, match="not a square"):
        guidance.square_grid(2880 + 1)


def test_score_table_and_group_gap():
    df = pd.DataFrame({"method": ["fastv"] * 4 + ["fastv_vis"] * 4 + ["random"] * 2,
                       "task": ["a", "a", "b", "b"] * 2 + ["a", "b"],
                       "score": [1, 1, 1, 0, 0, 1, 0, 0, 1, 0]})
    t = guidance.score_table(df, ["method", "task"])
    row = t[(t.method == "fastv") & (t.task == "b")].iloc[0]
    assert row.score == pytest.approx(50.0) and row.n == 2
    assert row.se == pytest.approx(100 * math.sqrt(0.5) / math.sqrt(2))
    assert list(t.method.unique()) == ["fastv", "fastv_vis", "random"]  # order of appearance
    g = guidance.group_gap(df, ["fastv"], ["fastv_vis"])
    assert g["first"] == pytest.approx(75.0) and g["second"] == pytest.approx(25.0) and g["gap"] == pytest.approx(50.0)
    assert g["se"] == pytest.approx(math.hypot(50 / 2, 50 / 2))
    with pytest.raises(ValueError, match="no rows"):
        guidance.group_gap(df, ["sparsevlm"], ["random"])


@pytest.fixture(scope="module")
def anchors():
    return load_samples("organism", n=4, tasks=["anchor"], haystack=2)


def _rows(samples, method, kept):
    return pd.DataFrame([{"id": s.id, "method": method, "retention": 0.25, "kept": k, "n_visual": 144, "score": 1.0}
                         for s, k in zip(samples, kept)])


def _cells(mask):
    return torch.nonzero(mask.flatten()).flatten().tolist()


def test_panel_frame_shares(anchors):
    masks = [guidance.panel_mask(s.metadata["panel_box"], s.image.size, (12, 12)) for s in anchors]
    inside = [_cells(m)[:9] for m in masks]                       # 9 kept, all inside the named panel
    half = [_cells(m)[:4] + _cells(~m)[:4] for m in masks]        # half inside
    df = pd.concat([_rows(anchors, "fastv", inside), _rows(anchors, "random", half),
                    _rows(anchors, "unpruned", [None] * 4)], ignore_index=True)
    other = load_samples("organism", n=2, tasks=["exist"])
    df = pd.concat([df, _rows(other, "fastv", [[0, 1]] * 2)], ignore_index=True)
    f = guidance.panel_frame(df, anchors + other)
    assert len(f) == 12 and set(f.id) == {s.id for s in anchors}  # rows of samples without a panel are dropped
    assert (f.chance == 0.25).all() and (f.haystack == 2).all()
    assert list(f.panel[:4]) == [s.metadata["panel"] for s in anchors]
    by = f.groupby("method")["share"].mean()
    assert by["fastv"] == 1.0 and by["random"] == 0.5 and by["unpruned"] == 0.25


def test_panel_maps(anchors):
    masks = [guidance.panel_mask(s.metadata["panel_box"], s.image.size, (12, 12)) for s in anchors]
    df = pd.concat([_rows(anchors, "fastv", [_cells(m)[:9] for m in masks]), _rows(anchors, "unpruned", [None] * 4)])
    maps = guidance.panel_maps(guidance.panel_frame(df, anchors))
    assert list(maps) == [("fastv", 0.25)]
    panels = maps[("fastv", 0.25)]
    assert list(panels) == sorted({s.metadata["panel"] for s in anchors})
    for p, freq in panels.items():
        assert freq.shape == (12, 12) and float(freq.max()) == 1.0
        named = [m for s, m in zip(anchors, masks) if s.metadata["panel"] == p][0]
        assert float(freq[~named].sum()) == 0.0  # all kept cells lie in the named panel


def test_evaluate_methods_on_the_tiny_model(tiny_models, anchors):
    model, processor = tiny_models["sdpa"]
    df = guidance.evaluate_methods(model, processor, anchors[:2], [None, "fastv", "fastervlm", "sparsevlm", "random"],
                                   [0.25], seeds=[0, 1], layer=1, progress=False, batch_size=2, max_new_tokens=1)
    assert df.groupby("method", sort=False).size().to_dict() == {
        "unpruned": 2, "fastv": 2, "fastervlm": 2, "sparsevlm": 2, "random": 4}
    assert set(df[df.method == "fastv"].n_keep) == {36} and set(df[df.method == "random"].seed) == {0, 1}
    with pytest.raises(ValueError, match="pdrop.*cannot run at retention=0.1"):
        guidance.evaluate_methods(model, processor, anchors[:1], ["pdrop"], [0.1], progress=False, max_new_tokens=1)
    f = guidance.panel_frame(df, anchors)
    assert f["share"].between(0, 1).all() and len(guidance.panel_maps(f)) == 4


def test_panel_masks_tile_the_organism_grid(anchors):
    masks = guidance.panel_masks(anchors[0], (12, 12))
    assert list(masks) == ["A", "B", "C", "D"] and all(int(m.sum()) == 36 for m in masks.values())
    assert bool(torch.stack(list(masks.values())).sum(0).eq(1).all())  # every cell in exactly one panel
    assert masks["C"][6:, :6].all()


def test_verdict():
    assert guidance.verdict({"gap": 5.0, "se": 2.0}) == "agrees"
    assert guidance.verdict({"gap": -5.0, "se": 2.0}) == "disagrees"
    assert guidance.verdict({"gap": 3.0, "se": 2.0}) == "inconclusive"
    assert guidance.verdict({"gap": 3.0, "se": 2.0}, "none") == "agrees"
    assert guidance.verdict({"gap": 5.0, "se": 2.0}, "none") == "disagrees"
    with pytest.raises(ValueError, match="claim"):
        guidance.verdict({"gap": 0.0, "se": 1.0}, "negative")


def test_layout_puts_unpruned_first_and_picks_the_retention():
    t = pd.DataFrame([dict(method="fastv", retention=r, haystack=h, score=10 * h + r) for r in (0.25, 0.5) for h in (1, 2)]
                     + [dict(method="unpruned", retention=1.0, haystack=h, score=90.0 + h) for h in (1, 2)])
    out = guidance.layout(t, "haystack", 0.25)
    assert list(out.index) == ["unpruned", "fastv"] and list(out.columns) == [1, 2]
    assert out.loc["fastv", 2] == pytest.approx(20.25) and out.loc["unpruned", 1] == 91.0
