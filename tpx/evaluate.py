"""Evaluation: samples × methods × retentions × seeds → one pandas DataFrame, batched, cached, multi-process.

`evaluate(model, processor, samples, methods=["fastv"], retentions=[0.25])` answers every sample greedily in
left-padded batches, once unpruned and once per (method, retention, seed) inside `tpx.pruning`, scores each
answer with the benchmark's metric (`tpx.metrics`; the organism's own `suite.score`) and summarises what was
kept. Results of each (method, retention, seed) are cached on disk, keyed by a hash of the model, the data
selection, the method and its parameters. Under `accelerate launch` the samples are split between processes
and the rows gathered, so every process returns the same table. `python -m tpx evaluate ...` is `main`:

    accelerate launch --num_processes 4 -m tpx evaluate --model llava-hf/llava-1.5-7b-hf --benchmark pope ...
    accelerate launch --multi_gpu --num_processes 2 -m tpx evaluate --model tiny ...   # 2 CPU processes, no GPU

(`accelerate launch --cpu` starts a single process; on a CPU-only machine `--multi_gpu` starts the gloo group.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tpx import metrics
from tpx.data import BENCHMARKS, Sample, load_samples, organism_record
from tpx.grid import UNPRUNED, Config, seeded, unpruned

__all__ = ["BLIND", "Config", "evaluate", "kept_summary", "main", "model_inputs", "reachable", "score", "summarize"]

log = logging.getLogger(__name__)
BLIND = (None, "no_image", "blank", "noise")
COVERAGE_BLOCKS = 4  # coverage: share of the cells of a 4×4 partition of each image grid holding a kept token


# ---- scoring ----------------------------------------------------------------------------------------------

def _grounding(sample: Sample, prediction: str) -> float:
    box = metrics.parse_box(prediction)
    if box is None:
        return 0.0
    try:
        pixels = metrics.box_to_pixels(box, sample.metadata["width"], sample.metadata["height"])
    except ValueError:  # a malformed box (x2 < x1) is a miss, as in grounding_accuracy
        return 0.0
    return float(metrics.box_iou(pixels, sample.metadata["box"]) >= 0.5)


def _organism(sample: Sample, prediction: str) -> float:
    from tpx.organism import suite

    return float(suite.score(organism_record(sample), prediction))


def _vqa(sample: Sample, prediction: str) -> float:
    return metrics.vqa_accuracy(prediction, sample.answers, leave_one_out=len(sample.answers) > 1)


def _choice(sample: Sample, prediction: str) -> float:
    return float(metrics.parse_choice(prediction, len(sample.metadata["options"])) == sample.answer)


SCORERS = {
    "organism": _organism,
    "pope": lambda s, p: float(metrics.parse_yes_no(p) == s.answer),
    "mme": lambda s, p: float(metrics._mme_answer(p) == s.answer),  # MME's own prefix rule
    "gqa": lambda s, p: metrics.exact_match(p, s.answer),
    "textvqa": _vqa, "vizwiz": _vqa, "scienceqa_img": _choice, "mmbench": _choice,
    "refcoco": _grounding, "refcoco+": _grounding, "refcocog": _grounding,
}


def score(sample: Sample, prediction: str) -> float:
    """Score of one answer in [0, 1]: organism exact match (`locate`: cell hit), POPE / MME yes-no correct,
    GQA exact match, TextVQA / VizWiz VQA accuracy (leave-one-out), ScienceQA / MMBench option letter,
    RefCOCO IoU ≥ 0.5 of the parsed box (LLaVA-1.5's [0, 1] coordinates of the unpadded image)."""
    family = "pope" if sample.benchmark.startswith("pope") else sample.benchmark
    if family not in SCORERS:
        raise ValueError(f"no scorer for benchmark {sample.benchmark!r}; known: {', '.join(SCORERS)}")
    return SCORERS[family](sample, prediction)


def summarize(df: pd.DataFrame, by_seed: bool = False) -> pd.DataFrame:
    """Benchmark-level scores (×100) per benchmark, task (organism only), configuration and retention.

    POPE: F1 averaged over its negative types (LLaVA-1.5's number); MME: perception score (acc + acc+ over
    the images whose two questions are both present); organism: accuracy per task; others: mean score. A
    configuration is a label when the rows carry one (`evaluate(configs=...)`), else a method.

    Args:
        df: `evaluate` rows.
        by_seed: one row per seed (what per-seed analyses need); False (default): the mean over seeds with its
            spread, as a result should be reported.

    Returns:
        by_seed: columns benchmark, task, method, [label,] retention, seed, score, n. Otherwise: benchmark,
        task, method, [label,] retention, score (mean over seeds), score_std (NaN for one seed), score_min,
        score_max, n_seeds, n (answers per seed).
    """
    out = []
    keys = ["benchmark", "method"] + (["label"] if "label" in df.columns else []) + ["retention", "seed"]
    for key, group in df.groupby(keys, dropna=False, sort=False):
        bench = key[0]
        if bench == "organism":
            parts = [(task, 100 * g["score"].mean(), len(g)) for task, g in group.groupby("task", sort=False)]
        elif str(bench).startswith("pope"):
            f1 = [metrics.pope_scores(list(g["answer"]), list(g["reference"]))["f1"] for _, g in group.groupby("task")]
            parts = [("", 100 * sum(f1) / len(f1), len(group))]
        elif bench == "mme":
            frame = group.rename(columns={"task": "subtask", "answer": "prediction"})
            frame = frame.assign(answer=frame["reference"])
            frame = frame[frame.groupby(["subtask", "image_id"])["id"].transform("size") == 2]
            value = metrics.mme_scores(frame, require_all_subtasks=False)["perception"] if len(frame) else math.nan
            parts = [("", value, len(frame))]
        else:
            parts = [("", 100 * group["score"].mean(), len(group))]
        out += [dict(zip(keys, key), task=t, score=v, n=n) for t, v, n in parts]
    cols = ["benchmark", "task", *keys[1:], "score", "n"]
    per_seed = pd.DataFrame(out, columns=cols)
    if by_seed:
        return per_seed
    group = [c for c in cols if c not in ("seed", "score", "n")]
    g = per_seed.groupby(group, dropna=False, sort=False)
    return g.agg(score=("score", "mean"), score_std=("score", "std"), score_min=("score", "min"),
                 score_max=("score", "max"), n_seeds=("seed", "nunique"), n=("n", "first")).reset_index()


# ---- one batch --------------------------------------------------------------------------------------------

def _images(sample: Sample) -> list[Any]:
    if sample.image is None:
        return []
    return list(sample.image) if isinstance(sample.image, list | tuple) else [sample.image]


def _prompt(processor: Any, text: str, n_images: int) -> str:
    if n_images == 1:
        from tpx.ask import prompt

        return prompt(processor, text)
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return f"USER: {''.join(processor.image_token + chr(10) for _ in range(n_images))}{text} ASSISTANT:"


def _blank(image: Any, processor: Any) -> Any:
    from PIL import Image

    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or [0.5, 0.5, 0.5]
    return Image.new("RGB", image.size, tuple(int(round(255 * m)) for m in mean))


def _noise(image: Any, key: str) -> Any:
    """Uniform RGB noise of the image's size, seeded by the sample's id: content-free but textured."""
    from PIL import Image

    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (image.size[1], image.size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def model_inputs(processor: Any, batch: Sequence[Sample], model: Any,
                 blind: str | None = None) -> dict[str, torch.Tensor]:
    """Left-padded processor outputs for `batch` on the model's device, in the model's chat format.

    Args:
        processor, model: from `tpx.load`.
        batch: samples; each sample's images take one placeholder each.
        blind: None, "no_image" (text only), "blank" (uniform images of the processor's mean colour) or
            "noise" (uniform RGB noise, seeded by the sample id): the content-free controls.
    """
    images = [[] if blind == "no_image" else _images(s) for s in batch]
    if blind == "blank":
        images = [[_blank(im, processor) for im in ims] for ims in images]
    elif blind == "noise":
        images = [[_noise(im, f"{s.id}/{j}") for j, im in enumerate(ims)] for s, ims in zip(batch, images)]
    texts = [_prompt(processor, s.prompt, len(ims)) for s, ims in zip(batch, images)]
    flat = [im for ims in images for im in ims]
    processor.tokenizer.padding_side = "left"
    enc = processor(images=flat or None, text=texts, return_tensors="pt", padding=True).to(model.device)
    if "pixel_values" in enc:
        enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
    return dict(enc)


def kept_summary(entry: Any, b: int) -> dict[str, Any]:
    """What batch row `b` of a trace entry kept: n_keep, mean kept row / column ((row + 0.5) / rows: a uniform
    choice gives 0.5), coverage of a 4×4 partition of each grid (`COVERAGE_BLOCKS`), and the kept indices."""
    rc = entry.grid_rc[b].float()
    rows = torch.tensor([entry.grids[s][0] for s in entry.segment[b].tolist()], dtype=torch.float)
    cols = torch.tensor([entry.grids[s][1] for s in entry.segment[b].tolist()], dtype=torch.float)
    block = (rc[:, 0] * COVERAGE_BLOCKS // rows) * COVERAGE_BLOCKS + rc[:, 1] * COVERAGE_BLOCKS // cols
    cells = {(int(s), int(c)) for s, c in zip(entry.segment[b].tolist(), block.tolist())}
    return {"n_keep": int(entry.n_keep), "kept_row": float(((rc[:, 0] + 0.5) / rows).mean()),
            "kept_col": float(((rc[:, 1] + 0.5) / cols).mean()),
            "coverage": len(cells) / (len(entry.grids) * COVERAGE_BLOCKS ** 2), "kept": entry.kept[b].tolist()}


def _answer_batch(model: Any, processor: Any, batch: list[Sample], config: Config, blind: str | None,
                  max_new_tokens: int) -> list[dict[str, Any]]:
    from tpx.engine import pruning

    inputs = model_inputs(processor, batch, model, blind)
    tok = processor.tokenizer
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    n_visual = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    entry = first = None
    with torch.inference_mode():
        native = getattr(model, "_tpx_native_run", None)  # a checkpoint trained with compression keeps it
        seen = len(native.trace) if native is not None else 0
        if config.method == UNPRUNED:
            out = model.generate(**inputs, **kwargs)
            if native is not None and len(native.trace) > seen:
                entry = native.trace[-1]
        else:
            with pruning(model, config.method, **config.kwargs()) as run:
                out = model.generate(**inputs, **kwargs)
            entry, first = run.trace[-1], run.trace[0]  # last / first stage of the one prefill of this call
    texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    where = {"label": config.label, "hook": "" if first is None else first.hook,
             "layer": None if first is None or first.hook != "L" else int(first.layer)}
    rows = []
    for b, (sample, text) in enumerate(zip(batch, texts)):
        text = text.strip()
        if entry is not None:
            kept = kept_summary(entry, b)
        elif n_visual[b]:
            kept = {"n_keep": n_visual[b], "kept_row": 0.5, "kept_col": 0.5, "coverage": 1.0, "kept": None}
        else:
            kept = {"n_keep": 0, "kept_row": math.nan, "kept_col": math.nan, "coverage": math.nan, "kept": None}
        rows.append({"id": sample.id, "benchmark": sample.benchmark, "task": sample.task, "method": config.method,
                     "retention": config.retention, "seed": config.seed, **where, "blind": blind or "",
                     "question": sample.question, "answer": text, "reference": sample.answer,
                     "score": score(sample, text), "image_id": sample.metadata.get("image_id"),
                     "n_visual": n_visual[b], **kept})
    return rows


# ---- cache ------------------------------------------------------------------------------------------------

def _fingerprint(model: Any) -> str:
    """Name, config, dtype and the first values of every weight: tells apart models with equal configs."""
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "_name_or_path", "")).encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _selection(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.benchmark, s.id, s.task, s.prompt, s.answers]).encode())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ---- the loop ---------------------------------------------------------------------------------------------

def _state() -> Any:
    """accelerate's process state. Without CUDA (or with ACCELERATE_USE_CPU) it asks for CPU processes: only then
    does accelerate join the gloo group that a launcher started on a CPU-only machine."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _legacy_configs(methods: Sequence[str | None], retentions: Sequence[float], seeds: Sequence[int],
                    pruning_kwargs: dict[str, Any]) -> list[Config]:
    """The grid of the `methods=` / `retentions=` / `seeds=` form: every method with the same keyword arguments,
    labelled by its name; the baseline and deterministic methods once (first seed)."""
    from tpx import select

    if not methods or not retentions or not seeds:
        raise ValueError(f"methods, retentions and seeds must be non-empty, got {methods}, {retentions}, {seeds}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seeds must be ints, got {seed!r}")
    retentions = [select.check_retention(r) for r in retentions]
    kw = dict(pruning_kwargs)
    hook, layer = kw.pop("hook", None), kw.pop("layer", None)
    params = tuple(sorted(kw.items()))
    configs = []
    for method in methods:
        if method in (None, UNPRUNED):
            configs.append(unpruned(int(seeds[0])))
            continue
        use = seeds if seeded(method, kw) else seeds[:1]
        configs += [Config(method, float(r), hook, layer, int(s), params, method) for r in retentions for s in use]
    return list(dict.fromkeys(configs))


def _validate(model: Any, configs: Sequence[Config], blind: str | None) -> None:
    """Enter and leave `tpx.pruning` once per distinct configuration: every parameter error before any work."""
    from tpx.engine import pruning

    labels: dict[str, Config] = {}
    for c in configs:
        if c.method == UNPRUNED:
            continue
        if blind == "no_image":
            raise ValueError(f"blind='no_image' has no visual tokens to prune; evaluate it unpruned only, "
                             f"got {c.method!r}")
        with pruning(model, c.method, **c.kwargs()):
            pass
    for c in configs:  # one label names one configuration (seeds apart)
        other = labels.setdefault(c.label, c)
        if (other.method, other.retention, other.hook, other.layer, other.params) != \
                (c.method, c.retention, c.hook, c.layer, c.params) and other.retention == c.retention:
            raise ValueError(f"label {c.label!r} names two configurations: {other} and {c}")


def reachable(model: Any, processor: Any, samples: Sequence[Sample], configs: Sequence[Config]
              ) -> tuple[list[Config], pd.DataFrame]:
    """The configurations that can run on these samples, and the others with the engine's reason.

    Returns:
        `(ok, skipped)`: runnable configurations in order, and a DataFrame (label, method, hook, layer,
        retention, reason) of the rest — to be shown, never dropped silently.
    """
    from tpx.analysis import tables
    from tpx.models import adapter_for

    ids = model_inputs(processor, list(samples)[:1], model)["input_ids"]
    n_visual = int((ids == model.config.image_token_id).sum())
    try:
        grid = adapter_for(model).grid(n_visual)
    except (ValueError, AttributeError):
        grid = None  # several grids (AnyRes, several images): the engine checks pooling's grid
    ok, skipped = [], []
    for c in configs:
        why = None if c.method == UNPRUNED else tables.reachable(
            model, c.method, c.retention, n_visual, grid, **{k: v for k, v in c.kwargs().items() if k != "retention"})
        if why is None:
            ok.append(c)
        else:
            skipped.append({"label": c.label, "method": c.method, "hook": c.hook, "layer": c.layer,
                            "retention": c.retention, "reason": why})
    return ok, pd.DataFrame(skipped, columns=["label", "method", "hook", "layer", "retention", "reason"])


def evaluate(model: Any, processor: Any, samples: Sequence[Sample], methods: Sequence[str | None] = (None, "fastv"),
             retentions: Sequence[float] = (0.25,), seeds: Sequence[int] = (0,), *,
             configs: Sequence[Config] | None = None, batch_size: int = 8, max_new_tokens: int = 16,
             progress: bool = True, cache_dir: str | Path | None = None, force: bool = False,
             blind: str | None = None, **pruning_kwargs: Any) -> pd.DataFrame:
    """Answer every sample under every configuration of a grid; one row per answer. The one grid runner.

    Either pass `configs` (from `tpx.grid.grid`: methods × hook × K × retention × seed, labelled variants
    included) or the short form `methods` × `retentions` × `seeds` with the same `pruning_kwargs` for all.
    The unpruned baseline and deterministic methods run once (first seed); seeded methods run every seed.

    Args:
        model, processor: from `tpx.load` (the processor must pad on the left; it is set to).
        samples: from `tpx.data.load_samples`.
        methods: registry names; None or "unpruned" is the baseline (run once, retention 1.0, first seed).
        retentions: kept shares of visual tokens, each in (0, 1].
        seeds: seeds of the pruning runs (random methods draw from them). Random selection draws one
            `(B, N)` tensor per batch, so its picks depend on the batch size; deterministic methods do not.
        configs: the grid itself; overrides methods / retentions / seeds / pruning_kwargs.
        batch_size: samples per `generate` call (left-padded), ≥ 1.
        max_new_tokens: answer length limit (greedy decoding).
        progress: show a `tqdm.auto` bar over batches.
        cache_dir: folder for cached results (one parquet file per configuration); None: no cache.
        force: recompute even when a cached result exists (and overwrite it).
        blind: None, "no_image" (the prompt without the image) or "blank" (a uniform image of the
            processor's mean colour), the vision-need control.
        **pruning_kwargs: passed to `tpx.pruning` (layer, hook, positions, attention, method parameters).

    Returns:
        DataFrame with columns id, benchmark, task, method, retention, seed, label, hook and layer (where the
        configuration acted: hook "" and layer None unpruned; layer = K of the first stage at hook "L"), blind,
        question, answer, reference, score, image_id, n_visual, n_keep, kept_row / kept_col (mean kept
        position, (row + 0.5) / rows, so a uniform choice gives 0.5), coverage (see `COVERAGE_BLOCKS`) and kept
        (indices into the visual span after the last stage; None when unpruned).

    Raises:
        ValueError: for an empty grid, a retention outside (0, 1], an unknown method or parameter, a bad
            `blind` or `batch_size`, one label naming two configurations.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    if blind not in BLIND:
        raise ValueError(f"blind must be one of {BLIND}, got {blind!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    if isinstance(samples, str):
        raise TypeError(f"samples must be tpx.data.Sample objects, got the string {samples!r}; load them first: "
                        f"samples = tpx.data.load_samples({samples!r}, ...)")
    samples = list(samples)
    if not samples:
        raise ValueError("samples must not be empty")
    wrong = next((s for s in samples if not isinstance(s, Sample)), None)
    if wrong is not None:
        raise TypeError(f"samples must be tpx.data.Sample objects (from tpx.data.load_samples), got a "
                        f"{type(wrong).__name__}: {wrong!r:.80}")
    if configs is None:
        configs = _legacy_configs(methods, retentions, seeds, pruning_kwargs)
    elif pruning_kwargs:
        raise ValueError(f"pass method parameters inside configs, not as keywords: {sorted(pruning_kwargs)}")
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise ValueError("configs must not be empty")
    _validate(model, configs, blind)
    state = _state()
    cache = None if cache_dir is None else Path(cache_dir)
    # random selection draws one (B, N) tensor per batch, so the batch size is part of what a result means
    base = [_fingerprint(model), _selection(samples), blind, max_new_tokens, batch_size]
    frames: dict[Config, pd.DataFrame] = {}
    todo = []
    for config in configs:
        # the label names a configuration but does not change its answers: not part of the key
        what = (config.method, config.retention, config.hook, config.layer, config.seed, config.params)
        path = None if cache is None else cache / f"{_key(*base, *what)}.parquet"
        if path is not None and path.exists() and not force:
            frames[config] = pd.read_parquet(path).assign(label=config.label)
        else:
            todo.append((config, path))
    with state.split_between_processes(samples) as mine:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        bar = tqdm(total=len(batches) * len(todo), desc="evaluate batches", unit="batch",
                   disable=not progress or not state.is_main_process)
        for config, path in todo:
            bar.set_postfix(label=config.label, retention=config.retention, seed=config.seed)
            rows = []
            for batch in batches:
                rows += _answer_batch(model, processor, batch, config, blind, max_new_tokens)
                bar.update()
            if state.num_processes > 1:
                rows = gather_object(rows)
            frames[config] = pd.DataFrame(rows)
            if path is not None and state.is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                frames[config].to_parquet(tmp)
                tmp.replace(path)  # atomic: an interrupted run leaves no half-written result
        bar.close()
    return pd.concat([frames[c] for c in configs], ignore_index=True)


# ---- command line -----------------------------------------------------------------------------------------

MODEL_HELP = ("organism (the trained model organism in data/organism/), organism-pool2 (its 2x2-pooling "
              "checkpoint), tiny | tiny-llava-next | tiny-qwen2-vl (random, built offline), a local folder "
              "saved with save_pretrained, or a hub id such as llava-hf/llava-1.5-7b-hf (default: %(default)s)")


def _list(kind: type, what: str) -> Any:
    """An argparse type for comma-separated values of `kind`, named `what` in its error message."""
    def parse(text: str) -> list[Any]:
        values = []
        for v in text.split(","):
            try:
                values.append(kind(v.strip()))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{v.strip()!r} is not {what} (a comma-separated list is "
                                                 f"expected, e.g. {'0.25,0.5' if kind is float else '0,1,2'})")
        return values
    parse.__name__ = what
    return parse


def _checked(check: Any) -> Any:
    """An argparse type that passes its value through `check`, whose ValueError becomes the usage error."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    parse.__name__ = check.__name__
    return parse


def _methods(text: str) -> list[str]:
    from tpx.methods import get_method

    names = [v.strip() for v in text.split(",")]
    for name in names:
        if name not in (UNPRUNED, "none"):
            try:
                get_method(name)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from err
    return [UNPRUNED if n == "none" else n for n in names]


def _param(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` with VALUE read as a Python literal (0.3, True, (0.5, 0.25), 'dup') or else a string."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. alpha=0.3, uniqueness=last)")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


def _parser() -> argparse.ArgumentParser:
    from tpx.__main__ import OneLineParser
    from tpx.data import check_benchmark
    from tpx.methods import list_methods

    p = OneLineParser(prog="python -m tpx evaluate", description=__doc__.splitlines()[0],
                epilog="The unpruned baseline always runs too, so every table has a score relative to it. "
                       "Example: python -m tpx evaluate --method fastv,random --retention 0.25,0.11 "
                       "--seed 0,1,2 --param alpha=0.3 --out results.csv. Errors are one line (exit status 2); "
                       "--traceback shows the traceback.")
    p.add_argument("--model", default="organism", help=MODEL_HELP)
    p.add_argument("--benchmark", type=_checked(check_benchmark), default="organism",
                   help=f"organism (its synthetic suite) or a hub benchmark: {', '.join(BENCHMARKS)} "
                        "(default: %(default)s)")
    p.add_argument("--method", type=_methods, default=["fastv"],
                   help=f"comma-separated: {', '.join(list_methods())}; the unpruned baseline is always added "
                        "(default: fastv)")
    p.add_argument("--retention", type=_list(float, "a number"), default=[0.25],
                   help="kept shares of visual tokens, comma-separated, each in (0, 1] (default: 0.25)")
    p.add_argument("--seed", type=_list(int, "an integer"), default=[0],
                   help="pruning seeds, comma-separated (random methods draw from them; default: 0)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, repeatable: e.g. alpha=0.3, uniqueness=last, pivot=random, "
                        "window=3 (each method's defaults: README, Methods)")
    p.add_argument("--layer", type=int, default=None,
                   help="decoder layer K of in-LLM (hook L) pruning (default: each method's, K = 2)")
    p.add_argument("--n", type=int, default=None,
                   help="organism: samples per task (default 50); a hub benchmark: dataset rows (default: all)")
    p.add_argument("--split", default=None, help="dataset split (default: test for the organism, else the "
                                                 "benchmark's evaluation split)")
    p.add_argument("--task", default=None, help="organism tasks, comma-separated (default: all)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the sample subset (default: %(default)s)")
    p.add_argument("--data-path", default=None,
                   help="a local copy of a hub benchmark (folder or parquet file); not for the organism")
    p.add_argument("--batch-size", type=int, default=8,
                   help="samples per generate call, left-padded (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="answer length limit, greedy decoding (default: %(default)s)")
    p.add_argument("--blind", choices=["no_image", "blank"], default=None,
                   help="vision-need control: no_image (the prompt without its image: unpruned only) or blank "
                        "(a uniform image of the processor's mean colour)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: this process's accelerate "
                                                  "device)")
    p.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager or flash_attention_2 "
                                                  "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: 1 for a small model on the CPU, see tpx.threads; "
                        "OMP_NUM_THREADS is honoured)")
    p.add_argument("--cache-dir", default=None,
                   help="cache results here, one file per configuration; a rerun (also after an interrupted "
                        "run) computes only what is missing (default: no cache)")
    p.add_argument("--force", action="store_true", help="recompute cached configurations and overwrite them")
    p.add_argument("--out", default=None, help="write every answer (one row each) to this CSV file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _relative(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `relative` column: each score as % of the unpruned score of its benchmark and task."""
    col = "score" if "score" in table.columns else "mean"
    base = table[table["method"] == UNPRUNED][["benchmark", "task", col]].rename(columns={col: "_base"})
    out = table.merge(base.drop_duplicates(["benchmark", "task"]), on=["benchmark", "task"], how="left")
    return out.assign(relative=100 * out[col] / out["_base"]).drop(columns="_base")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tpx evaluate ...` (also under `accelerate launch -m tpx evaluate ...`); returns the status.

    Bad input (a value, a model or data that cannot be found) raises ValueError / OSError with a message that
    says what to change; `python -m tpx` prints it as one line and exits with status 2.
    """
    import time

    from tpx import threads
    from tpx.models import load

    args = _parser().parse_args(argv)
    params = dict(args.param)
    if args.layer is not None:
        if "layer" in params:
            raise ValueError("give the layer once: --layer or --param layer=..., not both")
        params["layer"] = args.layer
    methods = [UNPRUNED] + ([] if args.blind == "no_image" else [m for m in args.method if m != UNPRUNED])
    tasks = None if args.task is None else args.task.split(",")
    samples = load_samples(args.benchmark, split=args.split, n=args.n, seed=args.data_seed, path=args.data_path,
                           tasks=tasks)
    state = _state()
    model, processor = load(args.model, device=args.device or str(state.device), attn_implementation=args.attn)
    n_threads = threads.apply(model, args.threads, processes=state.num_processes)
    start = time.perf_counter()
    df = evaluate(model, processor, samples, methods=methods, retentions=args.retention, seeds=args.seed,
                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                  cache_dir=args.cache_dir, force=args.force, blind=args.blind, **params)
    seconds = time.perf_counter() - start
    if state.is_main_process:
        print(f"tpx evaluate: {len(df)} rows from {len(samples)} samples in {seconds:.1f} s on "
              f"{state.num_processes} process(es), {n_threads} thread(s) each", file=sys.stderr)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.out, index=False)
        print(_relative(summarize(df)).to_string(index=False), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
