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
from typing import Any

import pandas as pd
import torch

__all__ = ["ORDERS", "kept_under_positions", "last_token_attention", "rope_frequencies", "visual_position_ids"]

ORDERS = ("natural", "reverse")


def rope_frequencies(model: Any) -> torch.Tensor:
    """The rotary frequencies θ_k (`inv_freq`, `(head_dim/2,)`) of the model's language model, for
    `tpx.analysis.spatial.rope_decay`."""
    from tpx.models import adapter_for

    rotary = getattr(adapter_for(model).text_model, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise TypeError(f"{type(model).__name__}'s language model has no rotary embedding with inv_freq")
    return rotary.inv_freq.detach().float().cpu()


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
        `(scores (S, N), distances (S, N))` on the CPU, float and long.
    """
    from tqdm.auto import tqdm

    from tpx.analysis.spatial import visual_distances
    from tpx.engine import pruning
    from tpx.evaluate import model_inputs

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
        distances.append(visual_distances(inputs["input_ids"], model.config.image_token_id).cpu())
    return torch.cat(scores), torch.cat(distances)


def visual_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int,
                        order: str = "natural") -> torch.Tensor:
    """Position ids of a left-padded batch with the image tokens' ids in `order`.

    "natural": 0, 1, 2, ... over the non-padded tokens (what the model uses by itself); "reverse": the same
    set of ids, but the image span's ids reversed, so the first visual token (top-left) takes the position of
    the last (bottom-right) one and is nearest the question. The text keeps its ids.

    Args:
        input_ids, attention_mask: `(B, T)`. image_token_id: the placeholder id. order: one of `ORDERS`.

    Returns:
        `(B, T)` long position ids on the inputs' device.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if order == "natural":
        return positions
    is_image = input_ids == image_token_id
    counts = is_image.sum(1)
    if not bool(counts.any()) or not bool((counts == counts[0]).all()):
        raise ValueError(f"every row must hold the same, non-zero number of image tokens, got {counts.tolist()}")
    index = is_image.nonzero()[:, 1].view(input_ids.shape[0], -1)        # (B, N) sequence index of each token
    ids = positions.gather(1, index)
    return positions.scatter(1, index, ids.flip(1))


def kept_under_positions(model: Any, processor: Any, samples: Sequence[Any], method: str = "fastv", *,
                         retention: float, layer: int | None = None, hook: str | None = None,
                         order: str = "natural",
                         blind: str | None = None, seed: int = 0, batch_size: int = 8,
                         progress: bool = True, **params: Any) -> pd.DataFrame:
    """Where `method` keeps tokens when the image tokens carry their position ids in `order` (one prefill each).

    Args:
        model, processor, samples: from `tpx.load` / `tpx.data.load_samples`, one image per sample.
        method, retention, layer, hook, seed, **params: the pruning configuration (as for `tpx.pruning`).
        order: "natural" or "reverse" (see `visual_position_ids`).
        blind: None, "blank" or "noise": content-free images instead of the samples' (see `model_inputs`).
        batch_size, progress: batching and a progress bar.

    Returns:
        One row per sample: id, benchmark, task, label (`"<method> <order>"`), method, order, blind, retention,
        layer, n_keep, kept_row, kept_col, coverage, kept — the same kept-set columns as `evaluate` rows.
    """
    from tqdm.auto import tqdm

    from tpx.engine import pruning
    from tpx.evaluate import _kept, model_inputs

    samples = list(samples)
    if not samples or batch_size < 1:
        raise ValueError(f"need samples and batch_size ≥ 1, got {len(samples)} samples, batch_size={batch_size}")
    kwargs = dict(params, retention=retention, seed=seed) | ({} if layer is None else {"layer": layer}) \
        | ({} if hook is None else {"hook": hook})
    rows = []
    for i in tqdm(range(0, len(samples), batch_size), desc=f"{method} prefill ({order})", disable=not progress):
        batch = samples[i:i + batch_size]
        inputs = model_inputs(processor, batch, model, blind)
        position_ids = visual_position_ids(inputs["input_ids"], inputs["attention_mask"],
                                           model.config.image_token_id, order)
        with torch.inference_mode(), pruning(model, method, **kwargs) as run:
            model(**inputs, position_ids=position_ids)
        entry, first = run.trace[-1], run.trace[0]
        for b, sample in enumerate(batch):
            rows.append({"id": sample.id, "benchmark": sample.benchmark, "task": sample.task,
                         "label": f"{method} {order}" + (f" {blind}" if blind else ""), "method": method,
                         "order": order, "blind": blind or "", "retention": retention, "seed": seed,
                         "hook": first.hook, "layer": int(first.layer), **_kept(entry, b)})
    return pd.DataFrame(rows)
