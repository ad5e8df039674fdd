"""Timing repeats: each configuration's prefill and end-to-end time once per repeat, configurations interleaved.

`tpx.latency.measure` reports medians over many calls; a confidence interval over repeats needs one time per
(repeat, configuration), measured close together so that a slow moment of a shared machine hits every
configuration alike. `tpx.analysis.accounting` turns these rows into shares of the unpruned time and their
bootstrap intervals (the study's Q5a: Wen et al. 2025, arXiv 2502.11501, Table 7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from tpx.latency import CLOCKS, default_samples

__all__ = ["timing_repeats"]


def timing_repeats(model: Any, processor: Any, configs: Mapping[str, Mapping[str, Any]], *,
                   samples: Sequence[Any] | None = None, repeats: int = 10, max_new_tokens: int = 6, clock: str = "wall",
                   progress: bool = True) -> pd.DataFrame:
    """Prefill and end-to-end time of each configuration, once per repeat, configurations interleaved.

    `tpx.latency.measure` reports medians; a paired CI needs one time per (repeat, configuration), measured
    close together, which this records. Configurations are grouped by attention implementation (one switch and
    one untimed prefill per group and repeat); every configuration is warmed up once before the first repeat.

    Args:
        model, processor: from `tpx.load` or `tpx.latency.proxy`.
        configs: label → {"method": name or None (unpruned), "attn_implementation": "sdpa" / "eager" / None,
            **`tpx.pruning` keyword arguments (retention, layer, attention, ...)}.
        samples: the batch (default: `measure`'s photo and question). repeats: ≥ 2.
        max_new_tokens: forced length of the end-to-end generation. clock: a key of `tpx.latency.CLOCKS`.
        progress: a `tqdm.auto` bar over repeats.

    Returns:
        One row per (repeat, label): repeat, label, method, attn_implementation, prefill_ms, select_ms (the part
        of that prefill the engine spent choosing tokens: every stage's ingredients, scorer and selector, timed
        with `tpx.pruning(timing=True)`; 0 unpruned), e2e_ms.
    """
    import contextlib

    import torch
    from tqdm.auto import tqdm

    from tpx.engine import pruning
    from tpx.evaluate import model_inputs

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an int ≥ 2, got {repeats!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    if samples is None:
        samples = default_samples()
    inputs, timer = model_inputs(processor, list(samples), model), CLOCKS[clock]
    pad = getattr(model.generation_config, "pad_token_id", None)
    previous = model.config.get_text_config()._attn_implementation

    def run(spec: Mapping[str, Any], fn: Any) -> tuple[float, float]:
        """(ms of `fn`, ms the engine spent choosing tokens inside it: 0 unpruned)."""
        kw = {k: v for k, v in spec.items() if k not in ("method", "attn_implementation")}
        ctx = contextlib.nullcontext() if spec.get("method") is None else pruning(model, spec["method"], timing=True, **kw)
        with torch.inference_mode(), ctx as pruned:
            start = timer()
            fn()
            if inputs["input_ids"].is_cuda:
                torch.cuda.synchronize()
            took = 1e3 * (timer() - start)
        chose = 0.0 if pruned is None else sum(e.select_ms for e in pruned.trace[:len(pruned.layers)])
        return took, chose

    def prefill() -> Any:
        return model(**inputs, use_cache=True, logits_to_keep=1)

    def generate() -> Any:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=pad)

    groups: dict[str | None, list[str]] = {}  # by attention implementation: one switch (and warm-up) per group
    for label, spec in configs.items():
        groups.setdefault(spec.get("attn_implementation"), []).append(label)
    rows = []
    try:
        for impl, labels in groups.items():  # warm-up; every configuration validated before timing
            if impl:
                model.set_attn_implementation(impl)
            for label in labels:
                run(configs[label], prefill), run(configs[label], generate)
        for r in tqdm(range(repeats), desc="timing repeats", disable=not progress):
            for impl, labels in groups.items():
                if impl:
                    model.set_attn_implementation(impl)
                run(configs[labels[0]], prefill)  # untimed: the first call after a switch pays for the switch
                for label in labels:
                    spec = configs[label]
                    prefill_ms, select_ms = run(spec, prefill)
                    rows.append({"repeat": r, "label": label, "method": spec.get("method") or "unpruned",
                                 "attn_implementation": impl or previous, "prefill_ms": prefill_ms,
                                 "select_ms": select_ms, "e2e_ms": run(spec, generate)[0]})
    finally:
        model.set_attn_implementation(previous)
    return pd.DataFrame(rows)
