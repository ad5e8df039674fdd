"""Shared fixtures: tiny seeded LLaVA models (sdpa and eager) and fresh random inputs (never zeros)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

PROMPTS = [
    "USER: <image>\nWhat is shown in the image? ASSISTANT:",
    "USER: <image>\nHow many objects are there in the picture, and what colour is the square? ASSISTANT:",
]


def random_image(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_inputs(processor, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Batch 1, or a left-padded batch of rows with prompts of different lengths."""
    images = [random_image(seed + i, processor.image_processor.crop_size["height"]) for i in range(batch)]
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    if batch > 1:
        assert bool((inputs["attention_mask"] == 0).any()), "the batch fixture must contain padding"
    return dict(inputs)


@pytest.fixture(scope="session")
def tiny_models():
    from tpx.models import tiny

    return {attn: tiny(attn_implementation=attn, seed=1) for attn in ("sdpa", "eager")}


@pytest.fixture(params=["sdpa", "eager"])
def attn(request) -> str:
    return request.param


@pytest.fixture(params=[1, 2], ids=["batch1", "padded2"])
def batch(request) -> int:
    return request.param
