"""A tiny random Gemma 3 (`Gemma3ForConditionalGeneration`) and its processor, built offline from configs.

Everything that makes Gemma 3 differ from LLaVA is switched on and small enough to be exercised by short
prompts: sliding-window layers beside global ones (a window of 16 tokens, shorter than one prompt), two rotary
bases, q/k norms, `query_pre_attn_scalar` unlike the head width, the SigLIP tower average-pooled 2×2 to a 6×6
grid, and the bidirectional mask over each image's tokens (`token_type_ids`). RMSNorm weights and the projector
are drawn at random, not left at their zero init, so that the `1 + w` norms and the image features are not
trivial. `gemma3_config` writes the published google/gemma-3-4b-it geometry for real-size tests.
"""

from __future__ import annotations

from typing import Any

import torch


__all__ = ["GEMMA3_4B", "GEMMA3_4B_VOCAB", "gemma3_4b_geometry", "gemma3_config", "gemma3_processor", "gemma3_tokenizer",
           "tiny_gemma3"]

_BOI, _EOI, _SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", _BOI, _EOI, _SOFT]
_CORPUS = [
    "<start_of_turn>user What is shown in the image?<end_of_turn> <start_of_turn>model A person in front of a flag.",
    "Describe the picture in detail. The photo shows a cat sitting on a wooden table.",
    "How many objects are there? There are three coins and a cup of coffee.",
    "Is there a red triangle in the image? Yes. Is the star left of the blue circle? No.",
    "What colour is the square? The square is green. What digit is written? Seven.",
]

# google/gemma-3-4b-it as published (config.json, preprocessor_config.json): the widths real-size tests build
GEMMA3_4B: dict[str, Any] = {
    "text": dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=256, query_pre_attn_scalar=256, sliding_window=1024, sliding_window_pattern=6,
                 rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                 rope_scaling={"rope_type": "linear", "factor": 8.0}, rms_norm_eps=1e-6,
                 hidden_activation="gelu_pytorch_tanh", num_hidden_layers=34),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=896, patch_size=14,
                   vision_use_head=False, num_hidden_layers=27, layer_norm_eps=1e-6),
    "mm_tokens_per_image": 256,
    "image": dict(size=896, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), resample="bilinear"),
}
GEMMA3_4B_VOCAB = 262_208  # its embedding rows as published, for `tpx.memory` at the published size


def gemma3_tokenizer() -> Any:
    """The tiny byte-level BPE tokenizer with Gemma 3's image specials: `<start_of_image>` (what a prompt writes
    for an image), `<image_soft_token>` (the 256 placeholders it expands to) and `<end_of_image>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        extra_special_tokens={"image_token": _SOFT, "boi_token": _BOI, "eoi_token": _EOI}, padding_side="left",
    )


def gemma3_processor(tok: Any, image_size: int, tokens_per_image: int) -> Any:
    """A `Gemma3Processor` (PIL image processor: resize to a square, rescale, normalise with mean = std = 0.5)."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=list(GEMMA3_4B["image"]["image_mean"]),
        image_std=list(GEMMA3_4B["image"]["image_std"]), do_pan_and_scan=False,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=tokens_per_image)


def gemma3_config(tok: Any, text: dict[str, Any], vision: dict[str, Any], tokens_per_image: int) -> Any:
    """A `Gemma3Config` with the tokenizer's special ids and vocabulary (`text` may set another `vocab_size`)."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in (_BOI, _EOI, _SOFT)}
    text_config = Gemma3TextConfig(**{"vocab_size": len(tok), "max_position_embeddings": 2048,
                                      "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                                      "eos_token_id": tok.eos_token_id, **text})
    return Gemma3Config(text_config=text_config, vision_config=SiglipVisionConfig(**vision),
                        mm_tokens_per_image=tokens_per_image, boi_token_index=ids[_BOI], eoi_token_index=ids[_EOI],
                        image_token_index=ids[_SOFT])


def build(config: Any, attn_implementation: str, seed: int, meta: bool = False) -> Any:
    """`Gemma3ForConditionalGeneration(config)` with seeded random weights, its zero-initialised RMSNorm weights
    and projector drawn at random too (global RNG state is restored); `meta`: shapes only (`tpx.memory`)."""
    import contextlib

    from transformers import Gemma3ForConditionalGeneration

    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight") and "vision_tower" not in name:
                    param.normal_(0.0, 0.3)
            proj = model.model.multi_modal_projector.mm_input_projection_weight
            proj.normal_(0.0, proj.shape[0] ** -0.5)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def tiny_gemma3(
    *,
    image_size: int = 96,
    patch_size: int = 8,
    tokens_per_image: int = 36,
    text_hidden: int = 64,
    text_layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    sliding_window: int = 16,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny random `Gemma3ForConditionalGeneration` and its `Gemma3Processor`, offline.

    Defaults: 96-pixel images of 8-pixel patches (a 12×12 SigLIP grid) pooled 2×2 to 36 image tokens (6×6);
    layers sliding, sliding, global, sliding (window 16, local base 10 000, global base 1 000 000), so that
    K = 1, 2, 3 cut before either kind; grouped-query attention; `query_pre_attn_scalar` = 1.5 × head width.

    Args:
        image_size, patch_size: SigLIP input size and patch size.
        tokens_per_image: image tokens after the projector's average pooling (a square dividing the patch grid).
        text_hidden, text_layers, heads, kv_heads: Gemma 3 width, depth, query heads and key/value heads.
        sliding_window: window of the sliding layers, in tokens.
        vision_hidden, vision_layers: SigLIP width and depth.
        attn_implementation: "sdpa" or "eager".
        seed: seed of the random weights (global RNG state is restored).

    Returns:
        `(model, processor)`, model in eval mode; the processor pads on the left.
    """
    tok = gemma3_tokenizer()
    head_dim = text_hidden // heads
    text = dict(hidden_size=text_hidden, intermediate_size=text_hidden * 2, num_hidden_layers=text_layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                query_pre_attn_scalar=head_dim * 3 // 2, sliding_window=sliding_window,
                layer_types=["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(text_layers)])
    vision = dict(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size, vision_use_head=False)
    model = build(gemma3_config(tok, text, vision, tokens_per_image), attn_implementation, seed)
    return model, gemma3_processor(tok, image_size, tokens_per_image)


def gemma3_4b_geometry(
    *,
    text_layers: int = 2,
    vision_layers: int = 1,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    vocab_size: int | None = None,
    meta: bool = False,
    text_overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """google/gemma-3-4b-it's geometry with random weights and few layers, and its processor settings, offline.

    The published widths (`GEMMA3_4B`: SigLIP 1152 wide at 896 px in 14-pixel patches, a 64×64 patch grid pooled
    4×4 to 256 tokens; text 2560 wide, 8 query and 4 key/value heads of 256, window 1024, local base 10 000,
    global base 1 000 000 with linear scaling ×8), but `text_layers` text layers alternating sliding and global
    (the released model has 5 sliding per global) and `vision_layers` SigLIP layers, and the tiny tokenizer's
    vocabulary instead of 262 208 words. For real-size geometry tests: processor, grids and oracles at the
    checkpoint's sizes in a few seconds of CPU. At the published depth (34 text layers) the layers follow the
    published pattern, five sliding to one global; `vocab_size` (262 208 published) and `meta` (shapes only, no
    storage) serve `tpx.memory`; `text_overrides` replaces text widths (`tpx.models.geometry.narrow_text`).

    Returns:
        `(model, processor)`, model in eval mode.
    """
    tok = gemma3_tokenizer()
    text = {k: v for k, v in GEMMA3_4B["text"].items() if k not in ("num_hidden_layers", "sliding_window_pattern")}
    every = GEMMA3_4B["text"]["sliding_window_pattern"] if text_layers == GEMMA3_4B["text"]["num_hidden_layers"] else 2
    text.update(num_hidden_layers=text_layers,
                layer_types=["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(text_layers)])
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    text.update(text_overrides or {})
    vision = dict(GEMMA3_4B["vision"], num_hidden_layers=vision_layers)
    config = gemma3_config(tok, text, vision, GEMMA3_4B["mm_tokens_per_image"])
    model = build(config, attn_implementation, seed, meta=meta)
    return model, gemma3_processor(tok, GEMMA3_4B["image"]["size"], GEMMA3_4B["mm_tokens_per_image"])
