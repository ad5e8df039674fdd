"""The registry: names, lookups, registration, and the pure-function boundary."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import tpx
from tpx import ingredients, methods

ISSUE_2_METHODS = {"random", "pooling", "fastv", "fastv_vis", "window_fastv"}


def test_registry_holds_the_foundation_methods():
    assert ISSUE_2_METHODS <= set(tpx.list_methods())
    assert tpx.list_methods("fastv*") == ["fastv", "fastv_vis"]


def test_every_method_is_well_formed():
    for name in tpx.list_methods():
        m = tpx.get_method(name)
        assert m.name == name and m.paper and m.hooks
        assert set(m.ingredients) <= set(ingredients.INGREDIENTS)
        assert not set(m.params) & set(ingredients.INGREDIENTS)  # parameters and tensors never share a name
        if "L" in m.hooks:
            assert m.layers and all(k >= 1 for k in m.layers)


def test_get_method_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown method 'windw_fastv'; did you mean 'window_fastv'\?"):
        tpx.get_method("windw_fastv")


def test_register_refuses_a_duplicate_and_variants_do_not_mutate():
    with pytest.raises(ValueError, match="already registered"):
        methods.register(tpx.get_method("fastv"))
    v = methods.variant("window_fastv", "window_fastv3", defaults={"window": 3})
    assert v.defaults["window"] == 3 and tpx.get_method("window_fastv").defaults["window"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.name = "x"
    with pytest.raises(TypeError):
        v.defaults["window"] = 4


def test_pure_modules_never_import_transformers():
    code = "import sys, tpx, tpx.scores, tpx.select, tpx.dedup, tpx.merge, tpx.schedules, tpx.analysis.spatial, tpx.methods; print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'seaborn', 'ipywidgets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_methods_shows_hook_defaults_and_source():
    rows = {m.name: m for m in tpx.list_methods(details=True)}
    assert list(rows) == tpx.list_methods()
    assert rows["cdpruner"].hooks == ("E",) and "arXiv 2506.10967" in rows["cdpruner"].source
    assert rows["vispruner"].defaults == {"important_share": 0.5} and rows["vispruner"].hooks[0] == "V"
    assert rows["hiprune"].defaults == {"anchor_share": 0.1} and "arXiv 2508.00553" in rows["hiprune"].source
    assert rows["idpruner"].defaults == {"importance_weight": 0.5} and "arXiv 2602.13315" in rows["idpruner"].source
    assert rows["dart"].defaults["pivot_order"] == "rank" and rows["fastv"].layers == (2,)
    assert "python_set" in tpx.get_method("dart").params["pivot_order"].choices
