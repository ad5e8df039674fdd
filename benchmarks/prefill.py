"""Prefill speed-up of FastV pruning on a CPU proxy of LLaVA-1.5, measured side by side in one process.

The proxy is a randomly initialised `LlavaForConditionalGeneration` whose Llama has hidden 1024, 16 layers
and 576 image tokens (a 336 px image, patch 14); the vision tower is kept tiny so the language model
dominates. Rows:
  (a) SDPA model: unpruned vs `fastv` at retention 0.25, K = 2, scores from recomputed attention rows;
  (b) eager model: unpruned vs `fastv` reading eager attention maps (the original FastV way);
  (c) scoring + selection alone (one attention row at layer K−1, head mean, top-k).
Baseline and pruned runs alternate for several rounds, so ratios hold on a noisy machine; on a shared CPU,
`--clock process` times this process's CPU time instead of wall time (with `--threads 1` they agree on an idle
machine). Beside each measured speed-up: the FLOPs-ideal one from 4nd² + 2n²d + 3ndm per layer (K layers at n,
the rest at n̂).

Usage: python benchmarks/prefill.py [--layers 16] [--hidden 1024] [--rounds 3] [--device cpu] [--clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils import benchmark

import tpx
from tpx import scores, select
from tpx.data import sample_picture
from tpx.models import adapter_for, layout


def proxy(hidden: int, layers: int, device: str):
    """The CPU proxy of LLaVA-1.5 (`tpx.latency.proxy`), shared by the benchmarks and notebook 05."""
    from tpx.latency import proxy as build

    return build(hidden, layers, device=device)


def llm_flops(n: int, d: int, m: int) -> int:
    """Per-layer multiply-accumulates of a Llama layer with n tokens: 4nd² + 2n²d + 3ndm."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def timed(fn, label: str, clock: str = "wall", min_run_time: float = 2.0) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label, timer=CLOCKS[clock])
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--retention", type=float, default=0.25)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="process: CPU time (shared machines)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per timing block")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = proxy(args.hidden, args.layers, args.device)
    inputs = processor(images=sample_picture(), text="USER: <image>\nWhat is shown in the image? Answer briefly. ASSISTANT:",
                       return_tensors="pt").to(args.device)
    n = inputs["input_ids"].shape[1]
    geometry = layout(model, inputs)
    n_visual = geometry.n_visual
    n_hat = n - n_visual + select.budget(args.retention, n_visual)
    d, m, L, K = args.hidden, int(args.hidden * 2.6875), args.layers, args.layer
    ideal = L * llm_flops(n, d, m) / (K * llm_flops(n, d, m) + (L - K) * llm_flops(n_hat, d, m))

    def forward():
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)

    def pruned(attention: str):
        def run():
            with torch.inference_mode(), tpx.pruning(model, "fastv", retention=args.retention, layer=K, attention=attention):
                model(**inputs, logits_to_keep=1)
        return run

    decoder = adapter_for(model).decoder
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True, use_cache=True)
    h1 = out.hidden_states[K - 1]
    pe = decoder.rotary(h1, torch.arange(n, device=h1.device)[None])
    visual = geometry.positions
    n_keep = select.budget(args.retention, n_visual)
    att_heads = model.config.text_config.num_attention_heads

    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    def score_select(cached: bool):
        def run():
            with torch.inference_mode():
                rows = torch.full((1, 1), n - 1, device=h1.device)
                att = decoder.attention_rows(K - 1, h1, pe, rows, None, cache=cache if cached else None)
                att = att[:, :, 0].gather(2, visual[:, None].expand(-1, att_heads, -1))
                select.topk(scores.last_token_attention(att), n_keep)
        return run

    results: dict[str, list[float]] = {k: [] for k in ("sdpa_full", "sdpa_fastv", "eager_full", "eager_fastv", "score", "score_cached")}
    clock, t = args.clock, args.min_run_time
    for _ in range(args.rounds):
        model.set_attn_implementation("sdpa")
        results["sdpa_full"].append(timed(forward, "sdpa full", clock, t))
        results["sdpa_fastv"].append(timed(pruned("rows"), "sdpa fastv", clock, t))
        results["score"].append(timed(score_select(False), "score+select", clock, t))
        results["score_cached"].append(timed(score_select(True), "score+select, cached keys", clock, t))
        model.set_attn_implementation("eager")
        results["eager_full"].append(timed(forward, "eager full", clock, t))
        results["eager_fastv"].append(timed(pruned("maps"), "eager fastv", clock, t))
    med = {k: statistics.median(v) for k, v in results.items()}
    spread = {k: (max(v) - min(v)) / 2 for k, v in results.items()}

    print(f"proxy LLaVA: Llama {L} layers x hidden {d} (MLP {m}), {n} tokens of which {n_visual} visual; "
          f"fastv keeps {n_keep} at K={K} -> n_hat={n_hat}; device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, {args.rounds} interleaved rounds (median, +- half range)")
    print(f"{'setting':<44}{'prefill ms':>14}{'speed-up':>10}{'ideal':>8}{'of ideal':>10}")
    for kernel, how in (("sdpa", "recomputed rows"), ("eager", "eager attention maps")):
        full, fast = med[f"{kernel}_full"], med[f"{kernel}_fastv"]
        print(f"{kernel + ' unpruned':<44}{full * 1e3:>9.1f} ±{spread[kernel + '_full'] * 1e3:>4.1f}{'1.00x':>10}")
        print(f"{kernel + ' fastv (' + how + ')':<44}{fast * 1e3:>9.1f} ±{spread[kernel + '_fastv'] * 1e3:>4.1f}"
              f"{full / fast:>9.2f}x{ideal:>7.2f}x{full / fast / ideal:>9.0%}")
    for key, label in (("score_cached", "scoring + selection (keys from K-1's cache)"), ("score", "scoring + selection (keys recomputed)")):
        share = med[key] / med["sdpa_full"]
        print(f"{label:<44}{med[key] * 1e3:>9.2f} ±{spread[key] * 1e3:>4.2f}"
              f"{'':>10}{'':>8}{share:>9.2%} of unpruned sdpa prefill")
    print(f"eager vs sdpa, unpruned: {med['eager_full'] / med['sdpa_full']:.2f}x slower; "
          f"fastv eager maps vs sdpa rows: {med['eager_fastv'] / med['sdpa_fastv']:.2f}x slower")


if __name__ == "__main__":
    main()
