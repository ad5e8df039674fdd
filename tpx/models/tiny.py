"""Tiny random MLLMs built from configs, fully offline, for plumbing and exactness tests.

Random weights give near-uniform attention, so nothing qualitative can be read from these models; they
exist to check that pruning is exact. The trained model organism in `data/organism/` is the default for
anything meaningful.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["tiny", "tiny_tokenizer"]

_CORPUS = [
    "USER: What is shown in the image? ASSISTANT: A person standing in front of a flag.",
    "Describe the picture in detail. The photo shows a cat sitting on a wooden table.",
    "How many objects are there? There are three coins and a cup of coffee.",
    "Is there a red triangle in the image? Yes. Is the star left of the blue circle? No.",
    "What colour is the square? The square is green. What digit is written? Seven.",
    "The quick brown fox jumps over the lazy dog near the river bank at noon.",
]
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained in memory on a few sentences (never emits `<unk>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )


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
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = tiny_tokenizer()
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
