"""Evaluation throughput: samples per second of `python -m tpx evaluate` for threads × processes, side by side.

Each configuration runs the command line as a user would (`--threads T`; P > 1 processes through
`accelerate launch --multi_gpu --num_processes P`, which on a CPU-only machine starts a gloo group and splits
the samples). The rate counts the evaluation only (the time the command reports for `evaluate`, after loading);
start-up (imports, model load) is shown apart. Configurations alternate for `--rounds` rounds, so a noisy,
shared machine slows them alike; the table shows the median and the range. `tpx.threads` picks its default
from this table.

Usage: python benchmarks/throughput.py [--model organism] [--n 20] [--threads 1,2] [--processes 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTED = re.compile(r"rows from (\d+) samples in ([\d.]+) s on (\d+) process\(es\), (\d+) thread")


def run(model: str, n: int, threads: int, processes: int, methods: str) -> tuple[float, float]:
    """One CLI run; returns (samples per second of the evaluation, seconds of everything else)."""
    args = ["--model", model, "--n", str(n), "--method", methods, "--threads", str(threads), "--no-progress"]
    if processes == 1:
        cmd = [sys.executable, "-m", "tpx", "evaluate", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tpx", "evaluate",
               *args]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = REPORTED.search(done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    samples, seconds = int(found.group(1)), float(found.group(2))
    if int(found.group(4)) != threads or int(found.group(3)) != processes:
        raise RuntimeError(f"asked for {processes} x {threads} threads, the command reports {found.group(0)!r}")
    return samples / seconds, wall - seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=20, help="organism samples per task (8 tasks)")
    ap.add_argument("--methods", default="fastv", help="besides the unpruned baseline, which always runs")
    ap.add_argument("--threads", default="1,2", help="torch threads per process, comma-separated")
    ap.add_argument("--processes", default="1,2", help="evaluation processes, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    grid = [(p, t) for p in map(int, args.processes.split(",")) for t in map(int, args.threads.split(","))]
    rates: dict[tuple[int, int], list[float]] = {c: [] for c in grid}
    overhead: dict[tuple[int, int], list[float]] = {c: [] for c in grid}
    for _ in range(args.rounds):
        for p, t in grid:
            rate, rest = run(args.model, args.n, t, p, args.methods)
            rates[(p, t)].append(rate)
            overhead[(p, t)].append(rest)
    print(f"`python -m tpx evaluate --model {args.model} --n {args.n} --method {args.methods}` "
          f"({8 * args.n} samples x {1 + len(args.methods.split(','))} configurations) on {os.cpu_count()} "
          f"cores (load average {os.getloadavg()[0]:.1f}); median of {args.rounds} interleaved rounds")
    print("samples/s: samples answered per second of evaluation (each one unpruned and under every method)")
    print("| processes | threads each | samples/s | range | vs 1 x 1 | start-up s |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(rates[grid[0]])
    for c in grid:
        med = statistics.median(rates[c])
        print(f"| {c[0]} | {c[1]} | {med:.1f} | {min(rates[c]):.1f}–{max(rates[c]):.1f} | {med / base:.2f}x "
              f"| {statistics.median(overhead[c]):.1f} |")


if __name__ == "__main__":
    main()
