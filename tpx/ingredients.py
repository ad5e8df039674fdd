"""The tensors a method may need at a pruning stage: one table, name → how to compute it and its token axis.

A registry entry declares which of these its scorer and its selector take (`Method.needs`); the plan lists
them per stage and the engine computes exactly those, through this table, from what it knows at the stage
(a `Context`): the hidden states entering the pruned layer K, what layer K−1 received and cached (attention
rows, keys), and what the vision tower recorded (hook "V"). A new ingredient is one entry here; the engine
does not change. `axis` says which dimension indexes the visual tokens, so that selection per image segment
can slice any ingredient. Everything is batched and stays on the model's device. The table reaches the model
only through the `Context`'s decoder (the adapter's), so this module imports no model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tpx.select import mask_to_index, take

__all__ = ["INGREDIENTS", "OBJECT_DEPTH", "VISION", "Context", "Ingredient", "compute"]

Axis = Literal["token", "key"] | None
Reads = Literal["layer", "before", "vision", "run"]


@dataclass(frozen=True)
class Ingredient:
    """One entry of the table.

    Attributes:
        doc: shape and meaning.
        axis: the dimension that indexes the N visual tokens: "token" (dim 1, e.g. `(B, N, D)`), "key" (the last
            dim, attention over visual keys, e.g. `(B, H, N)`), or None (nothing per visual token).
        reads: what it is computed from: "layer" (the hidden states entering layer K), "before" (layer K−1's
            input and cache, so K ≥ 1), "vision" (the vision tower's records, hook "V"), "run" (the run itself).
        compute: `Context → value`.
    """

    doc: str
    axis: Axis
    reads: Reads
    compute: Callable[[Context], Any]


@dataclass
class Context:
    """What the engine knows at one pruning stage of a prefill.

    Attributes:
        decoder: the adapter's decoder (`tpx.models.base.Decoder`): attention rows, keys, values, final norm.
        hidden: `(B, L, D)` hidden states entering the pruned layer K.
        visual: `(B, N)` positions of the current visual tokens in the current sequence.
        is_text: `(B, L)` bool, the text tokens after the image in the current sequence (not padding).
        before: `(hidden, position_embeddings, mask2d, cache, mask)` entering layer K−1, or None (`mask`: the
            attention mask that layer received, which carries family rules such as Gemma 3's bidirectional image
            blocks); once layer K−1 ran, the cache holds its keys and values, which the attention and key
            ingredients reuse.
        maps: `(B, H, L, L)` eager attention maps of layer K−1 (attention="maps"), or None.
        vision: ingredients recorded on the vision tower, per batch row in layout order, or None.
        score_layer: K−1.
        grid: `(rows, cols)` of the image segment being selected from.
        generator: the run's seeded generator.
        mask2d: `(B, L)` padding mask of the current sequence (1 = real token), or None without padding.
    """

    decoder: Any
    hidden: torch.Tensor
    visual: torch.Tensor
    is_text: torch.Tensor
    before: tuple | None = None
    maps: torch.Tensor | None = None
    vision: dict[str, torch.Tensor] | None = None
    score_layer: int = -1
    grid: tuple[int, int] | None = None
    generator: torch.Generator | None = None
    mask2d: torch.Tensor | None = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """`fn()` computed once per stage (ingredients that share work, e.g. keys of visual and text tokens)."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, T)` positions of the text tokens after the image (padded slots repeat the last position) and
        `(B, T)` which slots are real; T is the batch's largest count."""
        def find() -> tuple[torch.Tensor, torch.Tensor]:
            n_text = int(self.is_text.sum(1).max())
            text = mask_to_index(self.is_text, n_text)
            valid = self.is_text.gather(1, text)
            return torch.where(valid, text, self.is_text.shape[1] - 1), valid

        return self.once("text", find)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """`(B, H, R, N)` attention of query positions `rows` over the current visual tokens at layer K−1."""
        if self.maps is not None:
            m = self.maps
            att = m.gather(2, rows[:, None, :, None].expand(-1, m.shape[1], -1, m.shape[3]))
        else:
            hidden, pe, mask2d, cache, mask = self._before()
            att = self.decoder.attention_rows(self.score_layer, hidden, pe, rows, mask2d, cache=cache, mask=mask)
        return att.gather(3, self.visual[:, None, None, :].expand(-1, att.shape[1], att.shape[2], -1))

    def keys(self) -> torch.Tensor:
        """`(B, L, H_kv·d)` post-RoPE keys of every current position at layer K−1."""
        hidden, pe, _, cache, _ = self._before()
        return self.once("keys", lambda: self.decoder.keys(self.score_layer, hidden, pe, cache=cache))

    def normed(self) -> torch.Tensor:
        """`(B, L, D)` the hidden states entering layer K after the LLM's final norm."""
        return self.once("normed", lambda: self.decoder.final_norm(self.hidden))

    def recorded(self, name: str) -> torch.Tensor:
        if self.vision is None:
            raise RuntimeError(f"ingredient {name!r} comes from the vision tower, which recorded nothing for this "
                               "stage")
        return self.vision[name]

    def unpadded(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions` in the current sequence counted from the row's first real token (left padding removed),
        so a padded row numbers its tokens as the same prompt alone would."""
        if self.mask2d is None:
            return positions
        return positions - (self.mask2d == 0).sum(dim=1, keepdim=True)

    def _before(self) -> tuple:
        if self.before is None:
            raise RuntimeError(f"no record of layer {self.score_layer}'s input for this stage")
        return self.before


# HiPrune's object layer: layer 9 (1-based) of CLIP ViT-L's 24, its default for LLaVA-1.5 and LLaVA-NeXT; other
# towers use the layer at the same relative depth (round(9/24 · depth), at least 1, at most the feature layer)
OBJECT_DEPTH = 9 / 24


def _last(ctx: Context) -> torch.Tensor:
    b, length = ctx.hidden.shape[:2]
    return torch.full((b, 1), length - 1, dtype=torch.long, device=ctx.hidden.device)


INGREDIENTS: dict[str, Ingredient] = {
    "attn_last": Ingredient(
        "(B, H, N) attention of the last prompt token over the visual tokens, layer K−1", "key", "before",
        lambda ctx: ctx.rows(_last(ctx))[:, :, 0]),
    "attn_last_visual": Ingredient(
        "(B, H, N) attention of the last visual token over the visual tokens, layer K−1", "key", "before",
        lambda ctx: ctx.rows(ctx.visual[:, -1:])[:, :, 0]),
    "attn_text": Ingredient(
        "(B, H, T, N) attention of the T text tokens after the image over the visual tokens, layer K−1", "key",
        "before", lambda ctx: ctx.rows(ctx.text()[0])),
    "text_mask": Ingredient(
        "(B, T) bool, which of the T text slots are real tokens (rows are padded to the batch max)", None, "layer",
        lambda ctx: ctx.text()[1]),
    "features": Ingredient(
        "(B, N, D) hidden states of the visual tokens entering the pruned layer", "token", "layer",
        lambda ctx: take(ctx.hidden, ctx.visual)),
    "normed_features": Ingredient(
        "(B, N, D) the same after the LLM's final norm", "token", "layer",
        lambda ctx: take(ctx.normed(), ctx.visual)),
    "normed_text": Ingredient(
        "(B, T, D) text tokens entering the pruned layer, after the final norm", None, "layer",
        lambda ctx: take(ctx.normed(), ctx.text()[0])),
    "last_feature": Ingredient(
        "(B, D) hidden state of the last prompt token entering the pruned layer", None, "layer",
        lambda ctx: ctx.hidden[:, -1]),
    "visual_keys": Ingredient(
        "(B, N, Dk) post-RoPE keys of the visual tokens at layer K−1", "token", "before",
        lambda ctx: take(ctx.keys(), ctx.visual)),
    "text_keys": Ingredient(
        "(B, T, Dk) post-RoPE keys of the text tokens at layer K−1", None, "before",
        lambda ctx: take(ctx.keys(), ctx.text()[0])),
    "visual_values": Ingredient(
        "(B, N, Dv) value vectors of the visual tokens at layer K−1, heads concatenated", "token", "before",
        lambda ctx: take(ctx.decoder.values(ctx.score_layer, ctx.before[0], cache=ctx.before[3]), ctx.visual)),
    "cls_attn": Ingredient(
        "(B, H, N) attention of the vision tower's [CLS] over the patches at the feature layer", "key", "vision",
        lambda ctx: ctx.recorded("cls_attn")),
    "vision_keys": Ingredient(
        "(B, N, Dv) keys of the patches at the vision feature layer", "token", "vision",
        lambda ctx: ctx.recorded("vision_keys")),
    "vision_features": Ingredient(
        "(B, N, Dv) pre-projector patch features", "token", "vision",
        lambda ctx: ctx.recorded("vision_features")),
    "text_features": Ingredient(
        "(B, T, D) hidden states of the text tokens entering the pruned layer (hook E: their input embeddings)",
        None, "layer", lambda ctx: take(ctx.hidden, ctx.text()[0])),
    "visual_positions": Ingredient(
        "(B, N) positions of the visual tokens in the current sequence, from the row's first real token", "token",
        "layer", lambda ctx: ctx.unpadded(ctx.visual)),
    "text_positions": Ingredient(
        "(B, T) positions of the text tokens in the current sequence, from the row's first real token", None,
        "layer", lambda ctx: ctx.unpadded(ctx.text()[0])),
    "vision_received": Ingredient(
        "(B, H, N) attention each patch receives at the vision feature layer, mean over every query row ([CLS] "
        "included)", "key", "vision", lambda ctx: ctx.recorded("vision_received")),
    "vision_received_object": Ingredient(
        "(B, H, N) the same at the vision tower's object layer (`OBJECT_DEPTH` of its depth: CLIP-L's layer 9)",
        "key", "vision", lambda ctx: ctx.recorded("vision_received_object")),
    "grid": Ingredient(
        "(rows, cols) of the image segment being selected from (a selector that takes it selects per segment)",
        None, "layer", lambda ctx: ctx.grid),
    "generator": Ingredient(
        "torch.Generator seeded once per run, on the model's device (only for seeded methods)", None, "run",
        lambda ctx: ctx.generator),
}


# what hook "V" reads from the vision tower; every adapter records the first three (`Adapter.vision_ingredients`)
VISION = ("cls_attn", "vision_keys", "vision_features", "vision_received", "vision_received_object")


def compute(names: set[str] | frozenset[str], ctx: Context) -> dict[str, Any]:
    """The named ingredients for one stage, each computed once (shared work is memoised on `ctx`).

    Raises:
        KeyError: for a name that is not in `INGREDIENTS`.
    """
    return {name: INGREDIENTS[name].compute(ctx) for name in sorted(names)}
