"""The grid runner's shared batches: one group of configurations vs each configuration on its own.

`tpx.evaluate` answers a group of configurations batch by batch (`evaluate.GROUP`), preparing each batch and
encoding its images once (`tpx.models.base.reuse_image_features`) for every configuration that prunes after
the projector, and replaying the decoder layers before each configuration's first cut when their inputs equal an
earlier configuration's (`tpx.models.prefix.reuse_prefix`). This benchmark answers the same grid three ways, side
by side in one run, and checks that the answers and kept sets are identical. On a shared CPU, `--clock process` times this process's CPU time.

Usage: python benchmarks/grid.py [--model organism] [--n 20] [--batch-size 100] [--threads 1] [--clock wall]
"""

from __future__ import annotations

import argparse
import time

import torch

import tpx
from tpx import evaluate as ev
from tpx.data import load_samples
from tpx.grid import grid

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=20, help="samples per organism task")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    model, processor = tpx.load(args.model)
    samples = load_samples("organism", n=args.n, split="test")
    configs = grid(["fastv", "random", "pooling"], [0.25, 1 / 9], hooks=["L"], layers=[1, 2], seeds=[0],
                   label_depth=True)
    run = dict(configs=configs, batch_size=args.batch_size, max_new_tokens=3, progress=False)
    times, frames = {}, {}
    runners = (("each configuration alone (GROUP = 1)", 1, False),
               (f"grouped (GROUP = {ev.GROUP}), shared batches and image features", ev.GROUP, False),
               (f"grouped (GROUP = {ev.GROUP}), + shared first layers (tpx.models.prefix)", ev.GROUP, True))
    for name, group, prefix in runners:
        saved = ev.GROUP, ev.REUSE_PREFIX
        ev.GROUP, ev.REUSE_PREFIX = group, prefix
        try:
            t0 = clock()
            frames[name] = ev.evaluate(model, processor, samples, **run)
            times[name] = clock() - t0
        finally:
            ev.GROUP, ev.REUSE_PREFIX = saved
    cols = ["label", "id", "answer", "n_keep", "kept_row", "kept_col", "coverage"]
    first = next(iter(frames.values()))
    same = all(f[cols].equals(first[cols]) for f in frames.values())
    base = next(iter(times.values()))
    print(f"{args.model}: {len(samples)} samples x {len(configs)} configurations, batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.clock} clock")
    print(f"| runner | seconds | ratio |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.1f} | {t / base:.2f} |")
    print(f"answers identical: {same}")
    if not same:
        raise SystemExit("the grouped runner changed answers")


if __name__ == "__main__":
    main()
