"""Scoring + selection time of every method, next to the unpruned prefill of the CPU proxy model.

For N = 576 (one 336 px image) and N = 2880 (five images, LLaVA-NeXT's token count) visual tokens, each
method runs once through `tpx.pruning` on the proxy LLaVA of `benchmarks/prefill.py`; the ingredients it
asked for (attention rows, keys, vision-tower records, ...) are captured at its first stage, and the
benchmark then times computing them plus the scorer and selector, with `torch.utils.benchmark`. Target:
≤ 1 % of the unpruned prefill at N = 576 for every single-layer method.

Usage: python benchmarks/overhead.py [--hidden 1024] [--layers 16] [--retention 0.25] [--device cpu]
"""

from __future__ import annotations

import argparse
import inspect

import torch
from prefill import proxy
from torch.utils import benchmark

import tpx
from tpx import ingredients
from tpx.data import sample_picture

# pdrop's equivalent budget needs more than N / (first stage layer / depth) tokens: use its paper's setting
RETENTION = {"pdrop": 0.46875}


def captured_stage(model, inputs, name: str, retention: float):
    """Run one pruned forward and return (ingredient names, the first Stage, the given dict builder)."""
    seen = {}
    original = ingredients.collect

    def capture(names, stage):
        if "stage" not in seen:
            seen["names"], seen["stage"] = names, stage
        return original(names, stage)

    ingredients.collect = capture
    try:
        with torch.inference_mode(), tpx.pruning(model, name, retention=retention) as run:
            model(**inputs, logits_to_keep=1)
    finally:
        ingredients.collect = original
    return seen["names"], seen["stage"], run


def time_method(model, inputs, name: str, retention: float) -> float:
    names, stage, run = captured_stage(model, inputs, name, retention)
    method = run.method
    entry = run.trace[0]
    params = dict(run.params, n_keep=entry.n_keep, generator=torch.Generator(device=stage.hidden.device).manual_seed(0))

    def pick(fn, given):
        return {k: given[k] for k in inspect.signature(fn).parameters if k in given}

    def work():
        with torch.inference_mode():
            given = dict(params, **ingredients.collect(names, stage))
            if method.scorer is not None:
                given["scores"] = method.scorer(**pick(method.scorer, given))
            if method.per_segment or "grid" in inspect.signature(method.selector).parameters:
                run._select_per_segment(given, entry.n_visual, entry.n_keep)  # as the engine does, per image
            else:
                method.selector(**pick(method.selector, given))

    return benchmark.Timer("work()", globals={"work": work}).blocked_autorange(min_run_time=1.0).median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--retention", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, nargs="+", default=[1, 5], help="images per prompt (576 tokens each)")
    args = ap.parse_args()

    model, processor = proxy(args.hidden, args.layers, args.device)
    rows = []
    for n_images in args.images:
        text = "USER: " + "<image>" * n_images + "\nWhat is shown in the images? ASSISTANT:"
        inputs = processor(images=[sample_picture()] * n_images, text=text, return_tensors="pt").to(args.device)
        n_visual = int((inputs["input_ids"] == model.config.image_token_id).sum())

        def prefill():
            with torch.inference_mode():
                model(**inputs, logits_to_keep=1)

        full = benchmark.Timer("prefill()", globals={"prefill": prefill}).blocked_autorange(min_run_time=2.0).median
        for name in tpx.list_methods():
            retention = RETENTION.get(name, args.retention)
            method = tpx.get_method(name)
            if method.hook == "V" and n_images > 1:
                rows.append((n_visual, name, method.hook, retention, None, full, "one image per row needed at hook V"))
                continue
            t = time_method(model, inputs, name, retention)
            rows.append((n_visual, name, method.hook, retention, t, full, ""))

    print(f"proxy LLaVA: Llama {args.layers} x {args.hidden}; device {args.device}, {torch.get_num_threads()} threads; "
          "time of ingredients + scorer + selector at the first stage (median)")
    print(f"{'N':>5}  {'method':<13}{'hook':>5}{'retention':>10}{'score+select ms':>17}{'prefill ms':>12}{'share':>9}")
    for n, name, hook, retention, t, full, note in rows:
        if t is None:
            print(f"{n:>5}  {name:<13}{hook:>5}{retention:>10.3g}{'-':>17}{full * 1e3:>12.0f}{'':>9}  {note}")
            continue
        multi = "  (per stage; several stages)" if tpx.get_method(name).schedule else ""
        print(f"{n:>5}  {name:<13}{hook:>5}{retention:>10.3g}{t * 1e3:>17.2f}{full * 1e3:>12.0f}{t / full:>9.2%}{multi}")


if __name__ == "__main__":
    main()
