"""Scoring + selection time of every method, next to the unpruned prefill of the CPU proxy model.

For N = 576 (one 336 px image) and N = 2880 (five images, LLaVA-NeXT's token count) visual tokens, each
method runs once through `tpx.pruning` on the proxy LLaVA of `benchmarks/prefill.py`; what the engine knew at
its first stage (the `ingredients.Context`) is captured, and the benchmark then times what the engine does
there: computing the ingredients the plan lists for the stage, then the scorer and selector (`Stage.select`),
with `torch.utils.benchmark`. Target: ≤ 1 % of the unpruned prefill at N = 576 for every single-layer method.
On a shared CPU, `--clock process` times this process's CPU time. Hook-V methods at several images: LLaVA-1.5's
adapter records one image per batch row, so one image's vision records are repeated (the per-image selection
runs on each copy, as on LLaVA-NeXT's crops); the records' own cost (attention recomputed in the vision tower's
hooks) falls in the tower's forward and is not timed here.

Usage: python benchmarks/overhead.py [--hidden 1024] [--layers 16] [--retention 0.25] [--device cpu] [--clock wall]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from prefill import CLOCKS, proxy
from torch.utils import benchmark

import tpx
from tpx import ingredients
from tpx.data import sample_picture
from tpx.engine import plan_for
from tpx.models import layout

# pdrop's equivalent budget needs more than N / (first stage layer / depth) tokens: use its paper's setting
RETENTION = {"pdrop": 0.46875}


def captured_stage(model, inputs, name: str, retention: float):
    """Run one pruned forward; return its first stage (budget resolved), the engine's context there and grids."""
    seen = {}
    original = ingredients.compute

    def capture(names, ctx):
        seen.setdefault("ctx", ctx)
        return original(names, ctx)

    ingredients.compute = capture
    try:
        with torch.inference_mode(), tpx.pruning(model, name, retention=retention) as run:
            model(**inputs, logits_to_keep=1)
    finally:
        ingredients.compute = original
    geometry = layout(model, inputs)
    stage = run.plan.bind(layout=geometry).stages[0]
    return stage, seen["ctx"], geometry.grids


def tiled_stage(model, processor, inputs, name: str, retention: float, n_images: int):
    """A hook-V stage for `n_images` images in one row: LLaVA-1.5's adapter records one image per batch row, so
    the records of one image are repeated along the token axis, as LLaVA-NeXT's adapter stitches its crops."""
    one = processor(images=[sample_picture()], text="USER: <image>\nWhat is shown in the images? ASSISTANT:",
                    return_tensors="pt").to(inputs["input_ids"].device)
    _, ctx, _ = captured_stage(model, one, name, retention)
    dim = {"token": 1, "key": -1}
    vision = {k: torch.cat([v] * n_images, dim=dim[ingredients.INGREDIENTS[k].axis]) for k, v in ctx.vision.items()}
    geometry = layout(model, inputs)
    stage = plan_for(model, name, layout=geometry, retention=retention).stages[0]
    return stage, dataclasses.replace(ctx, vision=vision, grid=None), geometry.grids


def time_method(model, inputs, name: str, retention: float, clock: str, min_run_time: float, tile=None) -> float:
    stage, ctx, grids = captured_stage(model, inputs, name, retention) if tile is None else tiled_stage(*tile)

    def work():
        with torch.inference_mode():
            fresh = dataclasses.replace(ctx, _memo={})  # nothing computed yet, as at the stage
            stage.select(ingredients.compute(stage.ingredients, fresh), grids)

    timer = benchmark.Timer("work()", globals={"work": work}, timer=CLOCKS[clock])
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--retention", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, nargs="+", default=[1, 5], help="images per prompt (576 tokens each)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="process: CPU time (shared machines)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing block")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = proxy(args.hidden, args.layers, args.device)
    rows = []
    for n_images in args.images:
        text = "USER: " + "<image>" * n_images + "\nWhat is shown in the images? ASSISTANT:"
        inputs = processor(images=[sample_picture()] * n_images, text=text, return_tensors="pt").to(args.device)
        n_visual = layout(model, inputs).n_visual

        def prefill():
            with torch.inference_mode():
                model(**inputs, logits_to_keep=1)

        timer = benchmark.Timer("prefill()", globals={"prefill": prefill}, timer=CLOCKS[args.clock])
        full = timer.blocked_autorange(min_run_time=2 * args.min_run_time).median
        for name in args.methods or tpx.list_methods():
            retention = RETENTION.get(name, args.retention)
            method = tpx.get_method(name)
            tile = (model, processor, inputs, name, retention, n_images) if method.hook == "V" and n_images > 1 else None
            t = time_method(model, inputs, name, retention, args.clock, args.min_run_time, tile)
            rows.append((n_visual, name, method.hook, retention, t, full, "records of one image, repeated" if tile else ""))

    print(f"proxy LLaVA: Llama {args.layers} x {args.hidden}; device {args.device}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock; time of ingredients + scorer + selector at the first stage (median)")
    print(f"{'N':>5}  {'method':<13}{'hook':>5}{'retention':>10}{'score+select ms':>17}{'prefill ms':>12}{'share':>9}")
    for n, name, hook, retention, t, full, note in rows:
        if t is None:
            print(f"{n:>5}  {name:<13}{hook:>5}{retention:>10.3g}{'-':>17}{full * 1e3:>12.0f}{'':>9}  {note}")
            continue
        multi = "  (per stage; several stages)" if tpx.get_method(name).schedule else ""
        note = f"  ({note})" if note else ""
        print(f"{n:>5}  {name:<13}{hook:>5}{retention:>10.3g}{t * 1e3:>17.2f}{full * 1e3:>12.0f}{t / full:>9.2%}{multi}{note}")


if __name__ == "__main__":
    main()
