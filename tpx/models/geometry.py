"""`geometry-*` models: each family's published checkpoint geometry, offline, small enough to run a notebook.

What a notebook's analysis depends on is the token layout a checkpoint gives an image: how many visual tokens,
in which grids (LLaVA-1.5's 24×24 at 336 px, NeXT's AnyRes crops with unpadding, Qwen's dynamic grid between
`min_pixels` and `max_pixels`, InternVL's 448-px tiles pixel-shuffled to 16×16, OneVision's AnyRes-Max, Gemma 3's
896-px image pooled to 16×16). That comes from the published image processor and vision tower, which these
models keep: the published processor settings and the published tower widths, `vision_layers` blocks deep.

The language model is where they depart, and why: `text_layers` = 4 decoder layers (the notebooks compare K = 1,
2, 3) at a narrow width (`narrow_text`: two query heads of the published head dim, the published grouping of
key/value heads, MLP twice the width). At the published width a 7B layer costs about 0.4 GFLOP per token, so one
LLaVA-1.5 prompt through 4 layers takes 12.9 CPU-seconds here, 26x the narrow model (benchmarks/geometry.py),
and a fast notebook run several hours; the layout does not depend on the width, and the engine's oracles at the published widths are the real-size geometry tests
(`tests/models/test_real_geometry*.py`, built by `geometry_llava`, `geometry_qwen` and
`tiny_gemma3.gemma3_4b_geometry` with `text_overrides=None`). Weights are random (seeded), the vocabulary is the
family's tiny tokenizer's. Load them with `tpx.load("geometry-llava-1.5")` etc.; `CHECKPOINTS` lists the names.
"""

from __future__ import annotations

from typing import Any

# tpx.load name → the published checkpoint whose geometry it carries
CHECKPOINTS = {
    "geometry-llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "geometry-llava-next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "geometry-qwen2-vl": "Qwen/Qwen2-VL-2B-Instruct",
    "geometry-qwen3-vl": "Qwen/Qwen3-VL-2B-Instruct",
    "geometry-gemma3": "google/gemma-3-4b-it",
    "geometry-internvl3": "OpenGVLab/InternVL3-1B-hf",
    "geometry-llava-onevision": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
}
TEXT_LAYERS = 4
VISION_LAYERS = 2
_LLAVA_KEYS = {"geometry-llava-1.5": "llava-1.5-7b", "geometry-llava-next": "llava-v1.6-mistral-7b",
               "geometry-internvl3": "internvl3-1b", "geometry-llava-onevision": "llava-onevision-qwen2-0.5b-ov"}


def narrow_text(text: dict[str, Any], heads: int = 2) -> dict[str, Any]:
    """Width overrides of a published text config: `heads` query heads of its head dim, key/value heads grouped
    as published (as many as the queries when it has no grouping, else one), MLP twice the hidden width."""
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv = heads if text.get("num_key_value_heads", text["num_attention_heads"]) == text["num_attention_heads"] else 1
    hidden = heads * head_dim
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim}


def build(name: str, *, text_layers: int = TEXT_LAYERS, vision_layers: int = VISION_LAYERS, seed: int = 0,
          attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """`(model, processor)` of a `geometry-*` name: published geometry and tower widths, narrow language model.

    Raises:
        ValueError: `name` is not one of `CHECKPOINTS`.
    """
    if name not in CHECKPOINTS:
        raise ValueError(f"name must be one of {list(CHECKPOINTS)}, got {name!r}")
    kwargs = dict(text_layers=text_layers, vision_layers=vision_layers, seed=seed,
                  attn_implementation=attn_implementation)
    if name in _LLAVA_KEYS:
        from tpx.models import geometry_llava

        key = _LLAVA_KEYS[name]
        return geometry_llava.build(key, text_overrides=narrow_text(geometry_llava.PUBLISHED[key]["text"]), **kwargs)
    if name == "geometry-gemma3":
        from tpx.models.tiny_gemma3 import GEMMA3_4B, gemma3_4b_geometry

        # one SigLIP block: its 896-px image is 4,096 patches (5.8 CPU-s per prompt with two blocks here)
        return gemma3_4b_geometry(text_overrides=narrow_text(GEMMA3_4B["text"]), **kwargs | {"vision_layers": 1})
    from tpx.models import geometry_qwen

    key = CHECKPOINTS[name]
    return geometry_qwen.build(key, text_overrides=narrow_text(geometry_qwen.PUBLISHED[key]["text_config"]), **kwargs)
