"""What the engine asks of a model family: the `Adapter` and `Decoder` protocols, and shared layout helpers.

An adapter answers every transformers-specific question about where the visual tokens are (`layout`), the
vision tower (records for hook "V", `project`) and holds a `Decoder`, which answers the questions about the
language model (attention rows, keys, values, final norm, rotary, causal masks, cache). Adapters hold no
pruning logic, and families share decoder logic by holding the same decoder class, not by subclassing one
another. A new family is one adapter file satisfying `Adapter` and one entry in `tpx.models.ADAPTERS`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from tpx.layout import Layout

__all__ = ["Adapter", "Decoder", "Layout", "image_positions", "image_runs"]


@runtime_checkable
class Decoder(Protocol):
    """The language model of an MLLM, as the engine uses it (one class serves every Llama-family decoder)."""

    text_model: torch.nn.Module
    layers: Any
    n_layers: int

    @property
    def attn_implementation(self) -> str: ...

    def check_cache(self, cache: object) -> None:
        """Raise `TypeError` for a cache class pruned layers cannot use."""

    def attention_rows(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple,
                       rows: torch.Tensor, mask2d: torch.Tensor | None, cache: object = None) -> torch.Tensor:
        """`(B, H, R, T)` attention probabilities of query positions `rows` at decoder layer `layer_idx`."""

    def keys(self, layer_idx: int, hidden_in: torch.Tensor, position_embeddings: tuple,
             cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` post-RoPE keys at decoder layer `layer_idx`."""

    def values(self, layer_idx: int, hidden_in: torch.Tensor, cache: object = None) -> torch.Tensor:
        """`(B, T, H_kv · head_dim)` value vectors at decoder layer `layer_idx`."""

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm the LM head reads."""

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary `(cos, sin)` for explicit 1-D position ids."""

    def causal_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: object,
                    layer_idx: int) -> torch.Tensor | None:
        """The attention mask decoder layer `layer_idx` needs for `hidden`, sized from that layer's cache."""


@runtime_checkable
class Adapter(Protocol):
    """Engine-facing view of one MLLM family.

    Attributes:
        model: the Hugging Face model. decoder: its `Decoder`.
        image_token_id: the image placeholder id in `input_ids`.
        supports_renumber: whether 1-D position ids can be compacted (False for 3-D M-RoPE).
        layers, n_layers, text_model: the decoder's, for callers that need the modules.
    """

    model: torch.nn.Module
    decoder: Decoder
    image_token_id: int
    supports_renumber: bool
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

    def vision_hooks(self, sink: dict[str, Any]) -> list[Any]:
        """Hooks on the vision tower that record what hook-"V" ingredients need into `sink`; returns handles."""

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
