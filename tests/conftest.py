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


def pytest_report_header(config):
    import transformers

    return f"transformers {transformers.__version__} ({Path(transformers.__file__).parent})"


def pytest_sessionstart(session):
    """`make oracles-newest` names the transformers it installed: the run fails unless that is the one imported."""
    want = os.environ.get("TPX_EXPECT_TRANSFORMERS")
    if want:
        import transformers

        if transformers.__version__ != want:
            raise pytest.UsageError(f"TPX_EXPECT_TRANSFORMERS={want}, but transformers {transformers.__version__} "
                                    f"is imported from {transformers.__file__}")


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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on 2 shared cores, a second thread that gets descheduled stalls every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(one_thread):
    """The tiny random LLaVA and its processor (`tpx.load("tiny")`), run with one thread."""
    from tpx.models import load

    return load("tiny")


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


# ---- hand-made selector inputs shared by test_select / test_dedup / test_merge -------------------------

def selection_inputs(seed, b=2, n=40, t=6, d=8, dk=12, h=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[-1, t - 2:] = False                                                   # a padded instruction
    return dict(
        features=torch.randn(b, n, d, generator=g), normed_features=torch.randn(b, n, d, generator=g),
        normed_text=torch.randn(b, t, d, generator=g), text_mask=mask,
        visual_keys=torch.randn(b, n, dk, generator=g), text_keys=torch.randn(b, t, dk, generator=g),
        last_feature=torch.randn(b, d, generator=g), attn_last=torch.rand(b, h, n, generator=g),
    )


def assert_sorted_unique(index, n_keep):
    assert index.dtype == torch.int64 and index.shape[1] == n_keep
    assert bool((index[:, 1:] > index[:, :-1]).all())


def cosine(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# ---- invalid values of every kind of method parameter (tests/test_plan.py, tests/test_engine.py) -------

def bad_values(spec) -> list:
    """Values a `tpx.methods.Param` of this kind must refuse."""
    return {
        "unit": [2, -0.1, "x", True],
        "count": [spec.low - 1, 1.5, True, "4"],
        "flag": ["yes", 1, None],
        "choice": ["foo", 3],
        "window": [0, (2,), (0, 2), "x", True],
        "shares": [(0.5, 0.6, 0.1), (1.5, 0.5, 0.25), (), "abc"],
    }[spec.kind]


def every_bad_parameter():
    """`(method, parameter, bad value)` for every parameter of every registered method."""
    import tpx

    return [(name, key, bad) for name in tpx.list_methods() for key, spec in tpx.get_method(name).params.items()
            for bad in bad_values(spec)]


# ---- inputs of the other tiny families (tests/models/) -----------------------------------------------------

QWEN_PROMPT = "<|im_start|>user\n{}{}<|im_end|>\n<|im_start|>assistant\n"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QUESTIONS = ["What is shown in the image?", "How many objects are there in the picture, and what colour is the square?"]


def random_array_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A random RGB image of `size` (height, width)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def llava_next_inputs(processor, batch: int, seed: int = 0, sizes=None) -> dict[str, torch.Tensor]:
    """Tiny LLaVA-NeXT inputs: a 40×64 image fills the 2×2 AnyRes canvas (a 4×4 base grid, a 6×8 crop grid)."""
    sizes = sizes or [(40, 64)] * batch
    images = [random_array_image(seed + i, sizes[i]) for i in range(batch)]
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def qwen2_vl_inputs(processor, batch: int, seed: int = 0, sizes=None, per_row: int = 1) -> dict[str, torch.Tensor]:
    """Tiny Qwen2-VL inputs: a 168×224 image gives a 6×8 grid of merged tokens; rows of different lengths."""
    sizes = sizes or [(168, 224)] * (batch * per_row)
    images = [random_array_image(seed + i, size) for i, size in enumerate(sizes)]
    texts = [QWEN_PROMPT.format(QWEN_IMAGE * per_row, QUESTIONS[i % 2]) for i in range(batch)]
    inputs = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    if batch > 1:
        assert bool((inputs["attention_mask"] == 0).any())
    return inputs


def qwen3_vl_inputs(processor, batch: int, seed: int = 0, sizes=None, per_row: int = 1) -> dict[str, torch.Tensor]:
    """Tiny Qwen3-VL inputs: a 192×256 image gives a 6×8 grid of merged tokens (16-pixel patches)."""
    return qwen2_vl_inputs(processor, batch, seed, sizes or [(192, 256)] * (batch * per_row), per_row)


INTERNVL_PROMPT = "<|im_start|>user\n<IMG_CONTEXT>\n{}<|im_end|>\n<|im_start|>assistant\n"


def internvl_inputs(processor, batch: int, seed: int = 0, sizes=None) -> dict[str, torch.Tensor]:
    """Tiny InternVL inputs: a 40×64 image is cut into 2 tiles side by side plus a thumbnail (3 grids of 4×4)."""
    sizes = sizes or [(40, 64)] * batch
    images = [random_array_image(seed + i, size) for i, size in enumerate(sizes)]
    texts = [INTERNVL_PROMPT.format(QUESTIONS[i % 2]) for i in range(batch)]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def llava_onevision_inputs(processor, batch: int, seed: int = 0, sizes=None) -> dict[str, torch.Tensor]:
    """Tiny LLaVA-OneVision inputs: a 40×64 image fills the 2×2 canvas, unpadded to 6×8 and shrunk by AnyRes-Max
    to 4×6 (a 4×4 base grid, a 4×6 crop grid, 4 newlines)."""
    sizes = sizes or [(40, 64)] * batch
    images = [random_array_image(seed + i, size) for i, size in enumerate(sizes)]
    texts = [QWEN_PROMPT.format("<image>", QUESTIONS[i % 2]) for i in range(batch)]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
