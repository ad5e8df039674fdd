"""GPU memory of the published checkpoints of every family, from their configurations (`tpx.memory`).

Each checkpoint is built on the `meta` device (shapes, no storage) at its published depth and vocabulary from the
configuration values the real-size geometry tests hold (tpx.models.geometry_llava, tpx.models.geometry_qwen,
`tpx.models.tiny_gemma3.GEMMA3_4B`); the prompt is matplotlib's Grace Hopper photo (512×600) through the published
image-processor settings and one short question, so the visual-token count is the processor's own. Printed: the
parameters per part, the bf16 weights, and the prompt's key/value cache unpruned and with FastV's shape (r = 1/4
of the visual tokens from K = 2 on). Activations, the CUDA context and allocator slack come on top.

Usage: python benchmarks/memory.py
"""

from __future__ import annotations

import torch

from tpx.models.geometry_llava import PUBLISHED as LLAVA_INTERNVL
from tpx.models.geometry_llava import VOCAB as VOCAB_LLAVA_INTERNVL
from tpx.models.geometry_llava import build as build_llava_internvl
from tpx.models.geometry_qwen import PUBLISHED as QWEN
from tpx.models.geometry_qwen import VOCAB as VOCAB_QWEN
from tpx.models.geometry_qwen import build as build_qwen

from tpx.ask import prompt
from tpx.data import sample_picture
from tpx.memory import footprint
from tpx.models import adapter_for, layout
from tpx.models.tiny_gemma3 import GEMMA3_4B, GEMMA3_4B_VOCAB, gemma3_4b_geometry

QUESTION = "What is shown in the image?"


def checkpoints() -> dict:
    """name → (model on meta, processor), every family at its published depth and vocabulary."""
    out = {}
    for name, spec in LLAVA_INTERNVL.items():
        out[name] = build_llava_internvl(name, text_layers=spec["text"]["num_hidden_layers"],
                                         vision_layers=spec["vision"]["num_hidden_layers"],
                                         vocab_size=VOCAB_LLAVA_INTERNVL[name], meta=True)
    for name, spec in QWEN.items():
        out[name.split("/")[-1]] = build_qwen(name, text_layers=spec["text_config"]["num_hidden_layers"],
                                              vision_layers=spec["vision_config"]["depth"],
                                              vocab_size=VOCAB_QWEN[name], meta=True)
    out["gemma-3-4b-it"] = gemma3_4b_geometry(text_layers=GEMMA3_4B["text"]["num_hidden_layers"],
                                              vision_layers=GEMMA3_4B["vision"]["num_hidden_layers"],
                                              vocab_size=GEMMA3_4B_VOCAB, meta=True)
    return out


def main() -> None:
    image = sample_picture()
    print("| checkpoint | params (B): vision / projector / LLM / total | bf16 weights (GiB) | visual tokens "
          "(photo 512×600) | prompt | KV cache (MiB) | KV, FastV r = 1/4 K = 2 (MiB) | KV per 1k tokens (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (model, processor) in checkpoints().items():
        boi = getattr(processor, "boi_token", None)  # Gemma 3 writes <start_of_image> for an image
        text = prompt(processor, QUESTION) if boi is None else f"{boi} {QUESTION}"
        inputs = dict(processor(images=[image], text=[text], return_tensors="pt"))
        ids = inputs["input_ids"]
        n_visual = int(layout(model, inputs).n_visual)
        n_image = int((ids == adapter_for(model).image_token_id).sum())
        f = footprint(model, n_visual, ids.shape[1] - n_visual, dtype=torch.bfloat16, retention=0.25, layer=2)
        b = 1e9
        print(f"| {name} | {f['vision'] / b:.2f} / {f['projector'] / b:.3f} / {f['language'] / b:.2f} / "
              f"{f['total'] / b:.2f} | {f['weights_gib']:.2f} | {n_visual}"
              f"{'' if n_image == n_visual else f' (+{n_image - n_visual} never pruned)'} | {ids.shape[1]} | "
              f"{f['kv_gib'] * 1024:.0f} | {f['kv_pruned_gib'] * 1024:.0f} | {f['kv_mib_per_1k']:.0f} |")


if __name__ == "__main__":
    main()
