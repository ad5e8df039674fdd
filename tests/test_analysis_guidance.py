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


def test_score_table():
    df = pd.DataFrame({"method": ["fastv"] * 4 + ["fastv_vis"] * 4 + ["random"] * 2,
                       "task": ["a", "a", "b", "b"] * 2 + ["a", "b"],
                       "score": [1, 1, 1, 0, 0, 1, 0, 0, 1, 0]})
    t = guidance.score_table(df, ["method", "task"])
    row = t[(t.method == "fastv") & (t.task == "b")].iloc[0]
    assert row.score == pytest.approx(50.0) and row.n == 2
    assert row.se == pytest.approx(100 * math.sqrt(0.5) / math.sqrt(2))
    assert list(t.method.unique()) == ["fastv", "fastv_vis", "random"]  # order of appearance


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


def test_panel_frame_and_maps_on_several_grids(anchors):
    """LLaVA-NeXT-like layout: a 4×4 base view then an 8×8 crop grid, both spanning the image (N = 80)."""
    grids = [[4, 4], [8, 8]]
    base = [guidance.panel_mask(s.metadata["panel_box"], s.image.size, (4, 4)) for s in anchors]
    crop = [guidance.panel_mask(s.metadata["panel_box"], s.image.size, (8, 8)) for s in anchors]
    kept = [_cells(b) + [16 + i for i in _cells(c)] for b, c in zip(base, crop)]  # every token inside the panel
    df = pd.concat([_rows(anchors, "fastv", kept), _rows(anchors, "unpruned", [None] * 4)], ignore_index=True)
    df = df.assign(n_visual=80, grids=[grids] * len(df))
    f = guidance.panel_frame(df, anchors)
    assert (f[f.method == "fastv"].share == 1.0).all() and (f.chance == 0.25).all()
    maps = guidance.panel_maps(f)[("fastv", 0.25)]
    for p, freq in maps.items():  # on the common normalised 8×8 grid: kept everywhere inside the panel, nowhere else
        inside = guidance.panel_mask(next(s.metadata["panel_box"] for s in anchors if s.metadata["panel"] == p),
                                     anchors[0].image.size, (8, 8))
        assert freq.shape == (8, 8) and torch.allclose(freq[inside], torch.ones(())) and float(freq[~inside].max()) == 0.0


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


def test_panel_masks_tile_the_organism_grid(anchors):
    masks = guidance.panel_masks(anchors[0], (12, 12))
    assert list(masks) == ["A", "B", "C", "D"] and all(int(m.sum()) == 36 for m in masks.values())
    assert bool(torch.stack(list(masks.values())).sum(0).eq(1).all())  # every cell in exactly one panel
    assert masks["C"][6:, :6].all()


def test_layout_puts_unpruned_first_and_picks_the_retention():
    t = pd.DataFrame([dict(method="fastv", retention=r, haystack=h, score=10 * h + r) for r in (0.25, 0.5) for h in (1, 2)]
                     + [dict(method="unpruned", retention=1.0, haystack=h, score=90.0 + h) for h in (1, 2)])
    out = guidance.layout(t, "haystack", 0.25)
    assert list(out.index) == ["unpruned", "fastv"] and list(out.columns) == [1, 2]
    assert out.loc["fastv", 2] == pytest.approx(20.25) and out.loc["unpruned", 1] == 91.0


def test_swap_question_names_another_panel_and_recomputes_the_answer():
    samples = load_samples("organism", n=40, tasks=["anchor"])
    originals, swaps = guidance.swapped(samples, seed=0)
    assert len(swaps) == len(originals) > 30
    for s, t in zip(originals, swaps):
        assert t.id == s.id + guidance.SWAP and t.image is s.image and t.metadata["panel"] != s.metadata["panel"]
        new = t.metadata["panel"]
        assert f"in panel {new} ," in t.question and t.prompt.endswith(t.question) or t.question in t.prompt
        inside = [o for o in s.metadata["objects"] if o["panel"] == new]
        if "is there" in t.question:
            colour, shape = t.question.split()[-3:-1]
            assert t.answer == ("yes" if any(o["colour"] == colour and o["shape"] == shape for o in inside) else "no")
        else:
            shape = t.question.split()[-2]
            assert [o["colour"] for o in inside if o["shape"] == shape] == [t.answer]
    again = guidance.swapped(samples, seed=0)[1]
    assert [t.question for t in again] == [t.question for t in swaps]  # seeded
    with pytest.raises(ValueError, match="anchor"):
        guidance.swap_question(load_samples("organism", n=1, tasks=["exist"])[0], None)


def test_kept_overlap_table():
    rows = pd.DataFrame([
        {"benchmark": "organism", "task": "anchor", "id": "a/0", "label": "x", "method": "fastv", "hook": "L",
         "layer": 2, "retention": 0.25, "seed": 0, "n_visual": 8, "kept": [0, 1, 2, 3]},
        {"benchmark": "organism", "task": "anchor", "id": "a/0/swap", "label": "x", "method": "fastv", "hook": "L",
         "layer": 2, "retention": 0.25, "seed": 0, "n_visual": 8, "kept": [2, 3, 4, 5]},
        {"benchmark": "organism", "task": "anchor", "id": "a/0", "label": "unpruned", "method": "unpruned", "hook": "",
         "layer": None, "retention": 1.0, "seed": 0, "n_visual": 8, "kept": None},
    ])
    t = guidance.kept_overlap_table(rows)
    assert len(t) == 1 and t.iloc[0]["id"] == "a/0" and t.iloc[0]["overlap"] == pytest.approx(2 / 6)
