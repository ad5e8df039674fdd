"""Evaluation throughput: samples per second of `tpx.evaluate.evaluate` at batch 1 and batch 8, side by side.

Runs the organism suite (every task, `--n` samples each) through the given model — the tiny random LLaVA by
default, or the trained organism with `--model data/organism/model` — unpruned and with FastV, greedy, at
`--max-new-tokens`. Batch sizes alternate for `--rounds` rounds in one process, so the ratio holds on a noisy
machine; the table shows the median samples/s and the speed-up of every batch size over batch 1.

Usage: python benchmarks/throughput.py [--model tiny] [--n 4] [--batch-sizes 1,8] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tpx
from tpx.data import load_samples
from tpx.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--n", type=int, default=4, help="samples per organism task")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--methods", default="unpruned,fastv")
    ap.add_argument("--retention", type=float, default=0.25)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine, 1 avoids waiting on a descheduled thread

    model, processor = tpx.load(args.model, device=args.device)
    samples = load_samples("organism", n=args.n)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = args.methods.split(",")
    evaluate(model, processor, samples[:8], methods=methods, retentions=[args.retention], batch_size=8,
             max_new_tokens=args.max_new_tokens, progress=False)  # warm-up
    rates: dict[tuple[str, int], list[float]] = {(m, b): [] for m in methods for b in sizes}
    for _ in range(args.rounds):
        for method in methods:
            for b in sizes:
                start = time.perf_counter()
                evaluate(model, processor, samples, methods=[method], retentions=[args.retention], batch_size=b,
                         max_new_tokens=args.max_new_tokens, progress=False)
                rates[(method, b)].append(len(samples) / (time.perf_counter() - start))

    print(f"model {args.model!r} on {next(model.parameters()).device}, {torch.get_num_threads()} threads; "
          f"{len(samples)} organism samples, {args.max_new_tokens} new tokens, fastv retention {args.retention}; "
          f"median of {args.rounds} interleaved rounds (min..max)")
    print(f"{'method':<10}{'batch':>6}{'samples/s':>12}{'range':>18}{'speed-up':>10}")
    for method in methods:
        base = statistics.median(rates[(method, sizes[0])])
        for b in sizes:
            r = rates[(method, b)]
            med = statistics.median(r)
            print(f"{method:<10}{b:>6}{med:>12.1f}{f'{min(r):.1f}..{max(r):.1f}':>18}{med / base:>9.2f}x")


if __name__ == "__main__":
    main()
