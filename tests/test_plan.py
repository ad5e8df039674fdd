"""The plan, without a model: budgets, stage layers, the ingredients each stage needs, composition, and every
error a configuration can have (raised by `tpx.plan`, before any hook exists)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import every_bad_parameter

import tpx
from tpx import select
from tpx.layout import Layout
from tpx.methods import Method, Needs, Param
from tpx.plan import Plan, reachable

LLAVA = Layout(grids=((24, 24),))     # LLaVA-1.5: 576 visual tokens
TINY = Layout(grids=((12, 12),))      # the organism and the tiny LLaVA: 144
NEXT = Layout(grids=((4, 4), (6, 8)))  # the tiny LLaVA-NeXT: a base view and an unpadded crop grid


def test_budgets_of_the_literature_are_exact():
    kept = {round(r, 4): tpx.plan("fastv", r, n_layers=32, layout=LLAVA).stages[0].n_keep
            for r in (1 / 3, 1 / 4, 2 / 9, 1 / 9)}
    assert kept == {0.3333: 192, 0.25: 144, 0.2222: 128, 0.1111: 64}
    p = tpx.plan("sparsevlm", 2 / 9, n_layers=32, layout=LLAVA)
    assert p.layers == (3, 7, 16) and p.budgets == (303, 110, 36)
    p = tpx.plan("pdrop", 0.46875, n_layers=32, layout=LLAVA)
    assert p.layers == (8, 16, 24) and p.budgets == (288, 144, 72)
    assert tpx.plan("fastv", 0.25).budgets == (None,)  # no layout yet: known when the engine sees the input


def test_stage_layers_hooks_and_scaling():
    assert tpx.plan("fastv", 0.5, n_layers=4).layers == (2,)
    assert tpx.plan("fastv", 0.5, layer=3, n_layers=4).layers == (3,)
    assert tpx.plan("random", 0.5, n_layers=4).layers == (0,) and tpx.plan("random", 0.5).stages[0].hook == "E"
    assert tpx.plan("random", 0.5, hook="L", n_layers=4).layers == (2,)
    assert tpx.plan("pooling", 0.25, hook="L", layer=0, n_layers=4).layers == (0,)  # reads nothing from K−1
    assert tpx.plan("fastervlm", 0.5, n_layers=4).stages[0].hook == "V"
    assert tpx.plan("sparsevlm", 0.5, n_layers=4).layers == (1, 2, 3)   # 3, 7, 16 of 32 scaled to 4 layers
    assert tpx.plan("pdrop", 0.5, n_layers=16).layers == (4, 8, 12)
    assert tpx.plan("pdrop", 0.5, layers=(1, 2, 3), n_layers=4).layers == (1, 2, 3)


def test_stages_list_only_the_ingredients_their_configuration_needs():
    def needs(name, **params):
        return set(tpx.plan(name, 0.5, n_layers=32, **params).stages[0].ingredients)

    assert needs("fastv") == {"attn_last"}
    assert needs("alpha", alpha=1.0) == {"attn_last"}                     # α = 1 is FastV
    assert needs("alpha", uniqueness="last") == {"attn_last", "features", "last_feature"}
    assert needs("alpha") == {"attn_last", "normed_features", "normed_text", "text_mask", "visual_keys", "text_keys"}
    assert needs("sparsevlm") == {"attn_text", "text_mask"}
    assert needs("sparsevlm", recycle=True) == {"attn_text", "text_mask", "features"}
    assert "generator" not in needs("dart") and "generator" in needs("dart", pivot="random")
    assert needs("random") == {"features", "generator"} and needs("pooling") == {"features", "grid"}
    assert needs("visionzip") == {"cls_attn", "vision_keys", "vision_features"}


def test_seededness_is_declared():
    assert [n for n in tpx.list_methods() if tpx.get_method(n).is_seeded()] == ["random"]
    assert tpx.plan("dart", 0.5, pivot="random").stages[0].seeded
    assert not tpx.plan("dart", 0.5).stages[0].seeded
    for name in tpx.list_methods():  # a seeded configuration gets the run's generator, an unseeded one never does
        stage = tpx.plan(name, 0.5, n_layers=32).stages[0]
        assert stage.seeded == ("generator" in stage.ingredients)


@pytest.mark.parametrize(("method", "key", "bad"), every_bad_parameter(),
                         ids=[f"{m}-{k}-{b!r}" for m, k, b in every_bad_parameter()])
def test_every_bad_parameter_is_named_with_its_range(method, key, bad):
    with pytest.raises(ValueError, match=rf"^{key} must be "):
        tpx.plan(method, 0.5, **{key: bad})


def test_alpha_out_of_range_names_the_parameter_and_the_range():
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 2"):
        tpx.plan("alpha", 0.25, alpha=2)
    with pytest.raises(ValueError, match=r"uniqueness must be one of \('dup', 'last'\), got 'foo'"):
        tpx.plan("alpha", 0.25, uniqueness="foo")
    with pytest.raises(ValueError, match=r"pivot must be one of \('max', 'min', 'random'\), got 'mean'"):
        tpx.plan("dart", 0.25, pivot="mean")


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (("fastvv", 0.5), {}, r"unknown method 'fastvv'; did you mean 'fastv'\? known: .*pooling"),
    (("fastv", 0.0), {}, r"retention must be in \(0, 1\], got 0.0"),
    (("fastv", 1.5), {}, r"retention must be in \(0, 1\], got 1.5"),
    (("fastv", float("nan")), {}, "retention"),
    (("fastv", "half"), {}, "retention must be a number"),
    (("fastv", 0.5), {"hook": "E"}, "hook='E' is not supported by 'fastv'; supported: L"),
    (("fastv", 0.5), {"seed": 1.5}, "seed must be an int"),
    (("fastv", 0.5), {"layer": 2, "layers": (2,)}, "either layer= .* or layers="),
    (("pooling", 0.25), {"layer": 2}, "layer applies to hook 'L' only"),
    (("fastv", 0.5), {"layer": 0, "n_layers": 4}, r"layer=0 out of range.*K ≥ 1"),
    (("fastv", 0.5), {"layer": 4, "n_layers": 4}, r"layer=4 out of range: model has 4 decoder layers \(0..3\)"),
    (("fastv", 0.5), {"layer": True}, "layer=True out of range"),
    (("pdrop", 0.5), {"layers": (16, 8, 24)}, "strictly increasing"),
    (("fastv", 0.5), {"layers": (2, 3)}, r"'fastv' prunes at 1 layer\(s\)"),
    (("fastv", 0.5), {"window": 3}, r"unknown parameter\(s\) \['window'\] for method 'fastv'; allowed: none"),
    (("fastv", 0.5), {"positions": "shift"}, "positions must be one of"),
    (("fastv", 0.5), {"attention": "eager"}, "attention must be one of"),
    (("sparsevlm", 0.5), {"n_layers": 2}, "too shallow for 3 pruning stages"),
    (("sparsevlm", 0.5), {"layout": LLAVA}, "relative to the model's depth: pass n_layers"),
    (("pdrop", 2 / 9), {"n_layers": 32, "layout": LLAVA}, r"retention must be ≥ 0\.25"),
    (("pooling", 0.26), {"layout": TINY}, "pooling cannot keep exactly n_keep=37"),
    (("fastv", 0.001), {"layout": TINY}, "keeps 0 of 144 visual tokens"),
    (("dart", 0.5), {"n_visual_pivots": 200, "layout": TINY}, "n_visual_pivots must be at most the 144 visual"),
])
def test_every_error_is_raised_by_the_plan(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tpx.plan(*args, **kwargs)
    assert reachable(*args, **kwargs) is not None


def test_per_segment_budgets_need_every_segment_feasible():
    assert tpx.plan("pooling", 0.25, layout=NEXT).budgets == (16,)   # 4 of the 4x4 base view, 12 of the 6x8 crops
    with pytest.raises(ValueError, match="pooling cannot keep exactly"):
        tpx.plan("pooling", 0.3, layout=NEXT)                         # 19 → 5 + 14: no 4x4 grid pools to 5
    assert tpx.plan("fastervlm", 0.3, layout=NEXT).budgets == (19,)


def test_composition_acts_in_layer_order_on_what_the_previous_stage_left():
    composed = tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastv", 0.125, layer=2)
    assert [(s.method.name, s.layer, s.part) for s in composed.stages] == [("pooling", 0, 0), ("fastv", 2, 1)]
    assert composed.bind(n_layers=4, layout=TINY).budgets == (36, 18)
    with pytest.raises(ValueError, match=r"only 36 reach layer 2 \('pooling' at layer 0 kept them\); use retention ≤ 0.25"):
        (tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastv", 0.5, layer=2)).bind(layout=TINY)
    with pytest.raises(ValueError, match="composed stages must act at increasing layers"):
        tpx.plan("fastv", 0.5, layer=2) + tpx.plan("random", 0.25, hook="E")
    with pytest.raises(ValueError, match="must be the first stage"):
        tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastervlm", 0.1)
    with pytest.raises(ValueError, match="selects on the image grid, which needs all 144 visual tokens"):
        (tpx.plan("random", 0.5, hook="E") + tpx.plan("window_fastv", 0.25)).bind(layout=TINY)
    with pytest.raises(ValueError, match="made for 4 and 32 decoder layers"):
        tpx.plan("pooling", 0.25, hook="E", n_layers=4) + tpx.plan("fastv", 0.1, n_layers=32)
    three = composed + tpx.plan("fastv", 0.0625, layer=3)
    assert three.bind(n_layers=4, layout=TINY).budgets == (36, 18, 9)


def test_binding_checks_against_the_model_and_the_input():
    unbound = tpx.plan("fastv", 0.5, layer=6)
    assert unbound.n_layers is None and unbound.layout is None
    with pytest.raises(ValueError, match="layer=6 out of range: model has 4 decoder layers"):
        unbound.bind(n_layers=4)
    assert unbound.bind(n_layers=32, layout=LLAVA).budgets == (288,)
    native = tpx.plan("pooling", 0.25, hook="E").as_native()
    assert all(s.native for s in native.stages) and not any(s.native for s in unbound.stages)
    assert "fastv" in str(unbound.bind(n_layers=32, layout=LLAVA)) and "n_keep  288" in str(unbound.bind(layout=LLAVA))


def test_layout_counts_grids_and_locates_tokens():
    import torch

    layout = Layout(grids=((4, 4), (6, 8)))
    assert layout.n_visual == 64 and layout.sizes == (16, 48) and layout.starts == (0, 16)
    segment, rc = layout.locate(torch.tensor([[0, 15, 16, 63]]))
    assert segment.tolist() == [[0, 0, 1, 1]] and rc.tolist() == [[[0, 0], [3, 3], [0, 0], [5, 7]]]
    assert Layout(n_visual=10).n_visual == 10 and Layout(grids=((3, 3),)).grid == (3, 3)
    with pytest.raises(ValueError, match="does not match the grids"):
        Layout(grids=((3, 3),), n_visual=10)
    with pytest.raises(ValueError, match="not one grid"):
        _ = layout.grid


def test_registry_entries_keep_parameters_and_ingredients_apart():
    topk = dict(name="probe", hooks=("L",), layers=(2,), scorer=None, selector=select.topk, seeded=False)
    with pytest.raises(ValueError, match=r"parameter name\(s\) \['features'\] are taken"):
        Method(**topk, needs=Needs(), params={"features": Param.flag(True)})
    with pytest.raises(ValueError, match=r"needs unknown ingredient\(s\) \['value_norms'\]"):
        Method(**topk, needs=Needs(selector=("value_norms",)))
    with pytest.raises(ValueError, match="is seeded but needs no 'generator'"):
        Method(**dict(topk, seeded=True), needs=Needs())
    with pytest.raises(ValueError, match=r"window must be an int ≥ 1"):
        Method(**topk, needs=Needs(), params={"window": Param.window(0)})
    v = tpx.methods.variant("window_fastv", "window_fastv3", defaults={"window": 3})
    assert v.defaults["window"] == 3 and tpx.get_method("window_fastv").defaults["window"] == 2
    assert dataclasses.replace(v, name="x").name == "x"


def test_plan_is_pure():
    import subprocess
    import sys

    code = ("import sys, tpx, tpx.plan, tpx.layout, tpx.ingredients; tpx.plan('sparsevlm', 0.25, n_layers=32); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers' or m in ('tpx.engine', 'tpx.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert isinstance(tpx.plan("fastv", 0.5), Plan)
