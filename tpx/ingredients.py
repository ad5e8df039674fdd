"""The tensors a scorer or selector may ask for, by argument name, and how the engine computes them.

A scorer such as `last_token_attention(attn_last)` names what it needs; at a pruning stage the engine
computes only the names some function of the method asks for, from the hidden states entering the pruned
layer, what the layer before it received (for attention rows and keys), and the vision tower's feature
layer (hook "V"). Everything is batched and stays on the model's device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["INGREDIENTS", "Stage", "collect", "wanted"]

INGREDIENTS = {
    "attn_last": "(B, H, N) attention of the last prompt token over the visual tokens, layer K−1",
    "attn_last_visual": "(B, H, N) attention of the last visual token over the visual tokens, layer K−1",
    "attn_text": "(B, H, T, N) attention of the T text tokens after the image over the visual tokens, layer K−1",
    "text_mask": "(B, T) bool, which of the T text slots are real tokens (rows are padded to the batch max)",
    "features": "(B, N, D) hidden states of the visual tokens entering the pruned layer",
    "normed_features": "(B, N, D) the same after the LLM's final norm",
    "normed_text": "(B, T, D) text tokens entering the pruned layer, after the final norm",
    "last_feature": "(B, D) hidden state of the last prompt token entering the pruned layer",
    "visual_keys": "(B, N, Dk) post-RoPE keys of the visual tokens at layer K−1",
    "text_keys": "(B, T, Dk) post-RoPE keys of the text tokens at layer K−1",
    "cls_attn": "(B, H, N) attention of the vision tower's [CLS] over the patches at the feature layer",
    "vision_keys": "(B, N, Dv) keys of the patches at the vision feature layer",
    "vision_features": "(B, N, Dv) pre-projector patch features",
    "scores": "(B, N) output of the scorer",
    "n_keep": "int, tokens kept by this stage",
    "grid": "(rows, cols) of the image segment being selected from",
    "generator": "torch.Generator seeded once per run, on the model's device",
}
_BEFORE = {"attn_last", "attn_last_visual", "attn_text", "visual_keys", "text_keys"}  # read layer K−1
_VISION = {"cls_attn", "vision_keys", "vision_features"}


def wanted(*fns: Callable[..., Any] | None) -> set[str]:
    """Ingredient names that the given functions take as arguments."""
    return {p for fn in fns if fn is not None for p in inspect.signature(fn).parameters if p in INGREDIENTS}


def needs_layer_before(names: set[str]) -> bool:
    """Whether these ingredients are read at layer K−1 (then K must be ≥ 1)."""
    return bool(names & _BEFORE)


def needs_vision(names: set[str]) -> bool:
    """Whether these ingredients come from the vision tower (hook "V")."""
    return bool(names & _VISION)


@dataclass
class Stage:
    """What the engine knows at one pruning stage of a prefill.

    Attributes:
        adapter: the model adapter.
        hidden: `(B, L, D)` hidden states entering the pruned layer.
        visual: `(B, N)` positions of the current visual tokens in the current sequence.
        text: `(B, T)` positions of the text tokens after the image (padded slots repeat the last position).
        text_mask: `(B, T)` which text slots are real.
        before: `(hidden, position_embeddings, mask2d, cache)` entering layer K−1, or None; once layer K−1 ran,
            the cache holds its keys, which attention rows and key ingredients reuse.
        maps: `(B, H, L, L)` eager attention maps of layer K−1 (attention="maps"), or None.
        vision: ingredients recorded on the vision tower, or None.
        score_layer: K−1.
    """

    adapter: Any
    hidden: torch.Tensor
    visual: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    before: tuple | None
    maps: torch.Tensor | None
    vision: dict[str, torch.Tensor] | None
    score_layer: int


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _rows(st: Stage, rows: torch.Tensor) -> torch.Tensor:
    """`(B, H, R, N)` attention of query rows over the current visual tokens at layer K−1."""
    if st.maps is not None:
        m = st.maps
        att = m.gather(2, rows[:, None, :, None].expand(-1, m.shape[1], -1, m.shape[3]))
    else:
        hidden, pe, mask2d, cache = st.before
        att = st.adapter.attention_rows(st.score_layer, hidden, pe, rows, mask2d, cache=cache)
    return att.gather(3, st.visual[:, None, None, :].expand(-1, att.shape[1], att.shape[2], -1))


def collect(names: set[str], st: Stage) -> dict[str, Any]:
    """Compute the requested ingredients (those in `INGREDIENTS` that need the model) for one stage."""
    out: dict[str, Any] = {}
    b, length = st.hidden.shape[:2]
    if "features" in names:
        out["features"] = _gather(st.hidden, st.visual)
    if "last_feature" in names:
        out["last_feature"] = st.hidden[:, -1]
    if names & {"normed_features", "normed_text"}:
        normed = st.adapter.final_norm(st.hidden)
        out["normed_features"] = _gather(normed, st.visual)
        out["normed_text"] = _gather(normed, st.text)
    if "attn_last" in names:
        last = torch.full((b, 1), length - 1, dtype=torch.long, device=st.hidden.device)
        out["attn_last"] = _rows(st, last)[:, :, 0]
    if "attn_last_visual" in names:
        out["attn_last_visual"] = _rows(st, st.visual[:, -1:])[:, :, 0]
    if "attn_text" in names:
        out["attn_text"] = _rows(st, st.text)
    if names & {"visual_keys", "text_keys"}:
        hidden, pe, _, cache = st.before
        keys = st.adapter.keys(st.score_layer, hidden, pe, cache=cache)
        out["visual_keys"], out["text_keys"] = _gather(keys, st.visual), _gather(keys, st.text)
    if names & _VISION:
        out.update({k: st.vision[k] for k in names & _VISION})
    if "text_mask" in names:
        out["text_mask"] = st.text_mask
    return out
