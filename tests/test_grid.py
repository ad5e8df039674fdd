"""The experiment grid and the one grid runner (`evaluate(configs=...)`)."""

import pandas as pd
import pytest

from tpx.data import load_samples
from tpx.evaluate import evaluate
from tpx.grid import UNPRUNED, Config, grid, seeded


def test_seeded_follows_the_method_and_its_parameters():
    assert seeded("random")
    assert not seeded("fastv") and not seeded("pooling")
    assert seeded("dart", {"pivot": "random"}) and not seeded("dart")


def test_grid_runs_deterministic_methods_once_and_k_only_at_hook_l():
    cells = grid(["fastv", "random", "pooling", "pdrop"], [0.25, 0.5], layers=[1, 2], seeds=[0, 1, 2])
    assert cells[0] == Config(UNPRUNED, 1.0, label=UNPRUNED)
    fastv = [c for c in cells if c.method == "fastv"]
    assert {(c.layer, c.retention, c.seed) for c in fastv} == {(k, r, 0) for k in (1, 2) for r in (0.25, 0.5)}
    rand = [c for c in cells if c.method == "random"]
    assert {c.seed for c in rand} == {0, 1, 2} and {c.layer for c in rand} == {None}  # hook E: no K
    assert {c.layer for c in cells if c.method == "pdrop"} == {None}  # its own stage layers
    assert len(cells) == len(set(cells))


def test_grid_hooks_and_depth_labels():
    cells = grid(["random", "pooling"], [0.25], hooks=["L", "E"], layers=[1, 2], seeds=[0], baseline=False,
                 label_depth=True)
    labels = sorted(c.label for c in cells)
    assert labels == ["pooling @E", "pooling @L1", "pooling @L2", "random @E", "random @L1", "random @L2"]
    auto = grid(["random", "fastv"], [0.25], hooks=["L", "E"], layers=[2], baseline=False)
    assert sorted(c.label for c in auto) == ["fastv @L2", "random @E", "random @L2"]
    plain = grid(["random", "fastv"], [0.25], layers=[2], baseline=False)
    assert sorted(c.label for c in plain) == ["fastv", "random"]


def test_variants_carry_their_parameters_in_the_label():
    cells = grid({"dart": {"method": "dart"}, "dart:random": {"method": "dart", "pivot": "random"}}, [0.25],
                 seeds=[0, 1], baseline=False)
    assert [(c.label, c.seed) for c in cells] == [("dart", 0), ("dart:random", 0), ("dart:random", 1)]
    assert cells[1].kwargs() == {"retention": 0.25, "seed": 0, "pivot": "random"}
    with pytest.raises(ValueError, match="must name its 'method'"):
        grid({"x": {"pivot": "max"}}, [0.25])


def test_grid_runner_equals_one_evaluate_call_per_configuration(tiny):
    """The single runner gives the rows the per-question loops got from one `evaluate` call per entry."""
    model, processor = tiny
    samples = load_samples("organism", n=2, tasks=["exist", "count"])
    variants = {"fastv": {"method": "fastv"}, "dart:random": {"method": "dart", "pivot": "random"},
                "random": {"method": "random"}}
    cells = grid(variants, [0.25], layers=[1, 2], seeds=[0, 1])
    df = evaluate(model, processor, samples, configs=cells, batch_size=2, max_new_tokens=2, progress=False)
    frames = [evaluate(model, processor, samples, methods=[None], batch_size=2, max_new_tokens=2, progress=False)]
    for c in cells[1:]:
        kw = {k: v for k, v in c.kwargs().items() if k not in ("retention", "seed")}
        frames.append(evaluate(model, processor, samples, methods=[c.method], retentions=[c.retention],
                               seeds=[c.seed], batch_size=2, max_new_tokens=2, progress=False, **kw)
                      .assign(label=c.label))
    old = pd.concat(frames, ignore_index=True)
    cols = ["id", "task", "method", "retention", "seed", "label", "hook", "layer", "answer", "score", "n_keep",
            "kept_row", "coverage"]
    pd.testing.assert_frame_equal(df[cols], old[cols])
    def kept(frame):
        return [None if not isinstance(k, list | tuple) and pd.isna(k) else list(k) for k in frame.kept]

    assert kept(df) == kept(old)
    assert set(df.label) == {UNPRUNED, "fastv @L1", "fastv @L2", "dart:random @L1", "dart:random @L2", "random @E"}
    assert set(df[df.method == "fastv"].layer) == {1, 2}
    assert len(df[df.method == "dart"]) == 2 * 2 * len(samples)  # 2 K × 2 seeds


def test_runner_refuses_keywords_beside_configs_and_ambiguous_labels(tiny):
    model, processor = tiny
    samples = load_samples("organism", n=1, tasks=["exist"])
    with pytest.raises(ValueError, match="inside configs"):
        evaluate(model, processor, samples, configs=grid(["fastv"], [0.25]), alpha=0.3)
    twice = [Config("fastv", 0.25, layer=1, label="x"), Config("fastv", 0.25, layer=2, label="x")]
    with pytest.raises(ValueError, match="label 'x' names two configurations"):
        evaluate(model, processor, samples, configs=twice, progress=False)


def test_reachable_skips_cells_with_the_plans_reason(tiny):
    from tpx.evaluate import reachable

    model, processor = tiny
    samples = load_samples("organism", n=1, tasks=["exist"])
    cells = [Config(UNPRUNED), Config("fastv", 0.25), Config("sparsevlm", 1 / 9), Config("pdrop", 1 / 9),
             Config("pdrop", 1 / 3), Config("pooling", 13 / 144), Config("fastv", 0.25, layer=9, label="fastv @L9")]
    ok, skipped = reachable(model, processor, samples, cells)
    assert ok == [cells[0], cells[1], cells[2], cells[4]]
    reasons = dict(zip(skipped["label"], skipped["reason"]))
    assert "pdrop can reach" in reasons["pdrop"] and "pooling cannot keep" in reasons["pooling"]
    assert "layer=9 out of range" in reasons["fastv @L9"]


@pytest.mark.parametrize(("family", "unreachable"), [("tiny-llava-next", 1 / 80), ("tiny-qwen2-vl", 5 / 9)])
def test_rows_and_reachable_read_the_layout(family, unreachable, one_thread):
    """N and the grids come from the adapter's layout (LLaVA-NeXT: base and crop grids, newlines not counted;
    Qwen2-VL: each image's merged grid), and a pooling budget no grid can hold is skipped with its reason."""
    from tpx.evaluate import evaluate, layouts, model_inputs, reachable
    from tpx.select import budget
    from tpx.models import layout, load

    model, processor = load(family)
    samples = load_samples("organism", n=1, tasks=["exist", "count"])
    found = layouts(model, processor, samples)
    assert len(found) == 1  # the organism's images all have one size
    truth = layout(model, model_inputs(processor, samples[:1], model))
    assert found[0].grids == truth.grids and found[0].n_visual == truth.n_visual
    n = truth.n_visual
    cells = [Config(UNPRUNED), Config("fastv", 0.5, layer=1), Config("pooling", unreachable)]
    ok, skipped = reachable(model, processor, samples, cells)
    assert ok == cells[:2] and list(skipped["label"]) == ["pooling"] and "pooling" in skipped["reason"].iloc[0]
    df = evaluate(model, processor, samples, configs=ok, batch_size=2, max_new_tokens=1, progress=False)
    assert set(df.n_visual) == {n} and set(df[df.method == UNPRUNED].n_keep) == {n}
    assert all([tuple(g) for g in grids] == list(truth.grids) for grids in df.grids)
    fastv = df[df.method == "fastv"]
    assert all(max(k) < n for k in fastv.kept) and set(fastv.n_keep) == {budget(0.5, n)}
