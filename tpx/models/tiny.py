"""Tiny random MLLMs built from configs, fully offline, for plumbing and exactness tests.

Random weights give near-uniform attention, so nothing qualitative can be read from these models; they
exist to check that pruning is exact. The trained model organism in `data/organism/` is the default for
anything meaningful.
"""

from __future__ import annotations

from typing import Any

import torch

from tpx.models.tiny_internvl import tiny_internvl
from tpx.models.tiny_llava_onevision import tiny_llava_onevision
from tpx.models.tiny_qwen3_vl import tiny_qwen3_vl
from tpx.models.tiny_vocab import QWEN_SPECIALS, tiny_tokenizer

__all__ = ["tiny", "tiny_gemma3", "tiny_internvl", "tiny_llava_next", "tiny_llava_onevision", "tiny_qwen2_vl",
           "tiny_qwen3_vl", "tiny_tokenizer"]


def tiny(
    *,
    image_size: int = 96,
    patch_size: int = 8,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `LlavaForConditionalGeneration` and its `LlavaProcessor`, built offline.

    Defaults give a 12×12 grid (144 image tokens), 4 Llama layers with grouped-query attention (so the
    attention recompute's KV repeat is exercised) and a CLIP tower whose [CLS] token is dropped, as in
    LLaVA-1.5.

    Args:
        image_size, patch_size: CLIP input size and patch size; the grid is `image_size // patch_size` square.
        text_hidden, text_layers, heads, kv_heads: Llama width, depth, query heads and key/value heads.
        vision_hidden, vision_layers: CLIP width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (a local generator; global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode.
    """
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = tiny_tokenizer()
    vision, text = _clip_llama(tok, image_size, patch_size, vision_hidden, vision_layers, text_hidden,
                               text_layers, heads, kv_heads)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=(image_size // patch_size) ** 2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>",
    )
    return model.eval(), processor


def tiny_llava_next(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    grid_pinpoints: tuple[tuple[int, int], ...] = ((32, 64), (64, 32), (64, 64)),
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `LlavaNextForConditionalGeneration` (LLaVA-1.6, AnyRes) and its processor, offline.

    Defaults: 32-pixel crops of 8-pixel patches (a 4×4 base grid) and AnyRes canvases of 1×2, 2×1 and 2×2
    crops. A 40×64 image picks the 2×2 canvas (8×8 patches), unpadded to a 6×8 grid plus 6 `image_newline`
    tokens: 16 + 48 prunable tokens and 70 image tokens in all.

    Args:
        image_size, patch_size: crop size and patch size of the CLIP tower.
        grid_pinpoints: AnyRes canvas sizes `(height, width)` in pixels, multiples of `image_size`.
        text_hidden, text_layers, heads, kv_heads: Llama width, depth, query heads and key/value heads.
        vision_hidden, vision_layers: CLIP width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.
    """
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = tiny_tokenizer()
    pinpoints = [list(p) for p in grid_pinpoints]
    vision, text = _clip_llama(tok, image_size, patch_size, vision_hidden, vision_layers, text_hidden,
                               text_layers, heads, kv_heads)
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
    )
    return model.eval(), processor


def tiny_qwen2_vl(
    *,
    version: str = "2",
    max_pixels: int = 28 * 28 * 64,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random Qwen2-VL (`version="2"`) or Qwen2.5-VL (`"2.5"`) and its processor, offline.

    14-pixel patches merged 2×2 before the LLM, so a 168×224 image gives `image_grid_thw = [1, 12, 16]` and a
    6×8 grid of 48 `<|image_pad|>` tokens. M-RoPE sections [2, 3, 3] fit the 16-dim heads. The Qwen2.5-VL
    tower uses window attention in block 0 and full attention in block 1.

    The processor is `OfflineQwen2VLProcessor`, without a video processor: video processors need torchvision,
    which does not load beside the CPU build of torch.

    Args:
        version: "2" (`Qwen2VLForConditionalGeneration`) or "2.5" (`Qwen2_5_VLForConditionalGeneration`).
        max_pixels: the image processor's pixel budget (larger images are resized down).
        text_hidden, text_layers, heads, kv_heads: Qwen2 width, depth, query heads and key/value heads.
        vision_hidden, vision_layers: vision tower width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.

    Raises:
        ValueError: for an unknown `version`.
    """
    from transformers import Qwen2VLImageProcessorPil

    from tpx.models.qwen2_vl import OfflineQwen2VLProcessor

    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    tok = tiny_tokenizer(family="qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": _mrope_section(text_hidden // heads)},
    )
    vision: dict[str, Any] = dict(depth=vision_layers, num_heads=4, patch_size=14, spatial_merge_size=2,
                                  temporal_patch_size=2, in_channels=3)
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if version == "2":
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision.update(embed_dim=vision_hidden, hidden_size=text_hidden)
    else:
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision.update(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, out_hidden_size=text_hidden,
                      fullatt_block_indexes=[vision_layers - 1], window_size=56)
    config = Config(text_config=text, vision_config=vision, **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(config)
    model.set_attn_implementation(attn_implementation)

    processor = OfflineQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels),
        tokenizer=tok, video_processor=None,
    )
    return model.eval(), processor


def _mrope_section(head_dim: int) -> list[int]:
    """M-RoPE (t, h, w) split of the head_dim/2 rotary frequencies, in Qwen2-VL's 16:24:24 proportion."""
    half = head_dim // 2
    t = max(1, round(half * 16 / 64))
    h = (half - t) // 2
    return [t, h, half - t - h]


def _clip_llama(tok: Any, image_size: int, patch_size: int, vision_hidden: int, vision_layers: int,
                text_hidden: int, text_layers: int, heads: int, kv_heads: int) -> tuple[Any, Any]:
    """The CLIP vision and Llama text configs the tiny LLaVA-family models share."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers, num_attention_heads=4,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return vision, text


from tpx.models.tiny_gemma3 import tiny_gemma3  # noqa: E402  (Gemma 3 lives in its own module)
