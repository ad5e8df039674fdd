"""Why the deep organism does not learn `read`: is the digit in its image tokens, and does the answer look at it?

Two measurements on a LLaVA of the organism's geometry (96-px images, 12×12 patches):
- `glyph_probe`: a linear probe (multinomial logistic regression) from the tokens at the glyph's patches to the
  digit, on the tower's output or after the projector: whether the information reaches the language model;
- `answer_attention`: per decoder layer, the attention the last prompt position (where the answer is read) pays to
  the visual tokens, and the share of that on the glyph's patches, beside the glyph's share of the image's area:
  a share at the area share means the answer does not find the glyph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tpx.organism import batch as B, draw, suite


def read_scenes(split: str, n: int, stream: int = 1234) -> list[draw.Scene]:
    """`n` scenes of the `read` kind (one digit glyph) of `split`, a pure function of its arguments."""
    return [suite.scene_for("read", np.random.default_rng([suite.SPLITS[split], stream, i])) for i in range(n)]


@torch.no_grad()
def _glyph_tokens(model: Any, scenes: list[draw.Scene], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    hidden = model.model.vision_tower(B.pixels([s.image for s in scenes]).to(device), output_hidden_states=True)
    tokens = hidden.hidden_states[model.config.vision_feature_layer][:, 1:]
    if stage == "projector":
        tokens = model.model.multi_modal_projector(tokens)
    char = B.patch_labels(scenes)["char"].to(device)
    return tokens[char > 0].float(), char[char > 0]


def glyph_probe(model: Any, stage: str = "projector", n_train: int = 240, n_test: int = 120,
                l2: float = 1e-3) -> float:
    """Held-out accuracy of a linear probe from the image tokens at glyph patches to the glyph's character.

    Args:
        stage: "tower" (the tower's selected layer, [CLS] dropped) or "projector" (what the LM receives).
        n_train / n_test: `read` scenes of the train / val split behind the probe.

    Raises:
        ValueError: for another `stage`.
    """
    if stage not in ("tower", "projector"):
        raise ValueError(f"stage must be 'tower' or 'projector', got {stage!r}")
    x_train, y_train = _glyph_tokens(model, read_scenes("train", n_train), stage)
    x_test, y_test = _glyph_tokens(model, read_scenes("val", n_test), stage)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(x_train.shape[1], int(y_train.max()) + 1, device=x_train.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(x_train @ w, y_train) + l2 * (w ** 2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return float(((x_test @ w).argmax(1) == y_test).float().mean())


def _glyph_patches(sample: suite.Sample) -> torch.Tensor:
    """(GRID², ) bool: the patches the glyph's box touches."""
    x0, y0, x1, y1 = sample.meta["evidence"][0]
    edges = torch.arange(draw.GRID) * draw.PATCH
    rows = (edges < y1) & (edges + draw.PATCH > y0)
    cols = (edges < x1) & (edges + draw.PATCH > x0)
    return (rows[:, None] & cols[None, :]).flatten()


@torch.no_grad()
def answer_attention(model: Any, processor: Any, n: int = 16, split: str = "val") -> pd.DataFrame:
    """Per decoder layer: the attention of the last prompt position on the visual tokens (`visual`, summed over
    them, averaged over heads and samples), the share of it on the glyph's patches (`glyph_share`) and the glyph's
    share of the patches (`area_share`), on the first `n` `read` samples of `split`, through the processor as the
    model is asked. Eager attention for the call; the model's implementation is restored."""
    from tpx.ask import prompt

    samples = [suite.make_sample("read", split, i) for i in range(n)]
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=[s.image for s in samples], text=[prompt(processor, s.question) for s in samples],
                       return_tensors="pt", padding=True).to(next(model.parameters()).device)
    was = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(was)
    visual = inputs["input_ids"] == model.config.image_token_id
    glyph = torch.stack([_glyph_patches(s) for s in samples]).to(visual.device)
    rows = []
    for layer, attn in enumerate(out.attentions):
        last = attn[:, :, -1, :].float().mean(1)                      # (n, S): heads averaged
        on_image = last[visual].view(len(samples), -1)                # (n, GRID²) in raster order
        share = (on_image * glyph).sum(1) / on_image.sum(1)
        rows.append({"layer": layer, "visual": float(on_image.sum(1).mean()), "glyph_share": float(share.mean()),
                     "area_share": float(glyph.float().mean())})
    return pd.DataFrame(rows)
