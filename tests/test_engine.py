"""Engine oracles over every registered method × hook × attention kernel × batch shape.

1. retention 1.0 reproduces the unpruned model exactly (logits and greedy tokens);
2. pruned logits and greedy tokens equal the mask reference (dropped positions masked for layers ≥ K);
3. scores from recomputed rows equal scores from eager attention maps;
plus the trace, positions="renumber", composed plans, hook removal and input validation.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import every_bad_parameter, make_inputs
from reference import (
    MaskReference,
    check_mask_reference,
    check_retention_one,
    generate_positions,
    greedy,
    reference_generate,
    spy,
)

import tpx
import tpx.models
from tpx import scores, select
from tpx.methods import Method, Needs

N_NEW = 4


def _cls_mean(cls_attn):
    return cls_attn.float().mean(dim=1)


def _vision_pool(vision_features, n_keep, grid):
    return select.pool2d(vision_features, n_keep, grid)


# engine-level probes of hook "V" (subset and merge in vision space), independent of the registry
V_PROBES = [
    Method("v_cls_topk", hooks=("V",), layers=(), scorer=_cls_mean, selector=select.topk,
           needs=Needs(scorer=("cls_attn",)), seeded=False, paper="test probe"),
    Method("v_pool", hooks=("V",), layers=(), scorer=None, selector=_vision_pool,
           needs=Needs(selector=("vision_features", "grid")), seeded=False, paper="test probe"),
]

# A method that needs a tensor no registered method used (value vectors): one registry entry, a pure scorer
# (scores.value_aware_attention) and one ingredient entry ("visual_values"); no engine or adapter change.
VATP = Method(
    name="fastv_vatp", hooks=("L",), layers=(2,), scorer=scores.value_aware_attention, selector=select.topk,
    needs=Needs(scorer=("attn_last", "visual_values")), seeded=False,
    paper="Guo et al., VATP, EMNLP 2024, arXiv 2406.12335, on FastV's row (Chen et al., arXiv 2403.06764)",
)
CASES = [(name, hook) for name in tpx.list_methods() for hook in tpx.get_method(name).hooks]
CASES += [(m, "V") for m in V_PROBES] + [(VATP, "L")]
IDS = [f"{getattr(n, 'name', n)}-{h}" for n, h in CASES]
# pdrop's equivalent budget cannot go below ~N/n_layers on a 4-layer model (layer 0 sees all tokens)
RETENTION = {"pdrop": 0.5}


@pytest.mark.parametrize(("name", "hook"), CASES, ids=IDS)
def test_retention_one_is_exact(tiny_models, attn, batch, name, hook):
    model, processor = tiny_models[attn]
    check_retention_one(model, make_inputs(processor, batch), name, hook, N_NEW)


@pytest.mark.parametrize(("name", "hook"), CASES, ids=IDS)
def test_matches_mask_reference(tiny_models, attn, batch, name, hook):
    model, processor = tiny_models[attn]
    retention = RETENTION.get(getattr(name, "name", name), 0.25)
    check_mask_reference(model, make_inputs(processor, batch, seed=10), name, hook, retention, N_NEW)


@pytest.mark.parametrize("name", ["fastv", "fastv_vis", "window_fastv"])
def test_rows_equal_eager_maps(tiny_models, batch, name):
    model, processor = tiny_models["eager"]
    inputs = make_inputs(processor, batch, seed=20)
    with torch.no_grad():
        with tpx.pruning(model, name, retention=0.25, attention="rows") as rows:
            model(**inputs)
        with tpx.pruning(model, name, retention=0.25, attention="maps") as maps:
            model(**inputs)
    torch.testing.assert_close(rows.trace[0].scores, maps.trace[0].scores, atol=1e-6, rtol=0)
    assert torch.equal(rows.trace[0].kept, maps.trace[0].kept)


def test_a_method_needing_a_new_tensor_is_an_entry_and_pure_functions(tiny_models, batch):
    model, processor = tiny_models["eager"]
    inputs = make_inputs(processor, batch, seed=21)
    assert tpx.plan(VATP, 0.25, n_layers=4).stages[0].ingredients == {"attn_last", "visual_values"}
    with torch.no_grad():
        with tpx.pruning(model, VATP, retention=0.25) as run:
            model(**inputs)
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    # the oracle: eager attention of the last token at layer K−1 = 1, times ‖v‖₁ from the layer's own projection
    layer = model.model.language_model.layers[1]
    visual = tpx.models.layout(model, inputs).positions
    values = layer.self_attn.v_proj(layer.input_layernorm(out.hidden_states[1]))
    attn = out.attentions[1][:, :, -1].gather(2, visual[:, None].expand(-1, out.attentions[1].shape[1], -1))
    want = attn.float().mean(1) * select.take(values, visual).float().abs().sum(-1)
    torch.testing.assert_close(run.trace[0].scores, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(run.trace[0].kept, select.topk(want, run.trace[0].n_keep))


def test_budgets_of_the_literature_are_exact():
    from tpx.models import tiny

    model, processor = tiny(image_size=336, patch_size=14, text_hidden=32, vision_hidden=16, vision_layers=1)
    inputs = make_inputs(processor, 1)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 576
    kept = {}
    with torch.no_grad():
        for retention in (1 / 3, 1 / 4, 2 / 9, 1 / 9):
            with tpx.pruning(model, "fastv", retention=retention) as run:
                model(**inputs)
            kept[round(retention, 4)] = run.trace[0].kept.shape[1]
        with tpx.pruning(model, "dart", retention=2 / 9, exact_budget=False) as run:
            logits = model(**inputs).logits
    assert kept == {0.3333: 192, 0.25: 144, 0.2222: 128, 0.1111: 64}
    # DART's official count keeps its 4 visual pivots on top of the budget: 132 at "128"
    assert run.trace[0].n_keep == 132 and logits.shape[1] == inputs["input_ids"].shape[1] - 576 + 132


def test_trace_records_grid_cells_scores_and_parameters(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 2)
    with torch.no_grad(), tpx.pruning(model, "window_fastv", retention=0.25, window=2, seed=5) as run:
        model(**inputs)
    entry = run.trace[0]
    rows, cols = entry.grid
    assert (rows, cols) == (12, 12) and entry.n_visual == 144 and entry.n_keep == 36 and entry.layer == 2
    assert entry.params == {"window": 2, "retention": 0.25, "seed": 5, "positions": "keep"}
    assert torch.equal(entry.grid_rc[..., 0] * cols + entry.grid_rc[..., 1], entry.kept)
    assert entry.scores.shape == (2, 144) and not torch.isnan(entry.scores).any()
    # 2x2 windows keeping 36 of 144 keep exactly one token per window: the best-scored one
    win = (entry.grid_rc[..., 0] // 2) * 6 + entry.grid_rc[..., 1] // 2
    assert torch.equal(win.sort(dim=1).values, torch.arange(36).expand(2, -1))
    best = entry.scores.view(2, 6, 2, 6, 2).permute(0, 1, 3, 2, 4).reshape(2, 36, 4).max(-1).values
    torch.testing.assert_close(entry.scores.gather(1, entry.kept).sort(1).values, best.sort(1).values)


@pytest.mark.parametrize("name", ["downsample", "visionzip"])
def test_hook_v_merges_are_projected_when_vision_and_llm_widths_match(name):
    """The organism's vision tower is as wide as its LLM (128): merged vision features must still be projected."""
    from tpx.models import tiny

    model, processor = tiny(vision_hidden=64, text_hidden=64, seed=2)
    inputs = make_inputs(processor, 2, seed=23)
    check_retention_one(model, inputs, name, "V", N_NEW)
    check_mask_reference(model, inputs, name, "V", 0.25, N_NEW)


def test_timing_is_off_by_default_and_changes_nothing(tiny_models):
    """`timing=True` records each stage's choosing time beside its trace entry; the answers stay bit for bit."""
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 2, seed=22)
    with torch.no_grad():
        with tpx.pruning(model, "sparsevlm", retention=0.25) as plain:
            want = model(**inputs).logits
        with tpx.pruning(model, "sparsevlm", retention=0.25, timing=True) as timed:
            got = model(**inputs).logits
    assert torch.equal(got, want) and all(e.select_ms is None for e in plain.trace)
    assert len(timed.trace) == 3 and all(isinstance(e.select_ms, float) and e.select_ms > 0 for e in timed.trace)
    with pytest.raises(ValueError, match="timing must be True or False"):
        with tpx.pruning(model, "fastv", retention=0.25, timing=1):
            pass


def test_same_seed_same_selection(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 2)
    kept = []
    with torch.no_grad():
        for seed in (0, 0, 1):
            with tpx.pruning(model, "random", retention=0.3, seed=seed) as run:
                model(**inputs)
            kept.append(run.trace[0].kept)
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])
    assert all(bool((k[:, 1:] > k[:, :-1]).all()) for k in kept)


def test_renumbered_positions_equal_the_shortened_sequence(tiny_models, attn):
    """Hook E with renumbered positions is exactly the model run on the shortened prompt."""
    model, processor = tiny_models[attn]
    inputs = make_inputs(processor, 1, seed=30)
    with torch.no_grad():
        with tpx.pruning(model, "random", retention=0.25, positions="renumber", seed=2) as run:
            logits = model(**inputs).logits
            tokens, _ = greedy(model, inputs, N_NEW)
        ids = inputs["input_ids"]
        visual = (ids == model.config.image_token_id).nonzero()[:, 1]
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        embeds = model.get_input_embeddings()(ids).index_put((torch.zeros_like(visual), visual), features)

        def shortened(kept):
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
            keep[visual] = False
            keep[visual[kept[0]]] = True
            short = embeds[:, keep]
            return short, torch.ones(short.shape[:2], dtype=torch.long)

        short, mask = shortened(run.trace[0].kept)
        ref_logits = model(inputs_embeds=short, attention_mask=mask).logits
        short, mask = shortened(run.trace[1].kept)  # generate's prefill drew its own subset
        ref_tokens = model.generate(inputs_embeds=short, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False,
                                    pad_token_id=model.config.text_config.pad_token_id)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    assert torch.equal(tokens, ref_tokens)


def test_hooks_removed_on_exit_and_on_error(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1)

    def hooks():  # transformers installs its own output-capturing hooks once; compare with what was there
        return [(name, tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for name, m in model.named_modules()]

    before = hooks()
    with pytest.raises(RuntimeError, match="boom"):
        with tpx.pruning(model, "fastv", retention=0.5, attention="rows"):
            assert hooks() != before
            raise RuntimeError("boom")
    assert hooks() == before
    with pytest.raises(ValueError, match="image tokens"):
        with tpx.pruning(model, "fastervlm", retention=0.5):
            model(input_ids=inputs["input_ids"][:, -5:])
    assert hooks() == before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"retention": 0.0}, ValueError, r"retention must be in \(0, 1\], got 0.0"),
        ({"retention": 1.5}, ValueError, r"retention must be in \(0, 1\], got 1.5"),
        ({"retention": -0.2}, ValueError, "retention"),
        ({"retention": float("nan")}, ValueError, "retention"),
        ({"retention": 0.5, "layer": 0}, ValueError, r"layer=0 out of range.*K ≥ 1"),
        ({"retention": 0.5, "layer": 4}, ValueError, r"layer=4 out of range: model has 4 decoder layers \(0..3\)"),
        ({"retention": 0.5, "hook": "E"}, ValueError, "hook='E' is not supported by 'fastv'; supported: L"),
        ({"retention": 0.5, "window": 3}, ValueError, r"unknown parameter\(s\) \['window'\] for method 'fastv'"),
        ({"retention": 0.5, "positions": "shift"}, ValueError, "positions must be one of"),
        ({"retention": 0.5, "attention": "maps"}, ValueError, "attn_implementation='eager'"),
        ({"retention": 0.5, "seed": 1.5}, ValueError, "seed must be an int"),
    ],
)
def test_bad_arguments_raise_before_any_hook(tiny_models, kwargs, error, match):
    model, _ = tiny_models["sdpa"]
    with pytest.raises(error, match=match):
        with tpx.pruning(model, "fastv", **kwargs):
            pass
    assert not len(model._forward_pre_hooks)


def test_alpha_out_of_range_raises_on_entering_the_with(tiny_models):
    model, processor = tiny_models["sdpa"]
    entered = []
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 2"):
        with tpx.pruning(model, "alpha", retention=0.25, alpha=2):
            entered.append(True)  # never reached: the plan is built on entry
    assert not entered and not len(model._forward_pre_hooks)


@pytest.mark.parametrize(("method", "key", "bad"), every_bad_parameter(),
                         ids=[f"{m}-{k}-{b!r}" for m, k, b in every_bad_parameter()])
def test_every_bad_parameter_raises_on_entering_the_with(tiny_models, method, key, bad):
    model, _ = tiny_models["sdpa"]
    with pytest.raises(ValueError, match=rf"^{key} must be "):
        with tpx.pruning(model, method, retention=0.5, **{key: bad}):
            pytest.fail("entered the with block")
    assert not len(model._forward_pre_hooks)


def test_unknown_method_lists_known_ones(tiny_models):
    model, _ = tiny_models["sdpa"]
    with pytest.raises(ValueError, match=r"unknown method 'fastvv'; did you mean 'fastv'\? known: .*pooling"):
        with tpx.pruning(model, "fastvv", retention=0.5):
            pass


def test_layer_with_hook_e_is_an_error(tiny_models):
    model, _ = tiny_models["sdpa"]
    with pytest.raises(ValueError, match="layer applies to hook 'L' only"):
        with tpx.pruning(model, "pooling", retention=0.25, layer=2):
            pass


def test_unsupported_model_and_cache(tiny_models):
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(TypeError, match="unsupported model LlamaForCausalLM.*supported model types: .*llava"):
        with tpx.pruning(llm, "fastv", retention=0.5):
            pass
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1)
    with pytest.raises(TypeError, match="needs a DynamicCache.*StaticCache"):
        with torch.no_grad(), tpx.pruning(model, "fastv", retention=0.5):
            model.generate(**inputs, max_new_tokens=2, cache_implementation="static")


def test_right_padding_is_rejected(tiny_models):
    model, processor = tiny_models["sdpa"]
    processor.tokenizer.padding_side = "right"
    try:
        inputs = processor(images=[make_inputs.__globals__["random_image"](i) for i in range(2)],
                           text=["USER: <image>\nHi ASSISTANT:", "USER: <image>\nWhat is shown here? ASSISTANT:"],
                           return_tensors="pt", padding=True)
    finally:
        processor.tokenizer.padding_side = "left"
    with pytest.raises(ValueError, match="left-padded"):
        with torch.no_grad(), tpx.pruning(model, "fastv", retention=0.5):
            model(**inputs)


def test_pooling_budget_that_no_grid_can_hold_is_an_error(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1)
    n_keep = select.budget(0.26, 144)  # 37 is prime and larger than 12
    assert n_keep == 37
    with pytest.raises(ValueError, match="pooling cannot keep exactly n_keep=37"):
        with torch.no_grad(), tpx.pruning(model, "pooling", retention=0.26):
            model(**inputs)


def test_composed_plan_matches_mask_reference(tiny_models, attn, batch):
    """pooling at hook E, then fastv at layer 2 on what pooling left (FastV on a training-aware model)."""
    model, processor = tiny_models[attn]
    inputs = make_inputs(processor, batch, seed=30)
    pooling = tpx.get_method("pooling")
    outputs: list = []
    spied = dataclasses.replace(pooling, selector=spy(pooling.selector, outputs))
    composed = tpx.plan(spied, 0.25, hook="E") + tpx.plan("fastv", 0.125, layer=2)
    positions = generate_positions(inputs["attention_mask"])
    with torch.no_grad():
        with tpx.pruning(model, composed) as run:
            logits = model(**inputs, position_ids=positions).logits
        with tpx.pruning(model, composed) as again:
            tokens, steps = greedy(model, inputs, N_NEW)
        assert torch.equal(again.kept_positions, run.kept_positions)
        pooled, fastv = run.trace
        assert (pooled.method, pooled.layer, fastv.method, fastv.layer) == ("pooling", 0, "fastv", 2)
        assert fastv.n_keep == select.budget(0.125, pooled.n_visual)
        # fastv chose only among the tokens pooling kept (merged tokens sit at their window's first position)
        assert torch.isin(fastv.kept, pooled.kept).all()
        visual = (inputs["input_ids"] == model.config.image_token_id).nonzero()[:, 1].view(batch, -1)
        merged = outputs[0]
        stages = [(0, run.stage_positions[0], (visual.gather(1, merged.index), merged.features)),
                  (2, run.stage_positions[2], None)]
        ref = MaskReference(model, stages, inputs["input_ids"].shape[1])
        try:
            ref_full = model(**inputs, position_ids=positions).logits
            ref_tokens, ref_steps = reference_generate(model, inputs, ref, N_NEW)
        finally:
            ref.remove()
    kept = run.kept_positions
    ref_logits = ref_full.gather(1, kept[..., None].expand(-1, -1, ref_full.shape[-1]))
    real = inputs["attention_mask"].gather(1, kept).bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=0)
    assert torch.equal(tokens, ref_tokens)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_composed_plan_errors_and_one_context_per_model(tiny_models):
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 1, seed=31)
    with pytest.raises(ValueError, match="composed stages must act at increasing layers"):
        tpx.plan("fastv", 0.5, layer=2) + tpx.plan("fastv", 0.25, layer=2)
    with pytest.raises(ValueError, match="composed stages must act at increasing layers"):
        tpx.plan("fastv", 0.5, layer=2) + tpx.plan("random", 0.25, hook="E")
    with pytest.raises(ValueError, match="same positions"):
        tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastv", 0.1, layer=2, positions="renumber")
    too_many = tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastv", 0.5, layer=2)
    with pytest.raises(ValueError, match=r"only 36 reach layer 2 \('pooling' at layer 0 kept them\)"):
        with tpx.pruning(model, too_many):  # LLaVA's fixed grid: budgets are known on entry
            pass
    with tpx.pruning(model, "fastv", retention=0.5, layer=2):
        with pytest.raises(ValueError, match="already open on this model; compose plans instead"):
            with tpx.pruning(model, "random", retention=0.25, hook="E"):
                pass
    assert not len(model._forward_pre_hooks)
    with pytest.raises(ValueError, match="a Plan carries its own settings"):
        with tpx.pruning(model, tpx.plan("fastv", 0.5), retention=0.5):
            pass
    with torch.no_grad():  # nothing left behind: a fresh run starts from all visual tokens
        with tpx.pruning(model, "fastv", retention=0.25, layer=2) as run:
            model(**inputs)
    assert len(run.trace) == 1 and run.trace[0].n_keep == select.budget(0.25, run.trace[0].n_visual)


def test_a_checkpoints_own_compression_is_the_first_stage(tiny_models):
    """config.tpx_compression is put first by tpx.pruning (alone when no method is given); nothing at load."""
    model, processor = tiny_models["sdpa"]
    inputs = make_inputs(processor, 2, seed=32)
    composed = tpx.plan("pooling", 0.25, hook="E") + tpx.plan("fastv", 0.125, layer=2)
    model.config.tpx_compression = {"method": "pooling", "retention": 0.25, "hook": "E"}
    try:
        with torch.no_grad():
            with tpx.pruning(model) as own:
                alone = model(**inputs).logits
            with tpx.pruning(model, "fastv", retention=0.125, layer=2) as run:
                pruned = model(**inputs).logits
            with tpx.pruning(model, "fastv", retention=0.125, layer=2, native=False) as bare:
                model(**inputs)
        assert [e.method for e in own.native_trace] == ["pooling"] and not own.trace
        assert [e.method for e in run.native_trace] == ["pooling"] and [e.method for e in run.trace] == ["fastv"]
        assert run.layers == (2,) and [e.method for e in bare.trace] == ["fastv"] and not bare.native_trace
        with pytest.raises(ValueError, match="cannot follow a checkpoint's own compression"):
            with tpx.pruning(model, "fastv", retention=0.1, positions="renumber"):
                pass
    finally:
        del model.config.tpx_compression
    with torch.no_grad():
        with tpx.pruning(model, composed) as same:
            want = model(**inputs).logits
        with tpx.pruning(model, tpx.plan("pooling", 0.25, hook="E")):
            want_alone = model(**inputs).logits
    assert torch.equal(pruned, want) and torch.equal(alone, want_alone)
    assert torch.equal(run.kept_positions, same.kept_positions)
