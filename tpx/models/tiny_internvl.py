"""A tiny random InternVL3 (InternViT tower, pixel shuffle, Qwen2), built offline from configs.

Random weights give near-uniform attention: the model exists to check that pruning is exact on InternVL's
geometry (dynamic tiles, a thumbnail, 2×2 pixel shuffle), not to be read qualitatively.
"""

from __future__ import annotations

from typing import Any

import torch

from tpx.models.tiny_vocab import tiny_tokenizer

__all__ = ["never_generated", "qwen2_text", "tiny_internvl"]

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # InternVL's preprocessing


def tiny_internvl(
    *,
    image_size: int = 32,
    patch_size: int = 4,
    max_tiles: int = 4,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `InternVLForConditionalGeneration` and its processor (image-only), built offline.

    Defaults: 32-pixel tiles of 4-pixel patches (8×8 patches, pixel-shuffled into a 4×4 grid of 16 tokens per
    tile) and dynamic tiling up to 4 tiles plus a thumbnail, as InternVL3 does with 448-pixel tiles (12 at most).
    A 40×64 image (height × width) is cut into 2 tiles side by side plus the thumbnail: 3 segments of 4×4, 48
    `<IMG_CONTEXT>` tokens. The tower's [CLS] token and position embeddings, which Hugging Face initialises to
    zero, are drawn at random so that [CLS] attention depends on where a patch is.

    Args:
        image_size, patch_size: tile size and patch size of the vision tower (`image_size // patch_size` even).
        max_tiles: the image processor's `max_patches` (tiles before the thumbnail).
        text_hidden, text_layers, heads, kv_heads: Qwen2 width, depth, query heads and key/value heads.
        vision_hidden, vision_layers: InternViT width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.

    Raises:
        ValueError: for a tile that is not an even number of patches wide (pixel shuffle needs 2×2 blocks).
    """
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    from tpx.models.processors import OfflineInternVLProcessor

    if image_size % patch_size or (image_size // patch_size) % 2:
        raise ValueError(f"image_size // patch_size must be an even whole number, got {image_size} / {patch_size}")
    tok = tiny_tokenizer(family="internvl")
    side = image_size // patch_size // 2
    vision = dict(hidden_size=vision_hidden, num_hidden_layers=vision_layers, num_attention_heads=4,
                  intermediate_size=vision_hidden * 2, image_size=[image_size, image_size],
                  patch_size=[patch_size, patch_size], attention_bias=True, use_mean_pooling=True)
    config = InternVLConfig(vision_config=vision, text_config=qwen2_text(tok, text_hidden, text_layers, heads, kv_heads),
                            image_token_id=tok.context_image_token_id, image_seq_length=side * side,
                            downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config)
        embeddings = model.model.vision_tower.embeddings
        with torch.no_grad():
            embeddings.cls_token.normal_(std=0.5)
            embeddings.position_embeddings.normal_(std=0.5)
        never_generated(model, [tok.context_image_token_id, tok.video_token_id])
    model.set_attn_implementation(attn_implementation)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=True, min_patches=1,
        max_patches=max_tiles, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    processor = OfflineInternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=None,
                                         image_seq_length=side * side)
    return model.eval(), processor


def qwen2_text(tok: Any, text_hidden: int, text_layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    """The Qwen2 text config of the tiny Qwen2-based families (InternVL3, LLaVA-OneVision)."""
    return dict(
        model_type="qwen2", vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def never_generated(model: torch.nn.Module, token_ids: list[int]) -> None:
    """Zero the output rows of the image placeholder tokens: a random model would otherwise now and then generate
    one (a trained model never does), and a generated placeholder reads as one more image token downstream."""
    with torch.no_grad():
        model.get_output_embeddings().weight[token_ids] = 0
