"""One question about one image, answered with or without pruning: the unit the explorers are built on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Answer", "ask", "prompt"]


@dataclass
class Answer:
    """A generated answer and what pruning did to produce it.

    Attributes:
        text: the decoded answer.
        entry: the trace entry of the prefill (None when unpruned).
        pixel_values: `(1, 3, H, W)` what the vision tower saw (for drawing).
    """

    text: str
    entry: Any
    pixel_values: torch.Tensor


def prompt(processor: Any, question: str) -> str:
    """The model's own chat format for one image and one question.

    Uses the processor's chat template when it has one (the llava-hf checkpoints do); otherwise LLaVA-1.5's
    format `USER: <image>\\n{question} ASSISTANT:`.
    """
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"USER: {processor.image_token}\n{question} ASSISTANT:"


def ask(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    method: str | None = None,
    *,
    retention: float = 1.0,
    max_new_tokens: int = 16,
    **pruning: Any,
) -> Answer:
    """Greedy answer to `question` about `image`, pruned with `method` when one is given.

    Args:
        model, processor: from `tpx.load`.
        image: a PIL image.
        question: the question text (no image placeholder).
        method: a registry name, or None for the unpruned model.
        retention: kept share of visual tokens, in (0, 1].
        max_new_tokens: answer length limit.
        **pruning: further `tpx.pruning` arguments (layer, seed, hook, method parameters).

    Returns:
        An `Answer`.
    """
    from tpx.engine import pruning as prune

    inputs = processor(images=image, text=prompt(processor, question), return_tensors="pt")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    entry = None
    with torch.inference_mode():
        if method is None:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        else:
            with prune(model, method, retention=retention, **pruning) as run:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            entry = run.trace[0]
    text = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    return Answer(text=text.strip(), entry=entry, pixel_values=inputs["pixel_values"])
