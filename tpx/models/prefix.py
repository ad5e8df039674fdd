"""Reuse of the decoder layers a grid's configurations share: the layers before a configuration's first cut see
exactly the inputs of the unpruned model, so their outputs (and the keys and values they cache) can be replayed
instead of recomputed.

Why: a grid answers one batch under many configurations; at hook L, K = 2 every one of them runs layers 0 and 1
on the full prompt, the largest part of its prefill. Reuse is decided by content, not by plan: a layer's call is
replayed only when its hidden states, position embeddings, mask and every other tensor argument are bit-for-bit
those of a recorded call, at prefill (an empty cache for that layer), and when no hook sits inside the layer (a
method reading attention maps must see them computed). So a replayed run is the computed run, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["reuse_prefix"]

CACHE_NAMES = ("cache", "past_key_values")  # transformers 5.x names the decoder layers' cache argument either way


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _hooked_inside(layer: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for name, m in layer.named_modules() if name)


@contextmanager
def reuse_prefix(model: torch.nn.Module, layers: list[torch.nn.Module] | None = None,
                 upto: int | None = None) -> Iterator[dict]:
    """Inside the block, a decoder layer called at prefill with the inputs of an earlier call returns that call's
    output and replays its cache update, without running.

    Memory: one recorded call per layer (its inputs, output and cached keys and values), replaced only by a call
    with a longer input, so the full-length call a later configuration can match is the one kept; and only the
    layers before `upto` are recorded (the grid runner passes the deepest first cut of its group: on a GPU, a
    7B model's 32 layers of activations would not fit beside the model).

    Args:
        model: a model `tpx.models.adapter_for` knows.
        layers: the decoder layers (default: the adapter's).
        upto: record and replay only layers `0 … upto − 1` (default: every layer).

    Yields:
        a dict whose "calls" and "reused" count prefill calls of the covered layers and replays (for tests and
        benchmarks).
    """
    if layers is None:
        from tpx.models import adapter_for

        layers = list(adapter_for(model).decoder.layers)
    layers = layers[:upto] if upto is not None else layers
    stats = {"calls": 0, "reused": 0}
    memo: list[list[tuple]] = [[] for _ in layers]
    patched = []

    def wrap(i: int, layer: torch.nn.Module) -> Any:
        real = layer.forward

        @functools.wraps(real)
        def forward(*args: Any, **kwargs: Any) -> Any:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and cache.get_seq_length(i) > 0:  # a decode step: never shared
                return real(*args, **kwargs)
            stats["calls"] += 1
            seen = {k: v for k, v in kwargs.items() if k not in CACHE_NAMES}
            if not _hooked_inside(layer):
                for m_args, m_kwargs, out, update in memo[i]:
                    if _same(args, m_args) and m_kwargs.keys() == seen.keys() and \
                            all(_same(seen[k], m_kwargs[k]) for k in seen):
                        if cache is not None and update is not None:
                            cache.update(*(a.clone() if isinstance(a, torch.Tensor) else a for a in update[0]),
                                         **update[1])
                        stats["reused"] += 1
                        return out.clone()
            record: list = []
            if cache is not None:
                original = cache.update

                def spy(*u_args: Any, **u_kwargs: Any) -> Any:
                    record.append((tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in u_args), u_kwargs))
                    return original(*u_args, **u_kwargs)

                cache.update = spy
            try:
                out = real(*args, **kwargs)
            finally:
                if cache is not None:
                    del cache.update
            size = out.numel() if isinstance(out, torch.Tensor) else 0
            longer = not memo[i] or size > memo[i][0][2].numel()
            if size and longer and len(record) <= 1 and (cache is None or record):
                kept_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                kept_kwargs = {k: tuple(x.clone() for x in v) if isinstance(v, tuple) and all(
                    isinstance(x, torch.Tensor) for x in v) else v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in seen.items()}
                memo[i][:] = [(kept_args, kept_kwargs, out.clone(), record[0] if record else None)]
            return out

        return forward

    for i, layer in enumerate(layers):
        if "forward" in vars(layer):
            raise RuntimeError(f"decoder layer {i} already has its forward replaced; reuse_prefix cannot nest")
        layer.forward = wrap(i, layer)
        patched.append(layer)
    try:
        yield stats
    finally:
        for layer in patched:
            del layer.forward
        memo.clear()
