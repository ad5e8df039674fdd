"""The tiny byte-level BPE tokenizer every tiny random model in `tpx.models` shares, trained in memory offline,
with per family the special tokens its processor expects (`<image>`, `<|image_pad|>`, InternVL's `<img>`
`<IMG_CONTEXT>` `</img>`), so placeholders never split.

Its own module so that each tiny builder (`tiny`, `tiny_qwen3_vl`, `tiny_internvl`, ...) can import it without
importing the others.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["FAMILIES", "QWEN_SPECIALS", "tiny_tokenizer"]

_CORPUS = [
    "USER: What is shown in the image? ASSISTANT: A person standing in front of a flag.",
    "Describe the picture in detail. The photo shows a cat sitting on a wooden table.",
    "How many objects are there? There are three coins and a cup of coffee.",
    "Is there a red triangle in the image? Yes. Is the star left of the blue circle? No.",
    "What colour is the square? The square is green. What digit is written? Seven.",
    "The quick brown fox jumps over the lazy dog near the river bank at noon.",
]
_QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class Spec(NamedTuple):
    """A family's special tokens (in vocabulary order), its unknown token and the tokenizer's keyword arguments
    (pad / bos / eos tokens, and `extra_special_tokens`: named placeholders the processor reads)."""

    specials: list[str]
    unk: str | None
    kwargs: dict[str, Any]


_QWEN_KW = dict(pad_token="<|endoftext|>", eos_token="<|im_end|>")
FAMILIES: dict[str, Spec] = {
    "llava": Spec(["<pad>", "<s>", "</s>", "<unk>", "<image>"], "<unk>", dict(
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"})),
    "qwen2_vl": Spec([*_QWEN, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], None, dict(
        _QWEN_KW, extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})),
    "internvl": Spec([*_QWEN, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"], None, dict(
        _QWEN_KW, extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})),
    "llava_onevision": Spec([*_QWEN, "<image>", "<video>"], None, dict(
        _QWEN_KW, extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})),
}
QWEN_SPECIALS = FAMILIES["qwen2_vl"].specials


def tiny_tokenizer(vocab_size: int = 400, family: str = "llava") -> Any:
    """A byte-level BPE tokenizer trained in memory on a few sentences (never emits `<unk>`).

    Args:
        vocab_size: upper bound on the vocabulary (the small corpus may stop earlier).
        family: "llava" (`<image>` placeholder, `<s>`/`</s>`), "qwen2_vl" (`<|image_pad|>` between
            `<|vision_start|>` and `<|vision_end|>`, `<|im_end|>` as end of sequence), "internvl" (`<IMG_CONTEXT>`
            between `<img>` and `</img>`) or "llava_onevision" (`<image>`, Qwen2's end of sequence).

    Raises:
        ValueError: for an unknown family.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    spec = FAMILIES[family]
    bpe = Tokenizer(models.BPE(unk_token=spec.unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=spec.specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="left", **spec.kwargs)
