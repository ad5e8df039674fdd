"""What one prompt costs on the `geometry-*` models (narrow 4-layer LM) and, for LLaVA-1.5, at the published widths.

Why the geometry models narrow their language model (`tpx.models.geometry`): at LLaVA-1.5's 4096 width a fast
notebook would take hours on a CPU. Each row is one organism test image and question through the model's own
processor, one forward (prefill), this process's CPU seconds, one thread, measured in one run.

Usage: python benchmarks/geometry.py [--published]   (--published adds LLaVA-1.5 at its published LM widths)
"""

from __future__ import annotations

import argparse
import time

import torch

from tpx.ask import prompt
from tpx.models import geometry, geometry_llava
from tpx.organism import suite


def cost(model, processor, sample) -> tuple[int, float]:
    """Sequence length and CPU seconds of one prefill."""
    inputs = processor(images=[sample.image], text=[prompt(processor, sample.question)], return_tensors="pt")
    with torch.no_grad():
        model(**inputs)  # warm-up
        start = time.process_time()
        model(**inputs)
        return inputs["input_ids"].shape[1], time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", action="store_true", help="add LLaVA-1.5 at its published LM widths")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sample = suite.make_sample("count", "test", 0)
    rows = []
    for name in geometry.CHECKPOINTS:
        model, processor = geometry.build(name)
        rows.append((name, "narrow", *cost(model, processor, sample)))
    if args.published:
        model, processor = geometry_llava.build("llava-1.5-7b", text_layers=geometry.TEXT_LAYERS,
                                                vision_layers=geometry.VISION_LAYERS)
        rows.append(("llava-1.5-7b", "published", *cost(model, processor, sample)))
    print("| model | LM width | sequence | CPU-s per prefill |\n|---|---|---|---|")
    for name, width, length, seconds in rows:
        print(f"| {name} | {width} | {length} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
