"""What the engine asks of a model family: the `Adapter` and `Decoder` protocols, and shared layout helpers.

An adapter answers every transformers-specific question about where the visual tokens are (`layout`), the
vision tower (records for hook "V", `project`) and holds a `Decoder`, which answers the questions about the
language model (attention rows, keys, values, final norm, rotary, causal masks, cache). Adapters hold no
pruning logic, and families share decoder logic by holding the same decoder class, not by subclassing one
another. A new family is one adapter file satisfying `Adapter` and one entry in `tpx.models.ADAPTERS`.

An adapter whose model cannot give some ingredient (a vision tower without a [CLS] token) says so in an
optional `unavailable_ingredients: Mapping[str, str]` (ingredient name → why); `tpx.pruning`, `plan_for` and
`reachable` refuse a stage that needs one, with that reason, before any hook exists.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch

from tpx.layout import Layout
from tpx.models.decoder import LlamaDecoder
from tpx.models.gemma3_text import Gemma3Decoder

__all__ = ["Adapter", "Decoder", "Layout", "decoder_for", "image_positions", "image_runs", "reuse_image_features"]


@runtime_checkable
class Decoder(Protocol):
    """The language model of an MLLM, as the engine uses it (`decoder.LlamaDecoder` serves every Llama-family
    decoder, `gemma3_text.Gemma3Decoder` Gemma 3; `decoder_for` picks one)."""

    text_model: torch.nn.Module
    layers: Any
    n_layers: int

    @property
    def attn_implementation(self) -> str: ...

    def check_cache(self, cache: object) -> None:
        """Raise `TypeError` for a cache class pruned layers cannot use."""

    def layer_type(self, layer_idx: int) -> str:
        """What decoder layers share masks and rotary ("full_attention", "sliding_attention")."""

    def attention_rows(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple,
                       rows: torch.Tensor, mask2d: torch.Tensor | None, cache: object = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, H, R, T)` attention probabilities of query positions `rows` at decoder layer `layer_idx`
        (`mask`: the attention mask the layer received, when the family's rules need it)."""

    def keys(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple,
             cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` post-RoPE keys at decoder layer `layer_idx`."""

    def values(self, layer_idx: int, hidden_in: torch.Tensor, cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` value vectors at decoder layer `layer_idx`."""

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm the LM head reads."""

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor,
               layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary `(cos, sin)` for explicit 1-D position ids (of layer `layer_idx`'s type)."""

    def causal_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: object,
                    layer_idx: int, blocks: torch.Tensor | None = None) -> torch.Tensor | None:
        """The attention mask decoder layer `layer_idx` needs for `hidden`, sized from that layer's cache
        (`blocks`: `(B, T)` bidirectional block of each position, −1 for causal ones, in prefill)."""


@runtime_checkable
class Adapter(Protocol):
    """Engine-facing view of one MLLM family.

    Attributes:
        model: the Hugging Face model. decoder: its `Decoder`.
        image_token_id: the image placeholder id in `input_ids`.
        supports_renumber: whether 1-D position ids can be compacted (False for 3-D M-RoPE).
        vision_ingredients: the hook-"V" ingredients (`tpx.ingredients.VISION`) `vision_hooks` can record; a plan
            needing another one is refused on entering `tpx.pruning`.
        layers, n_layers, text_model: the decoder's, for callers that need the modules.

    Optional: `decoder_hooks(positions) -> handles` for a language model that adds per-token inputs between its
    decoder layers outside their arguments (Qwen3-VL's DeepStack features after its first layers). The engine
    installs them with a run's other hooks and passes `positions`, a callable returning the `(B, L')` original
    positions of the tokens the layers carry at that moment of a prefill (None outside one), so the adapter can
    keep those inputs aligned with a shortened sequence.
    """

    model: torch.nn.Module
    decoder: Decoder
    image_token_id: int
    supports_renumber: bool
    vision_ingredients: frozenset[str]
    layers: Any
    n_layers: int
    text_model: torch.nn.Module

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """The visual tokens of a call (`input_ids` and the call's other inputs: pixel values, image sizes, ...).

        Raises:
            ValueError: for no image tokens or rows with different layouts.
        """

    def nominal_layout(self) -> Layout | None:
        """The layout every single-image prompt has (LLaVA-1.5: one fixed grid), or None if it depends on the
        image (AnyRes, dynamic resolution). Lets `tpx.pruning` resolve budgets on entering the `with`."""

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pre-projector vision features `(B, N, Dv)` into the LLM's embedding space."""

    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the vision tower that record what hook-"V" ingredients need into `sink` (`names`: those the
        plan needs beyond `cls_attn`, `vision_keys`, `vision_features`, which are always recorded); returns
        handles."""

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """`cls_attn` (B, H, N), `vision_keys` (B, N, Dv), `vision_features` (B, N, Dv') per batch row, in layout
        order, from what `vision_hooks` recorded for this call."""


def image_positions(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """`(B, M)` positions of the image placeholder tokens in each row of `input_ids`.

    Raises:
        ValueError: if there are no image tokens, or rows hold different numbers of them.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(dim=1)
    if not bool(counts.any()):
        raise ValueError(
            f"input_ids contain no image tokens (image_token_id={image_token_id}); "
            "pass the processor's output for an image and a prompt with the image placeholder"
        )
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"every batch row must hold the same number of image tokens, got {counts.tolist()}")
    return is_image.nonzero()[:, 1].view(input_ids.shape[0], -1)


def image_runs(positions: torch.Tensor) -> torch.Tensor:
    """Lengths of the runs of consecutive positions in a 1-D tensor of ascending positions (one run per image
    when each image is one contiguous span of placeholders)."""
    breaks = torch.nonzero(positions[1:] - positions[:-1] != 1)[:, 0] + 1
    edges = torch.cat([breaks.new_zeros(1), breaks, breaks.new_full((1,), positions.numel())])
    return edges[1:] - edges[:-1]


def decoder_for(text_model: torch.nn.Module) -> Decoder:
    """The engine's view of an MLLM's language model: `Gemma3Decoder` for a Gemma 3 text model (the deep
    organism's, inside LLaVA), else `LlamaDecoder` (Llama, Mistral, Qwen2 text models)."""
    if getattr(text_model.config, "model_type", None) == "gemma3_text":
        return Gemma3Decoder(text_model)
    return LlamaDecoder(text_model)


@contextmanager
def reuse_image_features(model: torch.nn.Module) -> Iterator[dict]:
    """Inside the block, the model's vision encoder runs once per pixel tensor: a repeated
    `get_image_features` call with the very same input tensors returns the first call's output.

    Why: a grid of pruning configurations answers the same batch many times, and every configuration that
    prunes after the projector (hooks E and L) sees the same image features; on a small model the vision tower
    is over a third of the time. Calls are matched by the identity of their tensor arguments (and equality of
    the others), so new inputs are encoded afresh. transformers 5.x encodes images through
    `model.base_model.get_image_features` in `generate` and `forward` alike; a model without that method runs
    unchanged. Do not use it around methods that read the vision tower (hook V): their hooks need it to run.

    Yields:
        a dict whose "calls" and "encoded" count the calls and the encoder runs (for tests and benchmarks).
    """
    base = getattr(model, "base_model", None)
    real = getattr(base, "get_image_features", None)
    stats = {"calls": 0, "encoded": 0}
    if real is None:
        yield stats
        return
    memo: dict[tuple, Any] = {}

    def key_of(v: Any) -> Any:
        return ("tensor", id(v)) if isinstance(v, torch.Tensor) else ("value", repr(v))

    @functools.wraps(real)  # generate reads the signature to pick the encoder's arguments
    def reused(*args: Any, **kwargs: Any) -> Any:
        stats["calls"] += 1
        key = (tuple(key_of(a) for a in args), tuple(sorted((k, key_of(v)) for k, v in kwargs.items())))
        if key not in memo:
            stats["encoded"] += 1
            # the inputs are kept alive with the output, so the ids in the key cannot be reused by new tensors
            memo[key] = (real(*args, **kwargs), args, kwargs)
        return memo[key][0]

    own = vars(base).get("get_image_features")
    base.get_image_features = reused  # an instance attribute shadows the class's method
    try:
        yield stats
    finally:
        if own is None:
            del base.get_image_features
        else:
            base.get_image_features = own
        memo.clear()
