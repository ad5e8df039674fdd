"""`tpx.memory`: parameter counts per part and the key/value cache of a prompt, checked against a real model's
parameters and the cache a real prefill leaves (unpruned and FastV-pruned), and on a `meta` build."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import tpx
from tpx.memory import footprint, parameter_counts
from tpx.models import layout, tiny, tiny_gemma3


def _cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def test_parts_add_up_to_the_models_parameters(tiny_models):
    model, _ = tiny_models["sdpa"]
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["vision"] == sum(p.numel() for p in model.model.vision_tower.parameters())
    assert counts["projector"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert counts["vision"] + counts["projector"] + counts["language"] == counts["total"]


def test_a_meta_build_counts_what_a_real_one_holds(one_thread):
    real, _ = tiny_gemma3(seed=1)
    with torch.device("meta"):
        shapes = type(real)(real.config)
    assert next(shapes.parameters()).is_meta
    assert parameter_counts(shapes) == parameter_counts(real)


def test_cache_equals_what_a_prefill_leaves(one_thread):
    model, processor = tiny(seed=2)
    inputs = make_inputs(processor, 1, seed=5)
    n_visual = int(layout(model, inputs).n_visual)
    n_text = inputs["input_ids"].shape[1] - n_visual
    f = footprint(model, n_visual, n_text, dtype=torch.float32, retention=0.25, layer=2)
    with torch.no_grad():
        full = model(**inputs, use_cache=True).past_key_values
        with tpx.pruning(model, "fastv", retention=0.25, layer=2) as run:
            pruned = model(**inputs, use_cache=True).past_key_values
    assert run.trace[0].n_keep == round(0.25 * n_visual)
    assert f["kv_gib"] * 2 ** 30 == _cache_bytes(full)
    assert f["kv_pruned_gib"] * 2 ** 30 == _cache_bytes(pruned) < _cache_bytes(full)
    assert f["weights_gib"] * 2 ** 30 == 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "match"), [(dict(retention=0.0), "retention must be in"),
                                               (dict(retention=1.5), "retention must be in"),
                                               (dict(layer=4), r"layer must be in \[0, 3\]"),
                                               (dict(visual_tokens=-1), "token counts must be")])
def test_bad_input_names_the_parameter(tiny_models, kwargs, match):
    model, _ = tiny_models["sdpa"]
    args = dict(visual_tokens=144, text_tokens=20) | kwargs
    with pytest.raises(ValueError, match=match):
        footprint(model, **args)
