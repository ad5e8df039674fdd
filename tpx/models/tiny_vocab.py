"""The tiny byte-level BPE tokenizer every tiny random model in `tpx.models` shares, trained in memory offline.

Its own module so that each tiny builder (`tiny`, `tiny_qwen3_vl`, ...) can import it without importing the others.
"""

from __future__ import annotations

from typing import Any

__all__ = ["QWEN_SPECIALS", "tiny_tokenizer"]

_CORPUS = [
    "USER: What is shown in the image? ASSISTANT: A person standing in front of a flag.",
    "Describe the picture in detail. The photo shows a cat sitting on a wooden table.",
    "How many objects are there? There are three coins and a cup of coffee.",
    "Is there a red triangle in the image? Yes. Is the star left of the blue circle? No.",
    "What colour is the square? The square is green. What digit is written? Seven.",
    "The quick brown fox jumps over the lazy dog near the river bank at noon.",
]
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]


def tiny_tokenizer(vocab_size: int = 400, family: str = "llava") -> Any:
    """A byte-level BPE tokenizer trained in memory on a few sentences (never emits `<unk>`).

    Args:
        vocab_size: upper bound on the vocabulary (the small corpus may stop earlier).
        family: "llava" (`<image>` placeholder, `<s>`/`</s>`) or "qwen2_vl" (`<|image_pad|>` between
            `<|vision_start|>` and `<|vision_end|>`, `<|im_end|>` as end of sequence).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = QWEN_SPECIALS if family == "qwen2_vl" else _SPECIALS
    bpe = Tokenizer(models.BPE(unk_token=None if family == "qwen2_vl" else "<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    if family == "qwen2_vl":
        return PreTrainedTokenizerFast(
            tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>", padding_side="left",
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )
