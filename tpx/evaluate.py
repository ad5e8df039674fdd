"""Evaluation: samples × methods × retentions × seeds → one pandas DataFrame, batched, cached, multi-process.

`evaluate(model, processor, samples, methods=["fastv"], retentions=[0.25])` answers every sample greedily in
left-padded batches, once unpruned and once per (method, retention, seed) inside `tpx.pruning`, scores each
answer with the benchmark's metric (`tpx.metrics`; the organism's own `suite.score`) and summarises what was
kept. Results of each (method, retention, seed) are cached on disk, keyed by a hash of the model, the data
selection, the method and its parameters. Under `accelerate launch` the samples are split between processes
and the rows gathered, so every process returns the same table. `python -m tpx evaluate ...` is
`tpx.evaluate_cli.main`. Scores per answer and per benchmark come from `tpx.scoring`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tpx.data import Sample
from tpx.grid import UNPRUNED, Config, seeded, unpruned
from tpx.models.base import reuse_image_features
from tpx.models.prefix import reuse_prefix
from tpx.scoring import score, summarize

__all__ = ["BLIND", "Config", "evaluate", "kept_summary", "layouts", "model_inputs", "process_state", "reachable", "score",
           "summarize"]

log = logging.getLogger(__name__)
BLIND = (None, "no_image", "blank", "noise")
COVERAGE_BLOCKS = 4  # coverage: share of the cells of a 4×4 partition of each image grid holding a kept token
# configurations answered together, batch by batch: each batch is prepared, and its images encoded, once for all
# of them, and the decoder layers before a configuration's first cut are replayed from an earlier configuration
# of the group when their inputs are bit-for-bit the same (`tpx.models.prefix`); results are cached per
# configuration when its group ends
GROUP = 16
NESTED_IMAGES = ("Gemma3Processor",)  # processors that take a batch's images as one list per prompt
REUSE_PREFIX = True  # False: every configuration computes its own first layers (benchmarks/grid.py compares)


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
    if flat and type(processor).__name__ in NESTED_IMAGES:
        flat = images  # one list per prompt: a flat list would be read as all images of the first prompt
    processor.tokenizer.padding_side = "left"
    enc = processor(images=flat or None, text=texts, return_tensors="pt", padding=True).to(model.device)
    if "pixel_values" in enc:
        enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
    return dict(enc)


def kept_summary(entry: Any, b: int) -> dict[str, Any]:
    """What batch row `b` of a trace entry kept: n_keep, mean kept row / column ((row + 0.5) / rows: a uniform
    choice gives 0.5), coverage of a 4×4 partition of each grid (`COVERAGE_BLOCKS`), the kept indices, and the
    grids they index (`grids`: `[rows, cols]` of every image segment, in visual-token order)."""
    rc = entry.grid_rc[b].float()
    rows = torch.tensor([entry.grids[s][0] for s in entry.segment[b].tolist()], dtype=torch.float)
    cols = torch.tensor([entry.grids[s][1] for s in entry.segment[b].tolist()], dtype=torch.float)
    block = (rc[:, 0] * COVERAGE_BLOCKS // rows) * COVERAGE_BLOCKS + rc[:, 1] * COVERAGE_BLOCKS // cols
    cells = {(int(s), int(c)) for s, c in zip(entry.segment[b].tolist(), block.tolist())}
    return {"n_keep": int(entry.n_keep), "kept_row": float(((rc[:, 0] + 0.5) / rows).mean()),
            "kept_col": float(((rc[:, 1] + 0.5) / cols).mean()),
            "coverage": len(cells) / (len(entry.grids) * COVERAGE_BLOCKS ** 2), "kept": entry.kept[b].tolist(),
            "grids": [list(g) for g in entry.grids]}


def _geometry(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[int, list[list[int]]]:
    """N and the grids of a batch, from the adapter's layout (`tpx.models.layout`): LLaVA-NeXT's newline tokens
    are not counted, Qwen2-VL's grids are each image's own. `(0, [])` for a batch without images."""
    from tpx.models import layout

    if "pixel_values" not in inputs:  # blind="no_image": the processor saw no image
        return 0, []
    found = layout(model, inputs)
    return int(found.n_visual), [list(g) for g in found.grids]


def _answer_batch(model: Any, processor: Any, batch: list[Sample], config: Config, blind: str | None,
                  max_new_tokens: int, inputs: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    from tpx.engine import pruning

    if inputs is None:
        inputs = model_inputs(processor, batch, model, blind)
    tok = processor.tokenizer
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    n_visual, grids = _geometry(model, inputs)
    entry = first = None
    with torch.inference_mode():
        # unpruned: only a checkpoint's own compression runs (config.tpx_compression; nothing for other models)
        method = None if config.method == UNPRUNED else config.method
        with pruning(model, method, **({} if method is None else config.kwargs())) as run:
            out = model.generate(**inputs, **kwargs)
        if run.trace:  # last / first stage of the one prefill of this call
            entry, first = run.trace[-1], run.trace[0]
        elif run.native_trace:
            entry = run.native_trace[-1]
    texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    where = {"label": config.label, "hook": "" if first is None else first.hook,
             "layer": None if first is None or first.hook != "L" else int(first.layer)}
    rows = []
    for b, (sample, text) in enumerate(zip(batch, texts)):
        text = text.strip()
        if entry is not None:
            kept = kept_summary(entry, b)
        elif n_visual:
            kept = {"n_keep": n_visual, "kept_row": 0.5, "kept_col": 0.5, "coverage": 1.0, "kept": None, "grids": grids}
        else:
            kept = {"n_keep": 0, "kept_row": math.nan, "kept_col": math.nan, "coverage": math.nan, "kept": None,
                    "grids": []}
        rows.append({"id": sample.id, "benchmark": sample.benchmark, "task": sample.task, "method": config.method,
                     "retention": config.retention, "seed": config.seed, **where, "blind": blind or "",
                     "question": sample.question, "answer": text, "reference": sample.answer,
                     "score": score(sample, text), "image_id": sample.metadata.get("image_id"),
                     "n_visual": n_visual, **kept})
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

def process_state() -> Any:
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


def _read_cached(path: Path) -> pd.DataFrame:
    """A cached configuration's rows as freshly answered ones hold them: `kept` and `grids` as Python lists
    (parquet gives numpy arrays), so cached and new rows compare and print alike."""
    df = pd.read_parquet(path)
    if "kept" in df.columns:
        df["kept"] = [None if v is None else [int(i) for i in v] for v in df["kept"]]
    if "grids" in df.columns:
        df["grids"] = [None if v is None else [[int(i) for i in g] for g in v] for v in df["grids"]]
    return df


def _plan(model: Any, config: Config) -> Any:
    """The engine's plan of a configuration (the checkpoint's own compression included)."""
    from tpx.engine import plan_for

    method = None if config.method == UNPRUNED else config.method
    return plan_for(model, method, **({} if method is None else config.kwargs()))


def _reads_vision(model: Any, config: Config) -> bool:
    """Whether a configuration's plan reads the vision tower."""
    return any(s.reads_vision for s in _plan(model, config).stages)


def _first_cut(model: Any, config: Config) -> int | None:
    """The first decoder layer that sees a configuration's pruned sequence (None when nothing is pruned): the
    layers before it are the ones `reuse_prefix` can share."""
    stages = _plan(model, config).stages
    return stages[0].layer if stages else None


def _validate(model: Any, configs: Sequence[Config], blind: str | None) -> None:
    """Plan every distinct configuration as `tpx.pruning` would: every parameter error before any work."""
    from tpx.engine import plan_for

    labels: dict[str, Config] = {}
    for c in configs:
        if c.method == UNPRUNED:
            continue
        if blind == "no_image":
            raise ValueError(f"blind='no_image' has no visual tokens to prune; evaluate it unpruned only, "
                             f"got {c.method!r}")
        plan_for(model, c.method, **c.kwargs())
    for c in configs:  # one label names one configuration (seeds apart)
        other = labels.setdefault(c.label, c)
        if (other.method, other.retention, other.hook, other.layer, other.params) != \
                (c.method, c.retention, c.hook, c.layer, c.params) and other.retention == c.retention:
            raise ValueError(f"label {c.label!r} names two configurations: {other} and {c}")


def layouts(model: Any, processor: Any, samples: Sequence[Sample]) -> list[Any]:
    """The distinct layouts (`tpx.layout.Layout`: grids, N) of the samples' prompts, without a forward pass: one
    processor call for the first sample of each distinct tuple of image sizes, which is what a layout depends on
    (AnyRes crops, dynamic resolution). Samples without an image have none."""
    from tpx.models import layout

    firsts: dict[tuple, Sample] = {}
    for s in samples:
        firsts.setdefault(tuple(getattr(im, "size", None) for im in _images(s)), s)
    found = {}
    for s in firsts.values():
        if not _images(s):
            continue
        lay = layout(model, model_inputs(processor, [s], model))
        found.setdefault(lay.grids, lay)
    return list(found.values())


def reachable(model: Any, processor: Any, samples: Sequence[Sample], configs: Sequence[Config]
              ) -> tuple[list[Config], pd.DataFrame]:
    """The configurations that can run on these samples, and the others with the engine's reason.

    Each configuration is planned (`tpx.engine.reachable`, no forward pass) on every distinct layout of the
    samples (`tpx.models.layout`: the true grids and N, e.g. LLaVA-NeXT's base and crop grids without their
    newline tokens, each Qwen2-VL image's own grid); it is skipped if any of them refuses it.

    Returns:
        `(ok, skipped)`: runnable configurations in order, and a DataFrame (label, method, hook, layer,
        retention, reason) of the rest — to be shown, never dropped silently.
    """
    from tpx.engine import reachable as why_not

    found = layouts(model, processor, list(samples))
    ok, skipped = [], []
    for c in configs:
        why = None
        if c.method != UNPRUNED:
            params = {k: v for k, v in c.kwargs().items() if k != "retention"}
            for lay in found:
                why = why_not(model, c.method, c.retention, layout=lay, **params)
                if why is not None:
                    if len(found) > 1 or len(lay.grids) > 1:  # say which geometry refused it
                        why += f" (grids {[list(g) for g in lay.grids]}, N = {lay.n_visual})"
                    break
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
    state = process_state()
    cache = None if cache_dir is None else Path(cache_dir)
    # random selection draws one (B, N) tensor per batch, so the batch size is part of what a result means
    base = [_fingerprint(model), _selection(samples), blind, max_new_tokens, batch_size]
    frames: dict[Config, pd.DataFrame] = {}
    todo = []
    for config in configs:
        # the label names a configuration but does not change its answers: not part of the key
        what = (config.method, config.retention, config.hook, config.layer, config.seed, config.params)
        path = None if cache is None else cache / f"{_key(*base, *what)}.parquet"
        cached = _read_cached(path) if path is not None and path.exists() and not force else None
        if cached is not None and "grids" in cached.columns:  # older results without their grids: answered again
            frames[config] = cached.assign(label=config.label)
        else:
            todo.append((config, path))
    with state.split_between_processes(samples) as mine:
        batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        bar = tqdm(total=len(batches) * len(todo), desc="evaluate batches", unit="batch",
                   disable=not progress or not state.is_main_process)
        for start in range(0, len(todo), GROUP):
            group = todo[start:start + GROUP]
            rows: dict[Config, list[dict[str, Any]]] = {config: [] for config, _ in group}
            # methods reading the vision tower (hook V) need it to run; the others share each batch's features
            tower = [c for c, _ in group if _reads_vision(model, c)]
            shared = [c for c, _ in group if c not in tower]
            upto = max((k for k in (_first_cut(model, c) for c in shared) if k is not None), default=0)
            for batch in batches:
                inputs = model_inputs(processor, batch, model, blind)
                for config in tower:
                    rows[config] += _answer_batch(model, processor, batch, config, blind, max_new_tokens, inputs)
                    bar.update()
                prefix = reuse_prefix(model, upto=upto) if REUSE_PREFIX and upto else contextlib.nullcontext()
                with reuse_image_features(model), prefix:  # shared image features, shared first layers
                    for config in shared:
                        bar.set_postfix(label=config.label, retention=config.retention, seed=config.seed)
                        rows[config] += _answer_batch(model, processor, batch, config, blind, max_new_tokens, inputs)
                        bar.update()
            for config, path in group:
                done = gather_object(rows[config]) if state.num_processes > 1 else rows[config]
                frames[config] = pd.DataFrame(done)
                if path is not None and state.is_main_process:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    frames[config].to_parquet(tmp)
                    tmp.replace(path)  # atomic: an interrupted run leaves no half-written result
        bar.close()
    return pd.concat([frames[c] for c in configs], ignore_index=True)
