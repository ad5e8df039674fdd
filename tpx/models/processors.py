"""Image-only processors for families whose video processor needs torchvision (InternVL, LLaVA-OneVision).

torchvision does not load beside the CPU build of torch, so `AutoProcessor` cannot build these processors here:
their video processors import it. `ImageOnly` lets a processor hold no video processor, saves the tokenizer,
the image processor and the processor's own settings, and `load_processor` reads them back (from a folder or a
hub id), with the image processor's PIL backend. The Qwen2-VL adapter keeps its own `OfflineQwen2VLProcessor`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import InternVLProcessor, LlavaOnevisionProcessor

__all__ = ["ImageOnly", "OfflineInternVLProcessor", "OfflineLlavaOnevisionProcessor", "load_processor"]


class ImageOnly:
    """Mixin for a `ProcessorMixin` subclass: the video processor may be None; `save_pretrained` writes the
    tokenizer, the image processor and `processor_config.json` holding the settings named in `SETTINGS`."""

    SETTINGS: tuple[str, ...] = ()
    BASE: str = ""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        return None if argument is None else super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> list[str]:
        """Save the tokenizer, the image processor and the processor's settings (`load_processor` reads them)."""
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(save_directory))
        files += list(self.image_processor.save_pretrained(save_directory) or [])
        path = os.path.join(save_directory, "processor_config.json")
        settings = {"processor_class": self.BASE, **{k: getattr(self, k) for k in self.SETTINGS}}
        with open(path, "w") as f:
            json.dump(settings, f, indent=2)
        return [*files, path]


class OfflineInternVLProcessor(ImageOnly, InternVLProcessor):
    """`InternVLProcessor` for images only (no torchvision needed)."""

    SETTINGS = ("image_seq_length",)
    BASE = "InternVLProcessor"


class OfflineLlavaOnevisionProcessor(ImageOnly, LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` for images only (no torchvision needed)."""

    SETTINGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")
    BASE = "LlavaOnevisionProcessor"


_FAMILIES = {"internvl": (OfflineInternVLProcessor, "GotOcr2ImageProcessorPil"),
             "llava_onevision": (OfflineLlavaOnevisionProcessor, "LlavaOnevisionImageProcessorPil")}


def load_processor(path: str, model_type: str) -> ImageOnly:
    """An image-only processor of `model_type` ("internvl", "llava_onevision") from a folder or hub id.

    Raises:
        ValueError: for another model type.
    """
    import transformers
    from transformers import AutoTokenizer
    from transformers.utils import cached_file

    if model_type not in _FAMILIES:
        raise ValueError(f"no image-only processor for model_type {model_type!r}; known: {', '.join(_FAMILIES)}")
    cls, image_cls = _FAMILIES[model_type]
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = getattr(transformers, image_cls).from_pretrained(path)
    config = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    settings = {}
    if config is not None:
        with open(config) as f:
            settings = {k: v for k, v in json.load(f).items() if k in cls.SETTINGS}
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
               chat_template=getattr(tokenizer, "chat_template", None), **settings)
