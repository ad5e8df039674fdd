"""Published configuration values of LLaVA-1.5, LLaVA-NeXT, InternVL3 and LLaVA-OneVision checkpoints, for the
real-size geometry tests (tests/models/test_real_geometry_llava_internvl.py; Qwen-VL: `geometry_qwen`) and the
`geometry-*` models of `tpx.load` (`tpx.models.geometry`).

The hub cannot be reached where tests run, so the values of each checkpoint's `config.json`,
`preprocessor_config.json` and `processor_config.json` that decide geometry and widths are written here. A model
is built from them with the true vision and text widths (hidden, intermediate, heads, key/value heads, patch and
image sizes, pinpoints, tiling, AnyRes-Max) but 1–2 layers per tower and random weights, in float32, with the
real image processor settings. The tokenizer is the tiny one of the family (so the vocabulary and the
placeholder ids are the tiny tokenizer's, not the checkpoint's 32 k–152 k: the LM head over 150 k words would
dominate every forward without touching geometry); depth and vocabulary are the only departures.
"""

from __future__ import annotations

from typing import Any

import torch

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# CLIP ViT-L/14 at 336 px, the tower of LLaVA-1.5 and LLaVA-1.6
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
QWEN2_0_5B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                  num_key_value_heads=2, num_hidden_layers=24, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, hidden_act="silu")

# the language model's embedding rows as published (`text_config.vocab_size`; OneVision-0.5B: Qwen2-0.5B's),
# used only at the published size (tpx.memory, benchmarks/memory.py); the tests use the tiny tokenizer's
VOCAB = {"llava-1.5-7b": 32064, "llava-v1.6-mistral-7b": 32064, "internvl3-1b": 151674,
         "llava-onevision-qwen2-0.5b-ov": 151936}

PUBLISHED: dict[str, dict[str, Any]] = {
    # llava-hf/llava-1.5-7b-hf: Vicuna-7B v1.5 (Llama 2), CLIP-L/336, 576 tokens
    "llava-1.5-7b": dict(
        vision=CLIP_L_336,
        text=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32, num_hidden_layers=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
        top=dict(vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                 image_seq_length=576),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3),
        processor=dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    ),
    # llava-hf/llava-v1.6-mistral-7b-hf: Mistral-7B-Instruct v0.2, CLIP-L/336, AnyRes over 5 pinpoints
    "llava-v1.6-mistral-7b": dict(
        vision=CLIP_L_336,
        text=dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, num_hidden_layers=32, max_position_embeddings=32768, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, sliding_window=None),
        top=dict(vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                 image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                 image_seq_length=576),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                             image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                             do_pad=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3),
        processor=dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    ),
    # OpenGVLab/InternVL3-1B-hf: InternViT-300M-448px-V2.5, Qwen2.5-0.5B, 448-px tiles (1..12 + thumbnail)
    "internvl3-1b": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                    image_size=[448, 448], patch_size=[14, 14], attention_bias=True, use_qk_norm=False,
                    norm_type="layer_norm", layer_norm_eps=1e-6, layer_scale_init_value=0.1, use_mean_pooling=True,
                    use_absolute_position_embeddings=True, hidden_act="gelu"),
        text=dict(QWEN2_0_5B, tie_word_embeddings=False),  # its own LM head: 938 M parameters in all
        top=dict(downsample_ratio=0.5, image_seq_length=256, vision_feature_layer=-1, tie_word_embeddings=False,
                 vision_feature_select_strategy="default", projector_hidden_act="gelu"),
        image_processor=dict(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=12,
                             image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3),
        processor=dict(image_seq_length=256),
    ),
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf: SigLIP-SO400M/14 at 384 px (26 layers), Qwen2-0.5B, AnyRes-Max-9
    "llava-onevision-qwen2-0.5b-ov": dict(
        vision=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=26,
                    image_size=384, patch_size=14, vision_use_head=False, layer_norm_eps=1e-6,
                    hidden_act="gelu_pytorch_tanh"),
        text=dict(QWEN2_0_5B, tie_word_embeddings=True),  # Qwen2-0.5B's tied head: 894 M parameters in all
        top=dict(vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                 projector_hidden_act="gelu", multimodal_projector_bias=True,
                 image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]),
        image_processor=dict(size={"height": 384, "width": 384},
                             image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
                             do_pad=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3),
        processor=dict(num_image_tokens=729, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9"),
    ),
}


def build(name: str, *, text_layers: int = 1, vision_layers: int = 2, seed: int = 0,
          attn_implementation: str = "sdpa", vocab_size: int | None = None, meta: bool = False,
          text_overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """`(model, processor)` of checkpoint `name` with its published widths and geometry, `text_layers` decoder
    layers and `vision_layers` tower layers, random weights (float32, eval mode), its real image processor and
    the family's tiny tokenizer. `vocab_size` (the published one is `VOCAB[name]`) and `meta` (shapes only, no
    storage) serve `tpx.memory` (benchmarks/memory.py); `text_overrides` replaces language-model widths
    (`geometry.narrow_text`)."""
    import contextlib

    import transformers

    from tpx.models.processors import OfflineInternVLProcessor, OfflineLlavaOnevisionProcessor
    from tpx.models.tiny_internvl import never_generated
    from tpx.models.tiny_vocab import tiny_tokenizer

    spec = PUBLISHED[name]
    family = {"llava-1.5-7b": "llava", "llava-v1.6-mistral-7b": "llava", "internvl3-1b": "internvl",
              "llava-onevision-qwen2-0.5b-ov": "llava_onevision"}[name]
    tok = tiny_tokenizer(family=family)
    text = dict(spec["text"], num_hidden_layers=text_layers, vocab_size=vocab_size or len(tok), pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id) | (text_overrides or {})
    vision = dict(spec["vision"], num_hidden_layers=vision_layers)
    if family == "llava":
        vision["model_type"] = "clip_vision_model"
        cls = "LlavaNext" if "image_grid_pinpoints" in spec["top"] else "Llava"
        config = getattr(transformers, f"{cls}Config")(vision_config=vision, text_config=text,
                                                         image_token_id=tok.image_token_id, **spec["top"])
        image_processor = (transformers.LlavaNextImageProcessorPil if cls == "LlavaNext"
                           else transformers.CLIPImageProcessorPil)(**spec["image_processor"])
        processor = getattr(transformers, f"{cls}Processor")(image_processor=image_processor, tokenizer=tok,
                                                             image_token="<image>", **spec["processor"])
        ids = [tok.image_token_id]
    elif family == "internvl":
        config = transformers.InternVLConfig(vision_config=vision, text_config=text,
                                             image_token_id=tok.context_image_token_id, **spec["top"])
        processor = OfflineInternVLProcessor(
            image_processor=transformers.GotOcr2ImageProcessorPil(**spec["image_processor"]), tokenizer=tok,
            video_processor=None, **spec["processor"])
        ids = [tok.context_image_token_id, tok.video_token_id]
    else:
        vision["model_type"] = "siglip_vision_model"
        config = transformers.LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                                   image_token_index=tok.image_token_id,
                                                   video_token_index=tok.video_token_id, **spec["top"])
        processor = OfflineLlavaOnevisionProcessor(
            image_processor=transformers.LlavaOnevisionImageProcessorPil(**spec["image_processor"]), tokenizer=tok,
            video_processor=None, **spec["processor"])
        ids = [tok.image_token_id, tok.video_token_id]
    model_cls = getattr(transformers, type(config).__name__.replace("Config", "ForConditionalGeneration"))
    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
        torch.manual_seed(seed)
        model = model_cls(config)
        never_generated(model, ids)
    model.set_attn_implementation(attn_implementation)
    return model.eval(), processor
