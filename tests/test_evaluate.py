"""Evaluation loop: table structure, batch invariance, cache, blind mode, scorers, summary, CLI and 2 processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import pytest

from tpx import evaluate as ev
from tpx import evaluate_cli
from tpx.data import SHORT_ANSWER, Sample, load_samples
from tpx.evaluate import evaluate, score, summarize

ROOT = Path(__file__).resolve().parents[1]
# the trained organism, once its issue exports it to data/organism/<name>/ (checkpoints/ holds training runs)
ORGANISMS = sorted(p.parent for p in (ROOT / "data" / "organism").glob("*/config.json"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples():
    # questions of different lengths, so batches are left-padded
    return load_samples("organism", n=3, tasks=["exist", "count", "locate", "anchor"])


def models(tiny):
    from tpx.models import load

    return [("tiny", tiny)] + [(p.name, load(p)) for p in ORGANISMS[:1]]


def test_table_structure(tiny, samples):
    model, processor = tiny
    some = samples[::3]
    df = evaluate(model, processor, some, methods=[None, "fastv", "pooling"], retentions=[0.25, 0.5], seeds=[0, 1],
                  batch_size=4, max_new_tokens=2, progress=False)
    n = len(some)
    assert len(df) == n * (1 + 2 * 2)  # unpruned once; 2 deterministic methods x 2 retentions, first seed only
    assert set(df.seed) == {0}
    assert list(df.columns[:14]) == ["id", "benchmark", "task", "method", "retention", "seed", "label", "hook",
                                     "layer", "blind", "question", "answer", "reference", "score"]
    assert set(df[df.method == "fastv"].hook) == {"L"} and set(df[df.method == "fastv"].layer) == {2}
    assert set(df[df.method == "pooling"].hook) == {"E"} and df[df.method == "pooling"].layer.isna().all()
    base = df[df.method == "unpruned"]
    assert len(base) == n and set(base.retention) == {1.0} and set(base.n_keep) == {144} and base.kept.isna().all()
    fastv = df[(df.method == "fastv") & (df.retention == 0.25)]
    assert set(fastv.n_keep) == {36} and all(len(k) == 36 and list(k) == sorted(k) for k in fastv.kept)
    assert fastv.kept_row.between(0, 1).all() and fastv.coverage.between(0, 1).all()
    pooled = df[(df.method == "pooling") & (df.retention == 0.25)]
    # 2x2 pooling: one representative (the group's first token) in every block, evenly spread
    assert (pooled.coverage == 1.0).all() and (pooled.kept_row == pooled.kept_col).all()
    assert df.score.isin([0.0, 1.0]).all()


@pytest.mark.parametrize("method", [None, "fastv", "pooling"])
def test_batch_8_equals_batch_1(tiny, samples, method):
    for name, (model, processor) in models(tiny):
        one = evaluate(model, processor, samples[:9], methods=[method], batch_size=1, max_new_tokens=4, progress=False)
        eight = evaluate(model, processor, samples[:9], methods=[method], batch_size=8, max_new_tokens=4,
                         progress=False)
        assert list(one.answer) == list(eight.answer), name
        if method is not None:
            assert [list(k) for k in one.kept] == [list(k) for k in eight.kept], name


def test_cache_reuses_and_force_recomputes(tiny, samples, tmp_path, monkeypatch):
    model, processor = tiny
    some = samples[::3]
    args = dict(methods=[None, "fastv"], retentions=[0.25], batch_size=2, max_new_tokens=2, progress=False,
                cache_dir=tmp_path)
    first = evaluate(model, processor, some, **args)
    assert len(list(tmp_path.glob("*.parquet"))) == 2
    calls = []
    real = ev._answer_batch
    monkeypatch.setattr(ev, "_answer_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = evaluate(model, processor, some, **args)
    assert not calls
    pd.testing.assert_frame_equal(first.drop(columns="kept"), again.drop(columns="kept"))
    assert [list(k) for k in first.kept[4:]] == [list(k) for k in again.kept[4:]]
    evaluate(model, processor, some[:2], **args)  # another data selection: computed
    assert len(calls) == 2
    calls.clear()
    evaluate(model, processor, some, **args, force=True)
    assert len(calls) == 2 * 2  # 4 samples in batches of 2, two configurations
    calls.clear()
    evaluate(model, processor, some, **{**args, "batch_size": 4})  # random's picks depend on the batch size
    assert len(calls) == 2


def test_blind_modes(tiny, samples):
    model, processor = tiny
    none = evaluate(model, processor, samples[:4], methods=[None], blind="no_image", max_new_tokens=3, progress=False)
    assert set(none.n_visual) == {0} and set(none.blind) == {"no_image"}
    blank = evaluate(model, processor, samples[:4], methods=[None, "fastv"], blind="blank", max_new_tokens=3,
                     progress=False)
    assert set(blank.n_visual) == {144} and set(blank.blind) == {"blank"}
    with pytest.raises(ValueError, match="no visual tokens to prune"):
        evaluate(model, processor, samples[:4], methods=["fastv"], blind="no_image", progress=False)


def test_validation_before_work(tiny, samples):
    model, processor = tiny
    with pytest.raises(ValueError, match="retention must be in"):
        evaluate(model, processor, samples, retentions=[1.5], progress=False)
    with pytest.raises(ValueError, match="unknown method 'fastvv'"):
        evaluate(model, processor, samples, methods=["fastvv"], progress=False)
    with pytest.raises(ValueError, match="unknown parameter"):
        evaluate(model, processor, samples, methods=["fastv"], alpha=0.3, progress=False)
    with pytest.raises(ValueError, match="blind must be one of"):
        evaluate(model, processor, samples, blind="dark", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, processor, samples, batch_size=0, progress=False)


def make(benchmark, answers, task="t", **meta):
    return Sample("x", None, "q", "q", answers, task, benchmark, meta)


def test_scorers_per_benchmark():
    assert score(make("pope_random", ["yes"]), "Yes, there is.") == 1.0
    assert score(make("pope", ["no"]), "There is no dog.") == 1.0
    assert score(make("mme", ["no"]), "No") == 1.0 and score(make("mme", ["yes"]), "Maybe yes") == 0.0
    assert score(make("gqa", ["red"]), "Red.") == 1.0
    assert score(make("textvqa", ["nikon"] * 3 + ["canon"] * 7), "Nikon") == pytest.approx(0.9)
    assert score(make("scienceqa_img", ["B"], options=["a", "b"]), "B") == 1.0
    assert score(make("mmbench", ["C"], options=["a", "b", "c"]), "A. cat") == 0.0
    box = dict(box=[10, 20, 50, 60], width=100, height=100)
    assert score(make("refcoco", ["dog"], **box), "[0.1, 0.2, 0.5, 0.6]") == 1.0
    assert score(make("refcocog", ["dog"], **box), "[0.6, 0.6, 0.9, 0.9]") == 0.0
    assert score(make("refcoco+", ["dog"], **box), "no box") == 0.0
    locate = load_samples("organism", n=1, tasks=["locate"])[0]
    assert score(locate, locate.answer) == 1.0 and score(locate, "r0") == 0.0
    with pytest.raises(ValueError, match="no scorer"):
        score(make("vqav2", ["x"]), "x")


def test_summarize():
    rows = [dict(id=str(i), benchmark="pope", task=t, method="m", retention=0.5, seed=0, answer=a, reference=r,
                 score=float(a == r), image_id=None)
            for i, (t, a, r) in enumerate([("random", "yes", "yes"), ("random", "no", "yes"),
                                           ("popular", "yes", "yes"), ("popular", "yes", "no")])]
    rows += [dict(id=f"m{i}", benchmark="mme", task="existence", method="m", retention=0.5, seed=0, answer=a,
                  reference=r, score=float(a == r), image_id=img)
             for i, (a, r, img) in enumerate([("yes", "yes", "a"), ("no", "no", "a"), ("yes", "no", "b"),
                                              ("no", "no", "b"), ("yes", "yes", "c")])]  # c lacks its pair
    rows += [dict(id="o", benchmark="organism", task="exist", method="m", retention=0.5, seed=0, answer="yes",
                  reference="yes", score=1.0, image_id=None)]
    out = summarize(pd.DataFrame(rows)).set_index("benchmark")
    # random: tp=1 fn=1 -> P=1 R=.5 F1=2/3; popular: tp=1 fp=1 -> P=.5 R=1 F1=2/3
    assert out.loc["pope", "score"] == pytest.approx(100 * 2 / 3)
    assert out.loc["mme", "score"] == pytest.approx((75 + 50)) and out.loc["mme", "n"] == 4  # acc 75 + acc+ 50
    assert out.loc["organism", "task"] == "exist" and out.loc["organism", "score"] == 100.0


def test_summarize_reports_the_mean_and_spread_over_seeds():
    rows = [dict(id=str(i), benchmark="organism", task="exist", method="random", label="random", retention=0.25,
                 seed=s, answer="", reference="", score=float(i < k), image_id=None)
            for s, k in ((0, 2), (1, 3), (2, 4)) for i in range(4)]  # 50, 75, 100 %
    out = summarize(pd.DataFrame(rows))
    assert len(out) == 1
    row = out.iloc[0]
    assert row.score == pytest.approx(75.0) and row.score_std == pytest.approx(25.0)
    assert (row.score_min, row.score_max, row.n_seeds, row.n) == (50.0, 100.0, 3, 4)
    per_seed = summarize(pd.DataFrame(rows), by_seed=True)
    assert per_seed["score"].tolist() == [50.0, 75.0, 100.0] and per_seed["seed"].tolist() == [0, 1, 2]


def test_cli_writes_csv(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert evaluate_cli.main(["--model", "tiny", "--benchmark", "organism", "--task", "exist,count", "--n", "2", "--method",
                    "unpruned,fastv", "--retention", "0.25,0.5", "--max-new-tokens", "3", "--out", str(out),
                    "--no-progress"]) == 0
    df = pd.read_csv(out)
    assert len(df) == 4 * (1 + 2) and set(df.method) == {"unpruned", "fastv"}
    assert "organism" in capsys.readouterr().out


def test_two_processes_gather_one_table(tmp_path):
    """`accelerate launch` with 2 CPU processes gives the same rows as one process (the gloo path)."""
    args = ["--model", "tiny", "--benchmark", "organism", "--task", "exist,count", "--n", "2", "--method",
            "unpruned,fastv", "--max-new-tokens", "2", "--batch-size", "2", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with socket.socket() as s:  # a free port, so parallel sessions do not meet on accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(port), "-m", "tpx", "evaluate"]
    two = subprocess.run(launch + args + ["--out", str(tmp_path / "two.csv")], env=env, capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "on 2 process(es)" in two.stderr, two.stderr[-3000:]
    assert evaluate_cli.main(args + ["--out", str(tmp_path / "one.csv")]) == 0
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    pd.testing.assert_frame_equal(one, two)


def test_grid_shares_batches_and_image_features_without_changing_answers(tiny, samples, monkeypatch):
    """The grid runner prepares each batch and encodes its images once for all configurations of a group (hook V
    methods excepted: their tower hooks must run); every answer equals answering each configuration alone."""
    from tpx.grid import grid

    model, processor = tiny
    configs = (grid(["fastv", "random"], [0.25, 0.5], hooks=["L"], layers=[1], seeds=[0, 1], label_depth=True)
               + grid(["random"], [0.25], hooks=["E"], seeds=[3], label_depth=True, baseline=False)
               + grid(["fastervlm"], [0.25], hooks=["V"], label_depth=True, baseline=False))
    tower = model.model.vision_tower
    runs = []
    handle = tower.register_forward_hook(lambda *a: runs.append(1))
    try:
        together = evaluate(model, processor, samples, configs=configs, batch_size=5, max_new_tokens=2, progress=False)
    finally:
        handle.remove()
    n_batches = -(-len(samples) // 5)
    # one encoding per batch for the shared configurations, one per batch for the hook-V one
    assert len(runs) == 2 * n_batches
    assert "get_image_features" not in vars(model.base_model)  # the reuse ends with the call
    alone = pd.concat([evaluate(model, processor, samples, configs=[c], batch_size=5, max_new_tokens=2, progress=False)
                       for c in configs], ignore_index=True)
    cols = ["label", "id", "answer", "score", "n_keep", "kept_row", "coverage"]
    pd.testing.assert_frame_equal(together[cols], alone[cols])
    assert [list(k) if k is not None else None for k in together.kept] == \
        [list(k) if k is not None else None for k in alone.kept]


def test_reuse_image_features_keys_on_the_input_tensors(tiny, samples):
    from tpx.models.base import reuse_image_features

    model, processor = tiny
    a = ev.model_inputs(processor, samples[:2], model)
    b = ev.model_inputs(processor, samples[2:4], model)
    with reuse_image_features(model) as seen:
        first = model.base_model.get_image_features(pixel_values=a["pixel_values"]).pooler_output
        again = model.base_model.get_image_features(pixel_values=a["pixel_values"]).pooler_output
        other = model.base_model.get_image_features(pixel_values=b["pixel_values"]).pooler_output
    assert seen == {"calls": 3, "encoded": 2}
    assert again is first and not torch.equal(torch.stack(list(other)), torch.stack(list(first)))
