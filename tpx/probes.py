"""Measurements that run the model but are not answers: attention read by FastV, kept sets under a positional
intervention. The grid of answered configurations is `tpx.evaluate.evaluate`; these are the other model runs
the notebooks need, kept here so that `tpx.analysis` stays pure.

The positional intervention tests the study's mechanism for FastV's position bias (Wen et al. 2025, Q1):
the last token's attention favours the *last* visual tokens (the bottom rows) because of causal attention and
RoPE's long-range decay. If that is the cause, the bias must follow the position ids: give the image tokens
their position ids in reverse order and the tokens FastV keeps must move to the top rows.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import math
from typing import Any

import pandas as pd
import torch

from tpx.grid import UNPRUNED

__all__ = ["ORDERS", "batch_size_runs", "blind_runs", "kept_under_positions", "last_token_attention", "padding_check",
           "rope_frequencies", "visual_distances", "visual_features",
           "visual_position_ids"]

ORDERS = ("natural", "reverse")


def rope_frequencies(model: Any, layer: int = 0) -> torch.Tensor:
    """The rotary frequencies θ_k (`inv_freq`, `(head_dim/2,)`) decoder layer `layer` of the model's language
    model uses, for `tpx.analysis.spatial.rope_decay`. One rotary serves every layer on Llama-family models; Gemma 3
    keeps one per layer type (a local base on sliding layers, a global one on full layers), read by `layer`'s type.

    Raises:
        TypeError: if the language model has no rotary embedding with frequencies.
        ValueError: if `layer` is outside the decoder.
    """
    from tpx.models import adapter_for

    decoder = adapter_for(model).decoder
    if not 0 <= layer < decoder.n_layers:
        raise ValueError(f"layer must be in [0, {decoder.n_layers - 1}], got {layer}")
    rotary = getattr(adapter_for(model).text_model, "rotary_emb", None)
    freq = getattr(rotary, "inv_freq", None)
    if freq is None and rotary is not None:
        freq = getattr(rotary, f"{decoder.layer_type(layer)}_inv_freq", None)
    if freq is None:
        raise TypeError(f"{type(model).__name__}'s language model has no rotary embedding with inv_freq")
    return freq.detach().float().cpu()


def last_token_attention(model: Any, processor: Any, samples: Sequence[Any], *, layer: int | None = None,
                         batch_size: int = 8, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """FastV's scores over a dataset with each visual token's distance to the query: the measured position bias.

    Runs one prefill per batch inside `tpx.pruning(model, "fastv")` and reads the trace's scores: head-mean
    attention from the last prompt token to every visual token at decoder layer K − 1.

    Reference: Chen et al., FastV, ECCV 2024, arXiv 2403.06764; Wen et al. 2025, arXiv 2502.11501, Q1.

    Args:
        model, processor: from `tpx.load`.
        samples: with one image each (`tpx.data.load_samples`).
        layer: FastV's K (scores come from layer K − 1); None: the registry's default.
        batch_size: samples per forward call.
        progress: a `tqdm.auto` bar over batches.

    Returns:
        `(scores (S, N), distances (S, N))` on the CPU, float and long; N visual tokens in layout order
        (`tpx.models.layout`: LLaVA-NeXT's newline tokens are not among them), distances in sequence positions.

    Raises:
        ValueError: batches of samples with different numbers of visual tokens.
    """
    from tqdm.auto import tqdm

    from tpx.engine import pruning
    from tpx.evaluate import model_inputs
    from tpx.models import layout

    samples = list(samples)
    if not samples or batch_size < 1:
        raise ValueError(f"need samples and batch_size ≥ 1, got {len(samples)} samples, batch_size={batch_size}")
    kwargs = {} if layer is None else {"layer": layer}
    scores, distances = [], []
    for i in tqdm(range(0, len(samples), batch_size), desc="attention batches", disable=not progress):
        inputs = model_inputs(processor, samples[i:i + batch_size], model)
        with torch.inference_mode(), pruning(model, "fastv", retention=1.0, **kwargs) as run:
            model(**inputs)
        scores.append(run.trace[0].scores.float().cpu())
        distances.append(visual_distances(inputs["input_ids"], layout(model, inputs).positions).cpu())
    if len({s.shape[1] for s in scores}) > 1:
        raise ValueError(f"the samples have different numbers of visual tokens per batch "
                         f"({sorted({s.shape[1] for s in scores})}): pass samples that share one layout")
    return torch.cat(scores), torch.cat(distances)


def visual_features(model: Any, processor: Any, samples: Sequence[Any], layer: int, *, batch_size: int = 8,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Hidden states of the visual tokens entering decoder layer `layer` in an unpruned forward pass.

    At layer K these are the tokens FastV and DART choose from (layers < K see every token); at layer 0 they
    are the input embeddings that hook-"E" methods (random, pooling, DivPrune) choose from. A forward
    pre-hook reads them and is removed on exit. Memory: N × D values per sample, kept on the CPU in the
    model's dtype.

    Args:
        model, processor, samples: as for `tpx.evaluate.evaluate` (sample ids must be unique).
        layer: 0-based decoder layer.
        batch_size: samples per forward pass.
        progress: a `tqdm.auto` bar over batches.

    Returns:
        sample id → `(N, D)` tensor.

    Raises:
        ValueError: for a layer out of range or repeated sample ids.
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import model_inputs
    from tpx.models import adapter_for

    adapter = adapter_for(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < adapter.n_layers:
        raise ValueError(f"layer={layer!r} out of range: model has {adapter.n_layers} decoder layers "
                         f"(0..{adapter.n_layers - 1})")
    samples = list(samples)
    if len({s.id for s in samples}) != len(samples):
        raise ValueError("sample ids must be unique")
    seen: dict[str, torch.Tensor] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]

    out: dict[str, torch.Tensor] = {}
    handle = adapter.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in tqdm(range(0, len(samples), batch_size), desc="visual features", unit="batch", disable=not progress):
            batch = samples[i:i + batch_size]
            inputs = model_inputs(processor, batch, model)
            with torch.inference_mode():
                model(**inputs, use_cache=False)
            positions = adapter.layout(**inputs).positions
            hidden = seen.pop("hidden")
            feats = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])).cpu()
            out.update({s.id: f for s, f in zip(batch, feats, strict=True)})
    finally:
        handle.remove()
    return out


# ---- tables ------------------------------------------------------------------------------------------


def visual_distances(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Distance from the last prompt position (FastV's query) back to each visual token, in positions.

    Rows are left-padded (as tpx pads them), so every row's query is the last position and, for 1-D RoPE, the
    distance in the tensor equals the distance in position ids.

    Args:
        input_ids: `(B, T)` prompt ids.
        positions: `(B, N)` sequence positions of the visual tokens (`tpx.models.layout(...).positions`).

    Returns:
        `(B, N)` long tensor of distances ≥ 1, largest for the first visual token.
    """
    if positions.ndim != 2 or positions.shape[0] != input_ids.shape[0] or positions.shape[1] == 0:
        raise ValueError(f"positions must be (B, N) with N ≥ 1 for {input_ids.shape[0]} rows, got {tuple(positions.shape)}")
    return input_ids.shape[1] - 1 - positions


def visual_position_ids(attention_mask: torch.Tensor, image_positions: torch.Tensor, order: str = "natural",
                        position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids of a left-padded batch with the image tokens' ids in `order`.

    "natural": the model's own ids (`position_ids`; by default 0, 1, 2, ... over the non-padded tokens);
    "reverse": the same set of ids, but the image span's ids reversed, so the first visual token (top-left) takes
    the position of the last (bottom-right) one and is nearest the question. The text keeps its ids. M-RoPE ids
    `(P, B, T)` (Qwen2-VL: temporal, height, width) are reversed over the image tokens in every component.

    Args:
        attention_mask: `(B, T)`. image_positions: `(B, M)` sequence positions of every image token, the
            never-pruned ones included (`tpx.layout.Layout.image_positions`). order: one of `ORDERS`.
        position_ids: the model's own `(B, T)` or `(P, B, T)` ids; None: built from the mask.

    Returns:
        Position ids of the same shape as the model's, on the inputs' device.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) if position_ids is None else position_ids
    if order == "natural":
        return positions
    if image_positions.ndim != 2 or image_positions.shape[1] == 0:
        raise ValueError(f"image_positions must be (B, M) with M ≥ 1, got {tuple(image_positions.shape)}")
    index = image_positions.expand(*positions.shape[:-2], *image_positions.shape)
    ids = positions.gather(-1, index)
    return positions.scatter(-1, index, ids.flip(-1))


class _Captured(Exception):
    """Raised by `_model_position_ids`'s hook to stop the forward once the language model's inputs are seen."""


def _model_position_ids(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The position ids the language model receives for `inputs` (M-RoPE `(3, B, T)` for Qwen2-VL), or None when
    the model builds 1-D ids itself. Stops the forward at the language model: nothing after the vision tower runs."""
    from tpx.models import adapter_for

    seen: dict[str, Any] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["position_ids"] = kwargs.get("position_ids")
        raise _Captured

    handle = adapter_for(model).text_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(**inputs)  # the main call's arguments, so `reuse_image_features` matches the two encoder calls
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen.get("position_ids")


def kept_under_positions(model: Any, processor: Any, samples: Sequence[Any], method: str = "fastv", *,
                         retention: float, layer: int | None = None, hook: str | None = None,
                         order: str | Sequence[str] = "natural",
                         blind: str | None = None, seed: int = 0, batch_size: int = 8,
                         progress: bool = True, **params: Any) -> pd.DataFrame:
    """Where `method` keeps tokens when the image tokens carry their position ids in `order` (one prefill each).

    Args:
        model, processor, samples: from `tpx.load` / `tpx.data.load_samples`, one image per sample.
        method, retention, layer, hook, seed, **params: the pruning configuration (as for `tpx.pruning`).
        order: "natural" or "reverse" (see `visual_position_ids`), or several: each batch is then prepared and
            its images encoded once for all of them (unless the method reads the vision tower itself).
        blind: None, "blank" or "noise": content-free images instead of the samples' (see `model_inputs`).
        batch_size, progress: batching and a progress bar.

    Returns:
        One row per sample and order: id, benchmark, task, label (`"<method> <order>"`), method, order, blind,
        retention, layer, n_keep, kept_row, kept_col, coverage, kept — the same kept-set columns as `evaluate` rows.
    """
    import contextlib

    from tqdm.auto import tqdm

    from tpx.engine import plan_for, pruning
    from tpx.evaluate import kept_summary, model_inputs
    from tpx.models import layout
    from tpx.models.base import reuse_image_features

    samples = list(samples)
    orders = [order] if isinstance(order, str) else list(order)
    if not samples or batch_size < 1:
        raise ValueError(f"need samples and batch_size ≥ 1, got {len(samples)} samples, batch_size={batch_size}")
    for o in orders:
        if o not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {o!r}")
    kwargs = dict(params, retention=retention, seed=seed) | ({} if layer is None else {"layer": layer}) \
        | ({} if hook is None else {"hook": hook})
    reads_vision = any(st.reads_vision for st in plan_for(model, method, **kwargs).stages)
    rows = {o: [] for o in orders}
    for i in tqdm(range(0, len(samples), batch_size), desc=f"{method} prefill ({', '.join(orders)})",
                  disable=not progress):
        batch = samples[i:i + batch_size]
        inputs = model_inputs(processor, batch, model, blind)
        with reuse_image_features(model) if not reads_vision else contextlib.nullcontext():
            own = _model_position_ids(model, inputs)
            for o in orders:
                position_ids = visual_position_ids(inputs["attention_mask"], layout(model, inputs).image_positions(),
                                                   o, own)
                with torch.inference_mode(), pruning(model, method, **kwargs) as run:
                    model(**inputs, position_ids=position_ids)
                entry, first = run.trace[-1], run.trace[0]
                for b, sample in enumerate(batch):
                    rows[o].append({"id": sample.id, "benchmark": sample.benchmark, "task": sample.task,
                                    "label": f"{method} {o}" + (f" {blind}" if blind else ""), "method": method,
                                    "order": o, "blind": blind or "", "retention": retention, "seed": seed,
                                    "hook": first.hook, "layer": int(first.layer), **kept_summary(entry, b)})
    return pd.DataFrame([r for o in orders for r in rows[o]])


# ---- protocol checks (Q5c) -----------------------------------------------------------------------------------

def blind_runs(model: Any, processor: Any, samples: Sequence[Any], **kwargs: Any) -> pd.DataFrame:
    """Unpruned answers with the image, without it (`blind="no_image"`) and with a blank image (`"blank"`).

    Args:
        **kwargs: passed to `evaluate` (batch_size, max_new_tokens, progress, ...).

    Returns:
        `evaluate` rows of the three runs; column `blind` is "", "no_image" or "blank".
    """
    from tpx.evaluate import BLIND, evaluate

    return pd.concat([evaluate(model, processor, samples, [None], blind=b, **kwargs) for b in BLIND],
                     ignore_index=True)


def batch_size_runs(model: Any, processor: Any, samples: Sequence[Any], batch_sizes: Sequence[int],
                    methods: Sequence[str | None], retention: float, seed: int = 0, *, progress: bool = True,
                    reuse: pd.DataFrame | None = None, reuse_batch_size: int | None = None,
                    **kwargs: Any) -> pd.DataFrame:
    """The same configurations evaluated at several batch sizes (left padding), with a `batch_size` column.

    Args:
        batch_sizes: sizes to compare (the first is the reference of `batch_size_table`).
        methods: None for the baseline and method names; retention, seed: one configuration each.
        progress: a bar over batch sizes.
        reuse, reuse_batch_size: `evaluate` rows of the same samples already answered at `reuse_batch_size`
            (e.g. the main grid); that size takes its rows from them instead of answering again.
        **kwargs: passed to `evaluate` (max_new_tokens, pruning parameters; no cache_dir: its key ignores
            the batch size).
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import evaluate

    frames = []
    names = ["unpruned" if m is None else m for m in methods]
    for size in tqdm(list(batch_sizes), desc="batch sizes", disable=not progress):
        if reuse is not None and size == reuse_batch_size:
            pruned = reuse.method.isin(names) & (reuse.retention == retention) & (reuse.seed == seed)
            df = reuse[(reuse.method == UNPRUNED) & (UNPRUNED in names) | pruned]
            if set(df.method) == set(names):
                frames.append(df.assign(batch_size=size))
                continue
        df = evaluate(model, processor, samples, methods, [retention], [seed], batch_size=size, progress=False,
                      **kwargs)
        frames.append(df.assign(batch_size=size))
    return pd.concat(frames, ignore_index=True)


def _right_padded(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same left-padded batch with every row's padding moved to its end: every per-token `(B, T)` input
    (ids, mask, and e.g. Qwen2-VL's `mm_token_type_ids`) is rotated alike."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    shift = (mask == 0).sum(1, keepdim=True)
    index = (torch.arange(ids.shape[1], device=ids.device)[None] + shift) % ids.shape[1]
    per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == ids.shape}
    return {k: v.gather(1, index) if k in per_token else v for k, v in inputs.items()}


def _answers(model: Any, processor: Any, batch: Sequence[Any], side: str, method: str | None, retention: float,
             seed: int, max_new_tokens: int, pruning_kwargs: dict[str, Any]) -> list[str]:
    from tpx.engine import pruning
    from tpx.evaluate import model_inputs

    inputs = model_inputs(processor, batch, model)
    if side == "right":
        inputs = _right_padded(inputs)
    tok = processor.tokenizer
    context = contextlib.nullcontext() if method is None else pruning(model, method, retention=retention, seed=seed,
                                                                        **pruning_kwargs)
    with torch.inference_mode(), context:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [t.strip() for t in tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def padding_check(model: Any, processor: Any, samples: Sequence[Any], methods: Sequence[str | None],
                  retention: float, *, batch_size: int = 8, seed: int = 0, max_new_tokens: int = 16,
                  progress: bool = True, **pruning_kwargs: Any) -> pd.DataFrame:
    """Answer with left and with right padding; a configuration the engine refuses records its message.

    Decoder-only generation continues after the last position of each row, so right padding makes short rows
    continue from a pad token; tpx's engine refuses such batches (every row's last position must be a real
    token). Unpruned, the model still answers, and the table shows what that does to the scores.

    Args:
        methods: None for the baseline and method names; retention, seed: of the pruned runs.
        batch_size: rows per `generate` call (≥ 2 for any padding).
        progress: a bar over (side, method).
        **pruning_kwargs: passed to `tpx.pruning`.

    Returns:
        One row per answer: id, benchmark, task, method, side, answer, score; a refused (side, method) gives
        one row per sample with answer None, score NaN and the engine's `error`.
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import score

    samples = list(samples)
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    rows = []
    todo = [(side, m) for m in methods for side in ("left", "right")]
    for side, method in tqdm(todo, desc="padding side x method", disable=not progress):
        name = method or UNPRUNED
        try:
            texts = [t for b in batches for t in _answers(model, processor, b, side, method, retention, seed,
                                                          max_new_tokens, pruning_kwargs)]
            error = ""
        except ValueError as err:
            texts, error = [None] * len(samples), str(err)
        rows += [{"id": s.id, "benchmark": s.benchmark, "task": s.task, "method": name, "side": side, "answer": t,
                  "score": math.nan if t is None else score(s, t), "error": error} for s, t in zip(samples, texts)]
    return pd.DataFrame(rows)
