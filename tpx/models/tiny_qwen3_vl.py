"""A tiny random Qwen3-VL built offline, for plumbing and exactness tests (`tpx.load("tiny-qwen3-vl")`).

Random weights: nothing qualitative can be read from it. It keeps what makes Qwen3-VL hard to prune: 16-pixel
patches merged 2×2, interleaved M-RoPE, q/k norms, and DeepStack features from three vision blocks added after
the first three decoder layers.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["tiny_qwen3_vl"]


def tiny_qwen3_vl(
    *,
    max_pixels: int = 32 * 32 * 64,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 4,
    deepstack: int = 3,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `Qwen3VLForConditionalGeneration` and its processor, offline.

    16-pixel patches merged 2×2 before the LLM, so a 192×256 image gives `image_grid_thw = [1, 12, 16]` and a
    6×8 grid of 48 `<|image_pad|>` tokens (the grid the tiny Qwen2-VL gives a 168×224 image). Interleaved M-RoPE
    sections [4, 2, 2] fit the 16-dim heads. DeepStack taps vision blocks 0 … `deepstack` − 1 and adds them after
    decoder layers 0 … `deepstack` − 1 (the 2B checkpoint taps blocks 5, 11, 17 of 24 into layers 0, 1, 2).

    The processor is `OfflineQwen3VLProcessor`, without a video processor (video processors need torchvision,
    which does not load beside the CPU build of torch); image mean and std 0.5 as in the checkpoints.

    Args:
        max_pixels: the image processor's pixel budget (larger images are resized down).
        text_hidden, text_layers, heads, kv_heads: Qwen3 width, depth, query heads and key/value heads (head
            dim `text_hidden // heads`).
        vision_hidden, vision_layers: vision tower width and depth.
        deepstack: number of DeepStack levels, in [0, vision_layers − 1] (the last block feeds the merger).
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.

    Raises:
        ValueError: for `deepstack` outside its range.
    """
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from tpx.models.qwen3_vl import OfflineQwen3VLProcessor
    from tpx.models.tiny_vocab import tiny_tokenizer

    if isinstance(deepstack, bool) or not isinstance(deepstack, int) or not 0 <= deepstack < vision_layers:
        raise ValueError(f"deepstack must be an int in [0, {vision_layers - 1}] (vision_layers - 1), got {deepstack!r}")
    tok = tiny_tokenizer(family="qwen2_vl")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|vision_start|>",
                                                      "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    head_dim = text_hidden // heads
    text = dict(
        vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=text_hidden * 2, num_hidden_layers=text_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=2048,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                         "mrope_section": interleaved_section(head_dim)},
    )
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=4,
                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text_hidden,
                  num_position_embeddings=256, deepstack_visual_indexes=list(range(deepstack)))
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 64 * 64, "longest_edge": max_pixels}, patch_size=16, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = OfflineQwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=None)
    return model.eval(), processor


def interleaved_section(head_dim: int) -> list[int]:
    """Interleaved M-RoPE (t, h, w) counts of the head_dim/2 rotary frequencies, in Qwen3-VL's 24:20:20 proportion
    (h and w take every third frequency from the second and third on; t keeps the rest)."""
    half = head_dim // 2
    h = max(1, round(half * 20 / 64))
    return [half - 2 * h, h, h]
