"""GPU memory a checkpoint needs, from its configuration alone: weights per part and the prompt's key/value cache,
unpruned and with the visual tokens pruned from decoder layer K on.

Why: a user choosing a checkpoint for a GPU needs the weights' size (the bulk) and how much the cache of a
prompt with thousands of visual tokens adds, and pruning's share of that. A model built on the `meta` device
(`torch.device("meta")`: shapes, no storage) gives exact parameter counts for any configuration without the hub
or the memory; activations, the CUDA context and allocator slack come on top and are not counted here.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["footprint", "parameter_counts"]

GiB = 2 ** 30


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the vision tower (Qwen-VL: with its merger), the projector and the language model (embeddings
    and LM head included; a tied head counted once), and their total. Works on a `meta`-device model."""
    from tpx.models import adapter_for

    base = model.base_model  # the `model.model` of every transformers MLLM
    tower = getattr(base, "vision_tower", None) or getattr(base, "visual", None)  # Qwen-VL: merger included
    text = adapter_for(model).text_model
    seen: set[int] = set()

    def count(module: torch.nn.Module | None) -> int:
        if module is None:
            return 0
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    vision = count(tower)
    language = count(text) + count(model.get_output_embeddings())
    total = vision + language + sum(p.numel() for p in model.parameters() if id(p) not in seen)
    return {"vision": vision, "projector": total - vision - language, "language": language, "total": total}


def footprint(model: torch.nn.Module, visual_tokens: int, text_tokens: int = 64, *,
              dtype: torch.dtype = torch.bfloat16, retention: float = 0.25, layer: int = 2) -> dict[str, Any]:
    """Weights and the key/value cache of one prompt of `visual_tokens` + `text_tokens`, in `dtype`.

    Args:
        model: the checkpoint's model (a `meta`-device build is enough: only shapes are read).
        visual_tokens, text_tokens: the prompt, e.g. the image tokens a processor gives for a photo.
        dtype: the weights' and cache's type (bf16 on a GPU).
        retention, layer: the pruned cache keeps `retention` of the visual tokens from decoder layer `layer` on
            (FastV's shape; layers before it cache the full prompt).

    Returns:
        parameter counts (`parameter_counts`), weights_gib, kv_gib (unpruned), kv_pruned_gib, and the cache per
        1,000 tokens (kv_mib_per_1k). Sliding-window layers (Gemma 3) are counted at full length: exact for
        prompts within the window.

    Raises:
        ValueError: on a retention outside (0, 1], a layer beyond the decoder, or negative token counts.
    """
    from tpx.latency import kv_bytes
    from tpx.models import adapter_for

    n_layers = adapter_for(model).decoder.n_layers
    if not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, {n_layers - 1}] for this {n_layers}-layer decoder, got {layer}")
    if visual_tokens < 0 or text_tokens < 0:
        raise ValueError(f"token counts must be ≥ 0, got visual_tokens={visual_tokens}, text_tokens={text_tokens}")
    counts = parameter_counts(model)
    size = torch.empty((), dtype=dtype).element_size()
    full = visual_tokens + text_tokens
    kept = round(visual_tokens * retention) + text_tokens
    lengths = [full] * n_layers
    pruned = [full] * layer + [kept] * (n_layers - layer)
    return {**counts, "weights_gib": counts["total"] * size / GiB,
            "kv_gib": kv_bytes(model, lengths, dtype=dtype) / GiB,
            "kv_pruned_gib": kv_bytes(model, pruned, dtype=dtype) / GiB,
            "kv_mib_per_1k": kv_bytes(model, [1000] * n_layers, dtype=dtype) / 2 ** 20}
