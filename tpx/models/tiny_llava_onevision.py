"""A tiny random LLaVA-OneVision (SigLIP tower, AnyRes-Max, Qwen2), built offline from configs.

Random weights give near-uniform attention: the model exists to check that pruning is exact on OneVision's
geometry (base view, unpadded canvas shrunk by AnyRes-Max, newlines), not to be read qualitatively.
"""

from __future__ import annotations

from typing import Any

import torch

from tpx.models.tiny_internvl import never_generated, qwen2_text
from tpx.models.tiny_vocab import tiny_tokenizer

__all__ = ["tiny_llava_onevision"]


def tiny_llava_onevision(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    grid_pinpoints: tuple[tuple[int, int], ...] = ((32, 32), (32, 64), (64, 32), (64, 64), (32, 96), (96, 32)),
    max_crops: int = 2,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `LlavaOnevisionForConditionalGeneration` and its processor (image-only), built offline.

    Defaults: 32-pixel crops of 8-pixel patches (a 4×4 base grid), canvases of up to 2×2 and 1×3 crops, and
    AnyRes-Max with N = `max_crops` = 2 (the checkpoints use 9), so that a canvas above ~1.1² · 2 · 16 patches is
    shrunk. A 40×64 image picks the 2×2 canvas (8×8 patches), is unpadded to 6×8 and shrunk to 4×6: 16 + 24
    prunable tokens and 4 newlines. A 32×64 image picks the 1×2 canvas and keeps its 4×8 grid.

    Args:
        image_size, patch_size: crop size and patch size of the SigLIP tower.
        grid_pinpoints: AnyRes canvas sizes `(height, width)` in pixels, multiples of `image_size`.
        max_crops: AnyRes-Max's N (`vision_aspect_ratio="anyres_max_N"`).
        text_hidden, text_layers, heads, kv_heads: Qwen2 width, depth, query heads and key/value heads.
        vision_hidden, vision_layers: SigLIP width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        SiglipVisionConfig,
    )

    from tpx.models.processors import OfflineLlavaOnevisionProcessor

    tok = tiny_tokenizer(family="llava_onevision")
    pinpoints = [list(p) for p in grid_pinpoints]
    side = image_size // patch_size
    aspect = f"anyres_max_{max_crops}"
    vision = SiglipVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                                intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers,
                                num_attention_heads=4, vision_use_head=False)
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=qwen2_text(tok, text_hidden, text_layers, heads, kv_heads),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
    never_generated(model, [tok.image_token_id, tok.video_token_id])
    model.set_attn_implementation(attn_implementation)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = OfflineLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=None, num_image_tokens=side * side,
        vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
    )
    return model.eval(), processor
