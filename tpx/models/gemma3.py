"""Adapter for Gemma 3 (`Gemma3ForConditionalGeneration`: SigLIP tower, pooling projector, Gemma 3 text model).

An image is `mm_tokens_per_image` (256) `<image_soft_token>`s between `<start_of_image>` and `<end_of_image>`:
the SigLIP tower's 64×64 patch grid (896 px, 14-pixel patches) average-pooled 4×4 to a 16×16 grid, then RMS-normed
and projected. Each image is one grid segment. With `token_type_ids` (the processor's output; `generate` passes
them in prefill only) the tokens of each image attend to one another in both directions; the layout says so
(`Layout.bidirectional`) and the engine keeps that block among the kept tokens. The language model is
`gemma3_text.Gemma3Decoder`.

The SigLIP tower has no [CLS] token and no pooling head in Gemma 3 (`vision_use_head=False`): methods that score
patches by [CLS] attention at hook "V" (FasterVLM, VisionZip) are refused on entry, with that reason
(`unavailable_ingredients`); every "E" and "L" method runs.

Reference: Gemma Team, "Gemma 3 Technical Report", arXiv 2503.19786 (SigLIP encoder, 256 soft tokens per image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Gemma3ForConditionalGeneration

from tpx.layout import Layout
from tpx.models.base import image_positions
from tpx.models.gemma3_text import Gemma3Decoder

__all__ = ["Gemma3Adapter", "NO_CLS"]

NO_CLS = ("Gemma 3's SigLIP vision tower has no [CLS] token (and no pooling head) whose attention could score "
          "patches; use a hook 'E' or 'L' method")
NO_RECEIVED = ("tpx does not record the attention patches receive inside Gemma 3's SigLIP tower (HiPrune's anchors and "
               "registers); use a hook 'E' or 'L' method")


class Gemma3Adapter:
    """Engine-facing view of a Hugging Face `Gemma3ForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: the model.

    Raises:
        TypeError: for any other model class.
        ValueError: for an `mm_tokens_per_image` that is not a square.
    """

    model_type = "gemma3"
    supports_renumber = True  # 1-D RoPE positions can be compacted
    unavailable_ingredients = ({name: NO_CLS for name in ("cls_attn", "vision_keys", "vision_features")}
                               | {name: NO_RECEIVED for name in ("vision_received", "vision_received_object")})
    vision_ingredients: frozenset[str] = frozenset()  # nothing recorded from the tower (see above)

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, Gemma3ForConditionalGeneration):
            raise TypeError(f"Gemma3Adapter needs a Gemma3ForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.decoder = Gemma3Decoder(model.model.language_model)
        self.text_model, self.layers = self.decoder.text_model, self.decoder.layers
        self.n_layers = self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        per_image = int(model.config.mm_tokens_per_image)
        self.side = math.isqrt(per_image)
        if self.side * self.side != per_image:
            raise ValueError(f"mm_tokens_per_image={per_image} is not a square grid")

    def nominal_layout(self) -> Layout:
        """One image: one `side × side` grid (16 × 16 in the released models)."""
        return Layout(grids=((self.side, self.side),))

    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """Visual positions and one `side × side` grid per image; bidirectional when the call carries
        `token_type_ids` (which must mark exactly the image tokens).

        Raises:
            ValueError: for no image tokens, rows with different layouts, a count that is not whole images, or
                `token_type_ids` that mark other tokens than the image tokens.
        """
        positions = image_positions(input_ids, self.image_token_id)
        per_image, n = self.side * self.side, positions.shape[1]
        if n % per_image:
            raise ValueError(f"{n} image tokens are not whole images of {per_image} tokens (mm_tokens_per_image)")
        types = call.get("token_type_ids")
        if types is not None and not torch.equal(types.to(input_ids.device) == 1, input_ids == self.image_token_id):
            raise ValueError("token_type_ids must be 1 exactly at the image tokens (the Gemma 3 processor's output)")
        return Layout(grids=((self.side, self.side),) * (n // per_image), positions=positions,
                      bidirectional=types is not None)

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the image tokens in each row of `input_ids`."""
        return image_positions(input_ids, self.image_token_id)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Map pooled SigLIP features `(B, N, Dv)` into the LLM's embedding space: the projector's RMSNorm and
        projection (its 2-D average pooling is what made the N tokens)."""
        proj = self.model.model.multi_modal_projector
        return torch.matmul(proj.mm_soft_emb_norm(vision_features), proj.mm_input_projection_weight).type_as(
            vision_features)

    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Not available: see `NO_CLS` (the engine refuses such stages before installing hooks).

        Raises:
            ValueError: always.
        """
        raise ValueError(f"vision-side (hook 'V') pruning: {NO_CLS}")

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """Not available: see `NO_CLS`.

        Raises:
            ValueError: always.
        """
        raise ValueError(f"vision-side (hook 'V') pruning: {NO_CLS}")
