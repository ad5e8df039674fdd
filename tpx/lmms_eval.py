"""lmms-eval plugin: any `tpx.load`-able model, pruned, as lmms-eval's `--model tpx`.

    python -m lmms_eval --model tpx --tasks pope \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=fastv,retention=0.25,layer=2,device=cuda

The numbers the field publishes come from lmms-eval (Zhang et al., "LMMs-Eval: Reality Check on the Evaluation
of Large Multimodal Models", NAACL Findings 2025, arXiv 2407.12772), where a pruned model could not be run
(lmms-eval issue #634). `TpxModel` is an lmms-eval "simple" model class: it answers every request inside
`tpx.pruning`, with the prompt, padding and decoding `tpx.evaluate` uses, so on the same samples and
configuration the two give the same answers. It is registered through lmms-eval's entry-point group
`lmms_eval.models` (`manifest`, named in pyproject.toml), not through the deprecated `LMMS_EVAL_PLUGINS`
environment variable. `write_task` writes tpx samples (e.g. the organism suite) as a local lmms-eval task, a
YAML file and a parquet file, scored by tpx's own scorer (`tpx.scoring.score`).

This module imports lmms-eval (`pip install -e ".[lmms]"`); nothing else in tpx does.
"""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from tpx.data import Sample
from tpx.grid import UNPRUNED

__all__ = ["MODEL_ID", "TpxModel", "doc_to_text", "doc_to_visual", "manifest", "process_results", "write_task"]

log = logging.getLogger(__name__)
MODEL_ID = "tpx"
GENERATION_KEYS = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams")


def manifest() -> Any:
    """The entry point lmms-eval loads (group `lmms_eval.models`): model id `tpx`, a simple model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.TpxModel")


def _literal(value: Any) -> Any:
    """A model_arg as lmms-eval hands it over (int, float, bool or str), strings read as Python literals where
    they are one (`layers=[3,7,16]`, `ratios=(0.5,0.25,0.125)`, `seed=None`), else kept as strings."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _dtype(value: Any) -> torch.dtype | None:
    if value in (None, "auto", ""):
        return None
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype name such as float16, bfloat16 or float32, got {value!r}")
    return dtype


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
    return value


class TpxModel(lmms):
    """A `tpx.load`-able model answering lmms-eval requests under one pruning configuration.

    model_args (`key=value,...`): `pretrained` (what `tpx.load` takes: "organism", "tiny", a folder, a hub id),
    `method` (a registry name; "none" / "unpruned" or absent: the unpruned model, with a checkpoint's own
    compression as in `tpx.evaluate`), `retention`, the engine's `layer`, `layers`, `hook`, `seed`, `positions`,
    `attention`, `native`, and the method's parameters (`alpha=0.3`, `pivot=random`, ...): every other key.
    `device`, `dtype`, `attn_implementation` are passed to `tpx.load`; `batch_size` (left-padded, as in
    `tpx.evaluate`), `max_new_tokens` (used when a task sets none) and `threads` (`tpx.threads`) steer the run.
    The configuration is planned on construction, so a bad value fails before any request.

    Requests are batched in document order per task (the batches `tpx.evaluate` forms on the same samples),
    images before the text in the model's chat format (`tpx.evaluate.model_inputs`). A request without an
    image is answered unpruned: there is no visual token to prune.
    """

    is_simple = True

    def __init__(self, pretrained: str = "organism", method: str | None = None, retention: float | None = None, *,
                 device: str | None = None, dtype: Any = None, attn_implementation: str = "sdpa",
                 batch_size: int | str = 1, max_batch_size: int | None = None, max_new_tokens: int = 16,
                 threads: int | None = None, **pruning: Any) -> None:
        super().__init__()
        from tpx import threads as torch_threads
        from tpx.engine import plan_for
        from tpx.evaluate import process_state
        from tpx.models import load

        if batch_size == "auto" or max_batch_size is not None:
            raise ValueError(f"batch_size must be an int ≥ 1 (no automatic batch size), got batch_size="
                             f"{batch_size!r}, max_batch_size={max_batch_size!r}")
        self.batch_size = _count(_literal(batch_size), "batch_size")
        self.max_new_tokens = _count(_literal(max_new_tokens), "max_new_tokens")
        method = _literal(method)
        self.method = None if method in (None, "", "none", "None", UNPRUNED) else str(method)
        kwargs = {k: _literal(v) for k, v in pruning.items()}
        if self.method is None:
            if retention is not None or kwargs:
                raise ValueError(f"no method given, so no pruning arguments apply; got retention={retention!r}, "
                                 f"{sorted(kwargs)} (add method=NAME, e.g. method=fastv)")
        else:
            kwargs["retention"] = _literal(retention)
        state = process_state()
        self.model, self.processor = load(str(pretrained), device=device or str(state.device), dtype=_dtype(dtype),
                                          attn_implementation=attn_implementation)
        self.pruning = kwargs
        if self.method is not None:
            plan_for(self.model, self.method, **kwargs)  # every configuration error now, before any request
        self._rank, self._world_size = state.process_index, state.num_processes
        self.threads = torch_threads.apply(self.model, threads, processes=state.num_processes)
        self.pretrained = str(pretrained)
        self._ignored: set[str] = set()  # generation kwargs already warned about

    # ---- requests --------------------------------------------------------------------------------------

    def _batches(self, requests: Sequence[Instance]) -> list[list[tuple[int, tuple]]]:
        """`generate_until` requests as (index, args), grouped by task, split and generation kwargs, in
        document order, `batch_size` at a time."""
        groups: dict[str, list[tuple[int, tuple]]] = {}
        for i, request in enumerate(requests):
            _, gen, _, _, task, split = request.args
            groups.setdefault(json.dumps([task, split, gen], sort_keys=True, default=str), []).append((i, request.args))
        out = []
        for group in groups.values():
            group.sort(key=lambda item: item[1][3])  # doc_id
            out += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return out

    def _sample(self, context: str, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Sample:
        from PIL import Image

        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        flat: list[Any] = []
        for v in visuals or []:
            flat += list(v) if isinstance(v, list | tuple) else [v]
        wrong = next((v for v in flat if not isinstance(v, Image.Image)), None)
        if wrong is not None:
            raise TypeError(f"tpx's lmms-eval model takes images only; task {task!r} doc {doc_id} gave a "
                             f"{type(wrong).__name__} ({wrong!r:.60})")
        return Sample(id=f"{task}/{split}/{doc_id}", image=[im.convert("RGB") for im in flat] or None,
                      question=context, prompt=context, answers=[], task=task, benchmark="lmms-eval")

    def _pruned(self, samples: list[Sample]) -> Any:
        """The `tpx.pruning` context for these samples: the configuration, or none without images."""
        from tpx.engine import pruning

        if self.method is None or any(s.image is None for s in samples):
            return pruning(self.model, None)  # only a checkpoint's own compression, as tpx.evaluate's baseline
        return pruning(self.model, self.method, **self.pruning)

    def _split(self, samples: list[Sample]) -> list[list[int]]:
        """Indices of the samples with images and of those without (run apart: only the first are pruned)."""
        with_image = [i for i, s in enumerate(samples) if s.image is not None]
        without = [i for i, s in enumerate(samples) if s.image is None]
        return [part for part in (with_image, without) if part]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers to `(context, generation_kwargs, doc_to_visual, doc_id, task, split)` requests, in order.

        Generation kwargs: `until` (stop strings: the answer is cut at the first), `max_new_tokens` (default:
        the model_arg), `temperature` / `do_sample` / `top_p` (greedy unless temperature > 0 or do_sample).

        Raises:
            ValueError: for `num_beams` > 1 (the engine is not verified with beam reordering).
            TypeError: for a request whose visuals are not images (videos, audio).
        """
        from tqdm.auto import tqdm

        answers: list[str] = [""] * len(requests)
        batches = self._batches(requests)
        for batch in tqdm(batches, desc="tpx lmms-eval batches", disable=self.rank != 0):
            samples = [self._sample(args[0], *args[2:]) for _, args in batch]
            gen = dict(batch[0][1][1] or {})
            for part in self._split(samples):
                texts = self._generate([samples[i] for i in part], gen)
                for i, text in zip(part, texts):
                    answers[batch[i][0]] = text
        return answers

    def _generate(self, samples: list[Sample], gen: dict[str, Any]) -> list[str]:
        from tpx.evaluate import model_inputs

        ignored = sorted(set(gen) - set(GENERATION_KEYS) - self._ignored)
        if ignored:
            log.warning("tpx lmms-eval model ignores generation kwargs %s", ignored)
            self._ignored.update(ignored)
        if int(gen.get("num_beams", 1) or 1) != 1:
            raise ValueError(f"num_beams must be 1 (greedy or sampling), got {gen['num_beams']!r}")
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen.get("temperature", 0) or 0)
        sample = bool(gen.get("do_sample", False)) or temperature > 0
        tok = self.processor.tokenizer
        kwargs: dict[str, Any] = dict(max_new_tokens=int(gen.get("max_new_tokens") or self.max_new_tokens),
                                      do_sample=sample, pad_token_id=tok.pad_token_id)
        if sample:
            kwargs.update(temperature=temperature or 1.0, top_p=gen.get("top_p") or 1.0)
        inputs = model_inputs(self.processor, samples, self.model)
        with torch.inference_mode(), self._pruned(samples):
            out = self.model.generate(**inputs, **kwargs)
        texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [min((t.split(stop, 1)[0] for stop in until if stop), key=len, default=t) for t in texts]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """`(loss, is_greedy)` of each `(context, continuation, doc_to_visual, doc_id, task, split)` request.

        The context is prefilled inside `tpx.pruning` and the continuation fed as one decode step on its cache,
        so the pruner sees the prompt as it would before generating (one forward over prompt + continuation
        would let the continuation steer attention-scored methods). `loss` is the mean negative log-likelihood
        of the continuation's tokens: what lmms-eval's own models return and its multiple-choice scoring
        minimises. The continuation is tokenized alone (no special tokens) and appended to the prompt's tokens,
        which end with the chat format's assistant tag.
        """
        from tpx.evaluate import model_inputs

        tok = self.processor.tokenizer
        out = []
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args
            sample = self._sample(context, doc_to_visual, doc_id, task, split)
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            ids = tok(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.model.device)
            if ids.shape[1] == 0:
                raise ValueError(f"continuation {continuation!r} of task {task!r} doc {doc_id} has no tokens")
            prompt = model_inputs(self.processor, [sample], self.model)
            with torch.inference_mode(), self._pruned([sample]):
                first = self.model(**prompt, use_cache=True)
                logits = first.logits[:, -1:]
                if ids.shape[1] > 1:
                    mask = prompt["attention_mask"].new_ones(1, prompt["input_ids"].shape[1] + ids.shape[1] - 1)
                    rest = self.model(input_ids=ids[:, :-1], attention_mask=mask,
                                      cache=first.cache, use_cache=True)
                    logits = torch.cat([logits, rest.logits], dim=1)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None])[..., 0]
            out.append((float(-logp.mean()), bool((logits.argmax(-1) == ids).all())))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("tpx's lmms-eval model answers single-round requests only (generate_until, "
                                  "loglikelihood)")


# ---- tpx samples as a local lmms-eval task ------------------------------------------------------------

TASK_YAML = """\
# written by tpx.lmms_eval.write_task: {n} tpx samples ({benchmarks}), scored by tpx.scoring.score
task: {name}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {name}.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function tpx.lmms_eval.doc_to_visual
doc_to_text: !function tpx.lmms_eval.doc_to_text
doc_to_target: answer
process_results: !function tpx.lmms_eval.process_results
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
metric_list:
{metrics}
metadata:
  version: 1
"""


def write_task(samples: Sequence[Sample], folder: str | Path, name: str = "tpx_organism",
               max_new_tokens: int = 16) -> Path:
    """Write `samples` as an lmms-eval task: `<folder>/<name>.yaml` and `<name>.parquet`, one row per sample.

    lmms-eval finds it with `--include_path <folder> --tasks <name>` (or `TaskManager(include_path=...)`). Each
    answer is scored by `tpx.scoring.score`, the scorer `tpx.evaluate` uses; the metrics are `score` (mean over
    all samples) and `score_<task>` per task, in [0, 1].

    Args:
        samples: from `tpx.data.load_samples` (e.g. `"organism"`), each with exactly one image.
        folder: created if missing.
        name: the task name (a Python identifier).
        max_new_tokens: the answer length limit (greedy decoding), as `tpx.evaluate`'s.

    Returns:
        The YAML file's path.

    Raises:
        ValueError: for no samples, a sample without exactly one image, or a bad name.
    """
    import datasets

    samples = list(samples)
    if not samples:
        raise ValueError("samples must not be empty")
    if not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    _count(max_new_tokens, "max_new_tokens")
    images = []
    for s in samples:
        image = s.image[0] if isinstance(s.image, list | tuple) and len(s.image) == 1 else s.image
        if image is None or isinstance(image, list | tuple):
            raise ValueError(f"write_task takes samples with exactly one image; {s.id!r} has "
                             f"{0 if image is None else len(image)}")
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")  # lossless: the model sees the same pixels
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "prompt": datasets.Value("string"), "answer": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "task": datasets.Value("string"),
        "benchmark": datasets.Value("string"), "metadata": datasets.Value("string")})
    table = datasets.Dataset.from_dict({
        "id": [s.id for s in samples], "image": images, "question": [s.question for s in samples],
        "prompt": [s.prompt for s in samples], "answer": [s.answer for s in samples],
        "answers": [list(s.answers) for s in samples], "task": [s.task for s in samples],
        "benchmark": [s.benchmark for s in samples], "metadata": [json.dumps(s.metadata) for s in samples]},
        features=features)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(folder / f"{name}.parquet"))
    metrics = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true"
                        for m in ["score", *(f"score_{t}" for t in dict.fromkeys(s.task for s in samples))])
    path = folder / f"{name}.yaml"
    path.write_text(TASK_YAML.format(n=len(samples), name=name, max_new_tokens=max_new_tokens, metrics=metrics,
                                     benchmarks=", ".join(dict.fromkeys(s.benchmark for s in samples))))
    return path


def _doc_sample(doc: dict[str, Any]) -> Sample:
    """The tpx `Sample` a `write_task` row was written from, without its image (lmms-eval scores rows whose
    media columns it has dropped)."""
    return Sample(id=doc["id"], image=None, question=doc["question"], prompt=doc["prompt"],
                  answers=list(doc["answers"]), task=doc["task"], benchmark=doc["benchmark"],
                  metadata=json.loads(doc["metadata"]))


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The row's image, as a one-element list of RGB PIL images (lmms-eval's `doc_to_visual`)."""
    from PIL import Image

    image = doc["image"]
    if isinstance(image, dict):  # undecoded: {"bytes": ..., "path": ...}
        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    return [image.convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The row's prompt as `tpx.evaluate` gives it (no image placeholder: the model class adds the image)."""
    return doc["prompt"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """`score` and `score_<task>`: `tpx.scoring.score` of the answer, in [0, 1]."""
    from tpx.scoring import score

    sample = _doc_sample(doc)
    value = score(sample, results[0].strip())
    return {"score": value, f"score_{sample.task}": value}
