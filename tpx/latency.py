"""Latency, memory, FLOPs and KV-cache size of pruned runs, measured beside the unpruned baseline.

`measure(model, processor, samples, methods=["fastv"], retentions=[0.25])` times prefill (time to first
token, vision encoder included) and end-to-end generation of a fixed number of tokens with
`torch.utils.benchmark` (warm-up, repeats, median and IQR; it synchronises CUDA itself), decode per token
from a streamer's stamps inside single generations, and the method's scorer + selector alone. The unpruned
baseline and every pruned configuration alternate for `rounds` rounds in the same process, so their ratios
hold on a noisy machine. Next to each time: peak memory, the analytic FLOPs of the study's model (Wen et al.
2025, arXiv 2502.11501, Q5a), the FLOPs that `torch.utils.flop_counter.FlopCounterMode` counts in the decoder
layers, and the KV-cache bytes.
"""

from __future__ import annotations

import logging
import re
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

__all__ = ["default_samples", "kv_bytes", "layer_lengths", "layer_macs", "llm_flops", "measure", "proxy"]

log = logging.getLogger(__name__)
UNPRUNED = "unpruned"
# "process": the CPU time of this process (all its threads), steady on a shared machine with one intra-op thread
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


# ---- analytic model -----------------------------------------------------------------------------------------

def layer_macs(n: int, d: int, m: int, d_kv: int | None = None) -> int:
    """Multiply-accumulates of one Llama decoder layer over `n` tokens: 4nd² + 2n²d + 3ndm.

    With grouped-query attention (`d_kv` = kv heads × head dim < d) the k and v projections cost 2nd·d_kv
    instead of 2nd². Norms, rotary and softmax are left out, as in the study.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q5 (3ndm for a SwiGLU MLP).

    Args:
        n: tokens in the layer; d: hidden size; m: MLP width; d_kv: key/value width (default d).
    """
    d_kv = d if d_kv is None else d_kv
    return 2 * n * d * d + 2 * n * d * d_kv + 2 * n * n * d + 3 * n * d * m


def layer_lengths(n_layers: int, n: int, n_visual: int, stages: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens seen by each decoder layer: `n` before the first stage, then `n − n_visual + n_keep` of the
    latest stage whose layer K is ≤ the layer (hooks "E" / "V" are stages at layer 0).

    Args:
        n_layers: decoder layers; n: prompt length; n_visual: visual tokens N.
        stages: `(layer, n_keep)` per pruning stage, e.g. from a run's trace; empty when unpruned.
    """
    out, current = [], n
    todo = sorted(stages)
    for i in range(n_layers):
        while todo and todo[0][0] <= i:
            current = n - n_visual + todo.pop(0)[1]
        out.append(current)
    return out


def _text_config(model: Any) -> Any:
    config = model.config
    return getattr(config, "text_config", config)


def _dims(model: Any) -> tuple[int, int, int, int, int]:
    c = _text_config(model)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return c.hidden_size, c.intermediate_size, kv_heads * head_dim, kv_heads, head_dim


def llm_flops(model: Any, lengths: Sequence[int], batch: int = 1) -> int:
    """Analytic FLOPs (2 × MACs) of the decoder layers of `model` for the given per-layer lengths."""
    d, m, d_kv, _, _ = _dims(model)
    return 2 * batch * sum(layer_macs(n, d, m, d_kv) for n in lengths)


def kv_bytes(model: Any, lengths: Sequence[int], batch: int = 1, dtype: torch.dtype | None = None) -> int:
    """Bytes of keys and values cached after a prefill with the given per-layer lengths."""
    _, _, _, kv_heads, head_dim = _dims(model)
    size = torch.empty((), dtype=dtype or next(model.parameters()).dtype).element_size()
    return 2 * batch * kv_heads * head_dim * size * sum(lengths)


def _cache_bytes(cache: Any) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def _counted_flops(model: Any, fn: Callable[[], Any]) -> int:
    """FLOPs that FlopCounterMode attributes to the decoder layers during `fn()`."""
    from torch.utils.flop_counter import FlopCounterMode

    from tpx.models import adapter_for

    layers = {id(layer) for layer in adapter_for(model).layers}
    names = {f"{type(model).__name__}.{name}" for name, mod in model.named_modules() if id(mod) in layers}
    from torch.utils import flop_counter

    # Under inference mode on CPU, SDPA reaches the dispatcher as ops FlopCounterMode has no formula for;
    # they cost what its registered SDPA kernels cost (both products, causal mask ignored)
    def sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    ops = (aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention_for_cpu)
    sdpa = {op: sdpa_flops for op in ops}
    with FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        fn()
    return int(sum(sum(v.values()) for k, v in counter.get_flop_counts().items() if k in names))


# ---- memory -------------------------------------------------------------------------------------------------

def _peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    """Peak memory of `fn()` in bytes and what was read: CUDA allocator peak, or the process's resident-set
    high-water mark (reset through /proc/self/clear_refs where Linux allows; else the lifetime peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        fn()
        status = Path("/proc/self/status").read_text()
        return float(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024, "rss_peak"
    except (OSError, AttributeError):
        fn()
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "rss_lifetime_peak"


# ---- timing -------------------------------------------------------------------------------------------------

class _Clock:
    """A `generate` streamer that records when the prompt and each new token arrive (generate moves every
    token to the CPU before handing it over, so on a GPU each stamp follows a synchronisation)."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.stamps: list[float] = []
        self.timer = timer

    def put(self, value: Any) -> None:
        self.stamps.append(self.timer())

    def end(self) -> None:
        pass


def _times(fn: Callable[[], Any], min_run_time: float, timer: Callable[[], float] = time.perf_counter) -> list[float]:
    from torch.utils import benchmark

    fn()  # warm-up beyond the Timer's own block-size estimation
    timed = benchmark.Timer(stmt="fn()", globals={"fn": fn}, timer=timer)
    return list(timed.blocked_autorange(min_run_time=min_run_time).times)


def _median_iqr(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float(values[0]), 0.0
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[2] - q[0]


# ---- one configuration --------------------------------------------------------------------------------------

class _Config:
    """Callables for one (method, retention) on fixed inputs: prefill, generate 1 and generate T tokens."""

    def __init__(self, model: Any, inputs: dict, method: str, retention: float, max_new_tokens: int,
                 pruning_kwargs: dict[str, Any], timer: Callable[[], float] = time.perf_counter) -> None:
        self.model, self.inputs, self.name, self.retention = model, inputs, method, retention
        self.timer = timer
        self.max_new_tokens, self.kwargs = max_new_tokens, pruning_kwargs
        self.method = None if method == UNPRUNED else method
        self.last_trace: list[Any] = []
        self.stages: list[tuple[int, int]] = []
        self.times: dict[str, list[float]] = {"prefill": [], "decode": [], "genT": []}

    def _run(self, fn: Callable[[], Any], timing: bool = False) -> Any:
        from tpx.engine import pruning

        with torch.inference_mode():
            if self.method is None:
                return fn()
            with pruning(self.model, self.method, retention=self.retention, timing=timing, **self.kwargs) as run:
                out = fn()
            self.stages = [(e.layer, e.n_keep) for e in run.trace[-len(run.layers):]]
            self.last_trace = run.trace[-len(run.layers):]
            return out

    def prefill(self, timing: bool = False) -> Any:
        return self._run(lambda: self.model(**self.inputs, use_cache=True, logits_to_keep=1), timing)

    def select_ms(self, calls: int = 5) -> float:
        """Median over `calls` prefills of the time the engine spent choosing tokens (ms): every stage's
        ingredients, scorer and selector, timed inside the prefill (`tpx.pruning(timing=True)`)."""
        if self.method is None:
            return 0.0
        per_call = []
        for _ in range(calls):
            self.prefill(timing=True)
            per_call.append(sum(e.select_ms for e in self.last_trace))
        return statistics.median(per_call)

    def generate(self, tokens: int, streamer: Any = None) -> Any:
        pad = getattr(self.model.generation_config, "pad_token_id", None)
        return self._run(lambda: self.model.generate(**self.inputs, max_new_tokens=tokens, min_new_tokens=tokens,
                                                     do_sample=False, pad_token_id=pad, streamer=streamer))

    def decode_time(self) -> float:
        """Seconds per decode step within one generation: from the first new token to the last, / (T − 1)."""
        clock = _Clock(self.timer)
        self.generate(self.max_new_tokens, clock)
        return (clock.stamps[-1] - clock.stamps[1]) / (self.max_new_tokens - 1)

    def time_round(self, min_run_time: float, decode_runs: int = 3) -> None:
        self.times["prefill"] += _times(self.prefill, min_run_time, self.timer)
        self.times["genT"] += _times(lambda: self.generate(self.max_new_tokens), min_run_time, self.timer)
        self.times["decode"] += [self.decode_time() for _ in range(decode_runs)]


def _row(config: _Config, model: Any, inputs: dict, flops: bool) -> dict[str, Any]:
    from tpx.models import layout

    ids = inputs["input_ids"]
    batch, n = ids.shape
    n_visual = int(layout(model, inputs).n_visual)  # prunable tokens: LLaVA-NeXT's newlines stay in every layer
    lengths = layer_lengths(len(_layers(model)), n, n_visual, config.stages)
    out = config.prefill()
    device = ids.device
    peak, kind = _peak_memory(lambda: config.generate(config.max_new_tokens), device)
    prefill, prefill_iqr = _median_iqr(config.times["prefill"])
    decode, decode_iqr = _median_iqr(config.times["decode"])
    gen_t, gen_t_iqr = _median_iqr(config.times["genT"])
    row = {
        "method": config.name, "retention": config.retention, "batch_size": batch, "n_tokens": n,
        "n_visual": n_visual, "n_keep": config.stages[-1][1] if config.stages else n_visual,
        "stages": list(config.stages), "prefill_ms": 1e3 * prefill, "prefill_iqr_ms": 1e3 * prefill_iqr,
        "decode_ms_per_token": 1e3 * decode, "decode_iqr_ms": 1e3 * decode_iqr,
        "e2e_ms": 1e3 * gen_t, "e2e_iqr_ms": 1e3 * gen_t_iqr, "max_new_tokens": config.max_new_tokens,
        "select_ms": config.select_ms(),
        "peak_mem_mb": peak / 2 ** 20, "peak_mem_kind": kind,
        "flops": llm_flops(model, lengths, batch), "kv_bytes": kv_bytes(model, lengths, batch),
        "kv_bytes_measured": _cache_bytes(out.cache),
    }
    row["flops_counted"] = _counted_flops(model, config.prefill) if flops else None
    return row


def _layers(model: Any) -> Any:
    from tpx.models import adapter_for

    return adapter_for(model).layers


# ---- public entry point -------------------------------------------------------------------------------------

def default_samples() -> list:
    """The one sample latency is measured on when none is given: the shipped photo and a plain question."""
    from tpx.data import Sample, sample_picture

    q = "What is shown in the image?"
    return [Sample("picture", sample_picture(), q, q, [""], "picture", "picture")]


def measure(model: Any, processor: Any, samples: Sequence[Any] | None = None,
            methods: Sequence[str] = ("fastv",), retentions: Sequence[float] = (0.25,), *, batch_size: int = 1,
            max_new_tokens: int = 16, rounds: int = 3, min_run_time: float = 0.5,
            attn_implementation: str | None = None, flops: bool = True, progress: bool = True,
            clock: str = "wall", **pruning_kwargs: Any) -> pd.DataFrame:
    """Time the unpruned model and each (method, retention) on the same batch, interleaved.

    Args:
        model, processor: from `tpx.load`.
        samples: `tpx.data.Sample`s; the first `batch_size` form the batch (default: the Grace Hopper
            photo with "What is shown in the image?").
        methods, retentions: the pruned configurations; the unpruned baseline is always measured.
        batch_size: rows per call, ≥ 1.
        max_new_tokens: tokens T of the end-to-end generation (forced with `min_new_tokens`), ≥ 2; decode per
            token is the time from the first new token to the last within one generation, / (T − 1),
            stamped by a streamer (3 generations per round), so it needs no difference of two noisy runs.
        rounds: rounds over all configurations; each round runs `blocked_autorange` once for prefill and
            once for end-to-end generation.
        min_run_time: seconds per `blocked_autorange`.
        attn_implementation: "sdpa", "eager", "flash_attention_2" (where installed), or None to keep the
            model's; it is restored afterwards.
        flops: also count FLOPs with FlopCounterMode (one extra prefill per configuration).
        progress: a `tqdm.auto` bar over rounds × configurations.
        clock: "wall" (elapsed time, the default: latency as a user sees it) or "process" (this process's CPU
            time, all threads summed: with one intra-op thread on a CPU it equals the wall time of an idle core
            and ignores the time other jobs hold the core; meaningless on a GPU, where the CPU waits).
        **pruning_kwargs: passed to `tpx.pruning` (layer, hook, attention="maps", method parameters).

    Returns:
        One row per configuration, baseline first: method, retention, batch_size, n_tokens, n_visual,
        n_keep, stages [(layer, n_keep)], prefill_ms / prefill_iqr_ms, decode_ms_per_token / decode_iqr_ms,
        e2e_ms / e2e_iqr_ms, max_new_tokens, select_ms (what the engine spent choosing tokens inside the
        prefill: every stage's ingredients — recomputed attention rows, keys, features —, scorer and selector,
        timed with `tpx.pruning(timing=True)`: CUDA events on a GPU, perf_counter on the CPU; a part of
        prefill_ms, reported apart as UniPruneBench, arXiv 2511.02650, reports its methods' own time), peak_mem_mb and peak_mem_kind,
        flops (analytic, decoder layers, 2 × MACs), flops_counted (FlopCounterMode, decoder layers; it also
        counts the matrix products of the method's scoring and selection that run in those layers' hooks,
        e.g. a recomputed attention row or DivPrune's N × N similarities, which the formula leaves out), kv_bytes
        (analytic) and kv_bytes_measured (the cache's tensors), attn_implementation, device, and the ratios
        prefill_speedup, e2e_speedup, flops_rel and kv_rel against the baseline.

    Raises:
        ValueError: for `max_new_tokens` < 2, `rounds` < 1, `batch_size` < 1 or an unknown `clock` (method and
            retention errors come from `tpx.pruning`).
    """
    from tqdm.auto import tqdm

    from tpx.evaluate import model_inputs

    for name, value, low in (("max_new_tokens", max_new_tokens, 2), ("rounds", rounds, 1),
                             ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    if samples is None:
        samples = default_samples()
    batch = [samples[i % len(samples)] for i in range(batch_size)]
    previous = _text_config(model)._attn_implementation
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    try:
        inputs = model_inputs(processor, batch, model)
        timer = CLOCKS[clock]
        configs = [_Config(model, inputs, UNPRUNED, 1.0, max_new_tokens, pruning_kwargs, timer)]
        configs += [_Config(model, inputs, m, r, max_new_tokens, pruning_kwargs, timer)
                    for m in methods for r in retentions]
        for c in configs:
            c.prefill()  # validates each configuration and records its stages before any timing
        with tqdm(total=rounds * len(configs), desc="latency rounds x configs", disable=not progress) as bar:
            for _ in range(rounds):
                for c in configs:
                    c.time_round(min_run_time)
                    bar.update()
        rows = [_row(c, model, inputs, flops) for c in configs]
        implementation = _text_config(model)._attn_implementation
    finally:
        if attn_implementation is not None:
            model.set_attn_implementation(previous)
    df = pd.DataFrame(rows).assign(attn_implementation=implementation, device=str(inputs["input_ids"].device),
                                   clock=clock)
    base = df.iloc[0]
    return df.assign(prefill_speedup=base["prefill_ms"] / df["prefill_ms"], e2e_speedup=base["e2e_ms"] / df["e2e_ms"],
                     flops_rel=df["flops"] / base["flops"], kv_rel=df["kv_bytes"] / base["kv_bytes"])


# ---- proxy model (Q5a notebook) -----------------------------------------------------------------------------

def proxy(hidden: int = 512, layers: int = 8, *, device: str = "cpu", dtype: torch.dtype | None = None,
          seed: int = 0) -> tuple[Any, Any]:
    """A random LLaVA-1.5-shaped model for timing: 576 image tokens, Llama of `layers` × `hidden`.

    Latency depends on shapes, not on trained weights, so a random model of LLaVA-1.5's geometry (336 px
    images, patch 14 → a 24×24 grid; MLP width 2.6875 · hidden as 11008 / 4096; vocabulary 32000) gives
    the study's token counts on any machine. The vision tower is kept tiny (2 layers × 64) so the language
    model dominates, as it does in LLaVA-1.5-7B. `hidden=4096, layers=32` is LLaVA-1.5-7B's language model.

    Args:
        hidden: Llama hidden size (a multiple of 64: heads of 64, no grouped-query attention, as LLaVA-1.5).
        layers: decoder layers.
        device: where to build the model; dtype: weights' dtype (default float32).
        seed: seed of the random weights (a local generator; the global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode with SDPA attention; the processor pads on the left.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from tpx.models.tiny import tiny

    if hidden < 64 or hidden % 64:
        raise ValueError(f"hidden must be a positive multiple of 64 (heads of 64), got {hidden}")
    if layers < 2:
        raise ValueError(f"layers must be ≥ 2, got {layers}")
    _, processor = tiny(image_size=336, patch_size=14)
    heads = hidden // 64
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4),
        text_config=LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                max_position_embeddings=4096),
        image_token_id=processor.tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation("sdpa")
    return model.to(device=device, dtype=dtype).eval(), processor
