"""Real-size geometry: models built from published checkpoint configurations, cut to a few layers, with random
weights, and the published image-processor settings (issue 15, item 2): the Qwen-VL checkpoints, for the
real-size geometry tests and the `geometry-qwen*` models of `tpx.load` (`tpx.models.geometry`).

The hub cannot be reached where the tests run, so the values are written here as the checkpoints publish them
(`config.json` and `preprocessor_config.json`). Kept: every width, head count, head dim, rotary setting, patch
and merge size, pixel budget and normalisation, so the vision tower sees the real patch count and the LLM the real
number of image tokens at the real widths. Changed, and why:
- depth: `vision_layers` / `text_layers` blocks instead of 32/24 and 28, to fit a CPU test;
- Qwen3-VL's DeepStack taps (blocks 5, 11, 17 of 24, into decoder layers 0, 1, 2) become blocks 0 … n − 1 of
  the shortened tower (n = `vision_layers`), into decoder layers 0 … n − 1;
- vocabulary: the tiny in-memory tokenizer's (a real 151,936-row embedding and LM head cost 8 s per forward
  here), with the placeholder ids (`<|image_pad|>`, `<|vision_start|>`, ...) in the config set to that
  tokenizer's ids, so the processor's placeholders are the ones the model looks for.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# the language model's embedding rows as published (`text_config.vocab_size`), used only at the published size
VOCAB = {"Qwen/Qwen2-VL-2B-Instruct": 151936, "Qwen/Qwen3-VL-2B-Instruct": 151936}

PUBLISHED: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2-VL-2B-Instruct": {
        "model_type": "qwen2_vl",
        "text_config": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                            num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768,
                            sliding_window=32768, use_sliding_window=False, max_window_layers=28,
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                             "mrope_section": [16, 24, 24]}),
        "vision_config": dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, in_channels=3,
                              hidden_act="quick_gelu", patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        "tie_word_embeddings": True,
        "processor": dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                          image_mean=CLIP_MEAN, image_std=CLIP_STD),
    },
    "Qwen/Qwen3-VL-2B-Instruct": {
        "model_type": "qwen3_vl",
        "text_config": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6,
                            max_position_embeddings=262144, attention_bias=False,
                            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                             "mrope_interleaved": True, "mrope_section": [24, 20, 20]}),
        "vision_config": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
                              hidden_act="gelu_pytorch_tanh", patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                              out_hidden_size=2048, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        "tie_word_embeddings": True,
        "processor": dict(min_pixels=65536, max_pixels=16777216, patch_size=16, temporal_patch_size=2, merge_size=2,
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    },
}


def build(checkpoint: str, *, text_layers: int = 2, vision_layers: int = 2, attn_implementation: str = "sdpa",
          seed: int = 0, vocab_size: int | None = None, meta: bool = False,
          text_overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """`(model, processor)` of `checkpoint`'s published configuration with `text_layers` / `vision_layers` blocks,
    random weights (seeded; global RNG restored) and the published image processor, offline. `vocab_size` (the
    published one is `VOCAB[checkpoint]`) and `meta` (shapes only) serve `tpx.memory` (benchmarks/memory.py);
    at the published depth the DeepStack taps stay where they are published. `text_overrides` replaces
    language-model widths (`geometry.narrow_text`); the merger's output follows the language model's width."""
    import contextlib

    from transformers import Qwen2VLImageProcessorPil

    from tpx.models.qwen2_vl import OfflineQwen2VLProcessor
    from tpx.models.qwen3_vl import OfflineQwen3VLProcessor
    from tpx.models.tiny_vocab import tiny_tokenizer

    spec = copy.deepcopy(PUBLISHED[checkpoint])
    tok = tiny_tokenizer(family="qwen2_vl")
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(spec["text_config"], num_hidden_layers=text_layers, vocab_size=vocab_size or len(tok),
                bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
                tie_word_embeddings=spec["tie_word_embeddings"]) | (text_overrides or {})
    vision = dict(spec["vision_config"], depth=vision_layers)
    vision["out_hidden_size" if spec["model_type"] == "qwen3_vl" else "hidden_size"] = text["hidden_size"]
    if spec["model_type"] == "qwen3_vl":
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLForConditionalGeneration as Model

        if vision_layers != spec["vision_config"]["depth"]:
            vision["deepstack_visual_indexes"] = list(range(vision_layers))
        processor_class = OfflineQwen3VLProcessor
    else:
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        processor_class = OfflineQwen2VLProcessor
    config = Config(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie_word_embeddings"], **ids)
    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
        torch.manual_seed(seed)
        model = Model(config)
    model.set_attn_implementation(attn_implementation)
    image_processor = Qwen2VLImageProcessorPil(**spec["processor"])
    return model.eval(), processor_class(image_processor=image_processor, tokenizer=tok, video_processor=None)
