"""lmms-eval plugin: `--model tpx` is registered by entry point, and lmms-eval's own evaluator on a local task of
organism samples gives the answers and scores `tpx.evaluate` gives on the same samples and configuration.

Needs the `lmms` extra (`pip install -e ".[lmms]"`). Without lmms-eval the module is skipped with the reason,
except under CI (`CI=true`), where it fails: CI installs the extra.
"""

from __future__ import annotations

import os

import pytest
import torch

try:
    import lmms_eval  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    reason = f"lmms-eval is not installed (pip install -e '.[lmms]'): {err}"
    if os.environ.get("CI"):
        pytest.fail(f"the lmms-eval plugin test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from lmms_eval.api.instance import Instance

from tpx.data import load_samples
from tpx.evaluate import evaluate
from tpx.grid import UNPRUNED
from tpx.lmms_eval import TpxModel, write_task

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = {  # name: (method, pruning keyword arguments)
    "unpruned": (None, {}),
    "fastv": ("fastv", {"retention": 0.25, "layer": 2}),
    # seeded: one draw per batch, so the batches must match too
    "random": ("random", {"retention": 0.25, "hook": "L", "layer": 2, "seed": 1}),
}
BATCH = 4


@pytest.fixture(scope="module")
def samples():
    return load_samples("organism", n=3)  # 8 tasks x 3, questions of different lengths: left-padded batches


@pytest.fixture(scope="module")
def organism():
    from tpx.models import load

    return load("organism")


@pytest.fixture(scope="module")
def task(samples, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lmms_task")
    write_task(samples, folder, name="tpx_organism_test")
    return folder


def test_entry_point_registers_the_model_class():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "tpx"]
    assert ep.value == "tpx.lmms_eval:manifest"
    assert get_model("tpx") is TpxModel


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lmms_eval_scores_equal_tpx_evaluate(name, samples, organism, task, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    method, kwargs = CONFIGS[name]
    args = ",".join(["pretrained=organism"] + ([f"method={method}"] if method else [])
                    + [f"{k}={v}" for k, v in kwargs.items()])
    out = simple_evaluate(model="tpx", model_args=args, tasks=["tpx_organism_test"], batch_size=BATCH,
                          task_manager=TaskManager("ERROR", include_path=str(task)), log_samples=True,
                          bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    model, processor = organism
    rest = {k: v for k, v in kwargs.items() if k not in ("retention", "seed")}
    df = evaluate(model, processor, samples, methods=[method or UNPRUNED],
                  retentions=[kwargs.get("retention", 1.0)], seeds=[kwargs.get("seed", 0)], batch_size=BATCH,
                  max_new_tokens=16, progress=False, **rest)
    logged = sorted(out["samples"]["tpx_organism_test"], key=lambda row: row["doc_id"])
    assert [row["doc"]["id"] for row in logged] == list(df["id"])
    assert [row["filtered_resps"][0].strip() for row in logged] == list(df["answer"])
    assert [row["score"] for row in logged] == list(df["score"])
    result = out["results"]["tpx_organism_test"]
    assert result["score,none"] == pytest.approx(df["score"].mean(), abs=1e-12)
    for t, group in df.groupby("task"):
        assert result[f"score_{t},none"] == pytest.approx(group["score"].mean(), abs=1e-12)


def test_pruning_changes_answers_through_lmms_eval(samples, organism):
    """A configuration reaches the model: FastV at a tiny retention answers differently from the unpruned model."""
    requests = _requests(samples[:8])
    answers = {}
    for method, kwargs in [(None, {}), ("fastv", {"retention": 0.02, "layer": 1})]:
        lm = TpxModel("organism", method, **kwargs, batch_size=BATCH)
        lm.task_dict = {"t": {"test": [{"s": s} for s in samples[:8]]}}
        answers[method] = lm.generate_until(requests)
    assert answers[None] != answers["fastv"]


def _requests(samples, kind="generate_until", continuation=None, gen=None, images=True):
    def visual(doc):
        return [doc["s"].image] if images else []

    if kind == "generate_until":
        args = [(s.prompt, dict(gen or {"max_new_tokens": 8}), visual, i, "t", "test") for i, s in enumerate(samples)]
    else:
        args = [(s.prompt, continuation[i], visual, i, "t", "test") for i, s in enumerate(samples)]
    return [Instance(request_type=kind, arguments=a, idx=0, metadata={"task": "t", "doc_id": a[3], "repeats": 1})
            for a in args]


def test_until_text_only_requests_and_beams(samples):
    """`until` cuts the answer at the first stop string; a request without an image is answered by the unpruned
    model (nothing to prune); beam search and videos are refused with a message that names them."""
    some = [s for s in samples if s.task == "locate"]  # answers "r<row> c<col>"
    docs = {"t": {"test": [{"s": s} for s in some]}}
    pruned, full = TpxModel("organism", "fastv", 0.02, layer=1), TpxModel("organism")
    pruned.task_dict = full.task_dict = docs
    whole = full.generate_until(_requests(some))
    cut = full.generate_until(_requests(some, gen={"max_new_tokens": 8, "until": [" c"]}))
    assert all(" c" in w for w in whole) and cut == [w.split(" c")[0] for w in whole]
    blind = _requests(some, images=False)
    assert pruned.generate_until(blind) == full.generate_until(blind)
    with pytest.raises(ValueError, match="num_beams"):
        pruned.generate_until(_requests(some, gen={"num_beams": 2}))
    video = Instance(request_type="generate_until", arguments=("q", {}, lambda doc: ["clip.mp4"], 0, "t", "test"),
                     idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    with pytest.raises(TypeError, match="images only"):
        pruned.generate_until([video])


@pytest.mark.parametrize("method, kwargs", [(None, {}), ("fastv", {"retention": 0.25, "layer": 2}),
                                            ("dart", {"retention": 0.25, "layer": 1})])
def test_loglikelihood_equals_the_scores_of_pruned_generation(method, kwargs, samples):
    """Prefill the prompt pruned, then the continuation on its cache: the same log-probabilities as the pruned
    model's own greedy generation (its logits step by step), and the continuation counts as greedy."""
    from tpx.engine import pruning
    from tpx.evaluate import model_inputs

    lm = TpxModel("organism", method, **kwargs)
    some = [s for s in samples if s.task in ("locate", "relation")][:3]  # multi-token answers ("r4 c3")
    lm.task_dict = {"t": {"test": [{"s": s} for s in some]}}
    tok = lm.processor.tokenizer
    continuations, expected = [], []
    for s in some:
        inputs = model_inputs(lm.processor, [s], lm.model)
        with torch.inference_mode(), pruning(lm.model, method, **kwargs):
            out = lm.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        ids = out.sequences[0, inputs["input_ids"].shape[1]:]
        logits = torch.stack(out.logits, dim=1)[0]
        text = tok.decode(ids)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids.tolist()  # the continuation round-trips
        continuations.append(text)
        expected.append(-torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]).mean().item())
    got = lm.loglikelihood(_requests(some, "loglikelihood", continuations))
    assert [g for _, g in got] == [True] * len(some)
    assert [loss for loss, _ in got] == pytest.approx(expected, abs=1e-5)
    # a wrong continuation is less likely and not greedy
    wrong = lm.loglikelihood(_requests(some, "loglikelihood", ["r0 c0 x"] * len(some)))
    assert all(not g and loss > e for (loss, g), e in zip(wrong, expected))


@pytest.mark.parametrize("args, message", [
    ({"method": "fastv", "retention": 1.5}, "retention"),
    ({"method": "fastv", "retention": 0.25, "layer": 9}, "layer"),
    ({"method": "fastvv", "retention": 0.25}, "did you mean 'fastv'"),
    ({"method": "fastv", "retention": 0.25, "bogus": 1}, "bogus"),
    ({"retention": 0.25}, "no method"),
    ({"method": "fastv", "retention": 0.25, "batch_size": "auto"}, "batch_size"),
    ({"dtype": "float17"}, "dtype"),
])
def test_bad_model_args_fail_on_construction_naming_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        TpxModel("organism", **args)


def test_model_args_are_read_as_literals():
    # lmms-eval splits model_args at commas outside [] and {} (not ()), and hands --batch_size over as a string
    lm = TpxModel.create_from_arg_string("pretrained=organism,method=pdrop,retention=0.5,layers=[1,2,3],"
                                         "ratios=[0.5,0.25,0.125]", {"batch_size": "2"})
    assert lm.method == "pdrop" and lm.batch_size == 2
    assert lm.pruning == {"retention": 0.5, "layers": [1, 2, 3], "ratios": [0.5, 0.25, 0.125]}
    lm = TpxModel.create_from_arg_string("pretrained=organism,method=dart,retention=0.25,pivot=random,"
                                         "exact_budget=False", {})
    assert lm.pruning == {"retention": 0.25, "pivot": "random", "exact_budget": False}


def test_written_rows_score_as_tpx_scores_them(samples, task):
    """Rows read back from the parquet file give the image and prompt of their sample, and `process_results`
    scores an answer as `tpx.scoring.score` does, also on a row without its image column (lmms-eval drops media
    columns before scoring unless samples are logged)."""
    import datasets
    import numpy as np

    from tpx.lmms_eval import doc_to_text, doc_to_visual, process_results
    from tpx.scoring import score

    rows = datasets.load_dataset("parquet", data_files=str(task / "tpx_organism_test.parquet"), split="train",
                                 cache_dir=str(task / "cache"))
    assert len(rows) == len(samples)
    for row, s in zip(rows, samples):
        assert doc_to_text(row) == s.prompt
        assert np.array_equal(np.asarray(doc_to_visual(row)[0]), np.asarray(s.image))
        bare = {k: v for k, v in row.items() if k != "image"}
        for answer in (s.answer, "r0 c0", "no"):
            value = score(s, answer)
            assert process_results(bare, [f" {answer} "]) == {"score": value, f"score_{s.task}": value}


def test_write_task_refuses_samples_without_one_image(samples, tmp_path):
    bad = samples[0].__class__(**{**samples[0].__dict__, "image": None})
    with pytest.raises(ValueError, match="exactly one image"):
        write_task([bad], tmp_path)
    with pytest.raises(ValueError, match="identifier"):
        write_task(samples[:1], tmp_path, name="tpx-organism")
