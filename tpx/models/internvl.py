"""Adapter for InternVL3 (`InternVLForConditionalGeneration`: InternViT tower, pixel shuffle, MLP, Qwen2).

InternVL cuts an image into 448-pixel tiles (dynamic tiling: the tile grid whose aspect ratio is closest to the
image's, up to `max_patches` tiles, plus a thumbnail of the whole image when there is more than one tile). The
tower encodes each tile into 32×32 patches plus a [CLS] token, drops [CLS] ("default" strategy) and
pixel-shuffles every 2×2 block of patches into one token of 4·Dv channels, so each tile reaches the LLM as a
16×16 grid of 256 `<IMG_CONTEXT>` tokens between `<img>` and `</img>`. The layout lists one 16×16 segment per
tile, in the order the processor wrote them (tiles row by row, then the thumbnail); the decoder is Qwen2, which
the shared `LlamaDecoder` reproduces.

Vision-side scores (hook "V"): the tower does have a [CLS] row, but over the 1024 patches, not over the 256
tokens the LLM sees. The adapter pools it to the token grid: a token's score is the mean [CLS] attention of the
four patches pixel shuffle put into it (its key the mean of their keys; its feature the shuffled 4·Dv vector the
projector maps), the grouping read from the model's own `pixel_shuffle`. This is what VisPruner's authors do for
merged tokens (Theia-4869/VisPruner issue #1: "the same merging operation" applied to the attention). Whether
[CLS] attention ranks InternVL's tokens well is a separate, empirical question: FasterVLM issue #4
(Theia-4869/FasterVLM#4) reports [CLS]-attention pruning on InternVL2-26B at 95 % pruning reaching 26.56 % of
the TextVQA score, against 42.89 % for random pruning and 53.75 % for FastV at layer 2.

Reference: Chen et al., "Expanding Performance Boundaries of Open-Source Multimodal Models with Model, Data, and
Test-Time Scaling" (InternVL 2.5), arXiv 2412.05271 (dynamic tiling, pixel unshuffle); Zhu et al., "InternVL3",
arXiv 2504.10479.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import InternVLForConditionalGeneration

from tpx.layout import Layout
from tpx.models.base import image_positions, image_runs
from tpx.models.decoder import LlamaDecoder

__all__ = ["InternVLAdapter", "internvl_cls_attention"]

# language models whose decoder layers `LlamaDecoder` reproduces exactly (InternVL3-1B … 78B use Qwen2.5 / Qwen2)
TEXT_MODELS = ("qwen2", "llama")


class InternVLAdapter:
    """Engine-facing view of a Hugging Face `InternVLForConditionalGeneration` (satisfies `base.Adapter`).

    Args:
        model: the model; its language model must be Qwen2 or Llama (InternVL3; InternVL3.5's Qwen3 has q/k norms
            the shared decoder does not recompute).

    Raises:
        TypeError: for another model class or language model.
    """

    model_type = "internvl"
    supports_renumber = True  # 1-D RoPE positions can be compacted
    # the pooled [CLS] row, keys and shuffled features; HiPrune's received attention at two layers is not recorded
    vision_ingredients = frozenset({"cls_attn", "vision_keys", "vision_features"})

    def __init__(self, model: torch.nn.Module) -> None:
        if not isinstance(model, InternVLForConditionalGeneration):
            raise TypeError(f"InternVLAdapter needs an InternVLForConditionalGeneration, got {type(model).__name__}")
        text_type = model.config.text_config.model_type
        if text_type not in TEXT_MODELS:
            raise TypeError(f"InternVLAdapter supports the language models {', '.join(TEXT_MODELS)}; this model has "
                            f"{text_type!r}, whose attention the shared decoder does not reproduce")
        self.model = model
        self.decoder = LlamaDecoder(model.model.language_model)
        self.text_model, self.layers, self.n_layers = self.decoder.text_model, self.decoder.layers, self.decoder.n_layers
        self.image_token_id = int(model.config.image_token_id)
        cfg, vc = model.config, model.config.vision_config
        self.patches = int(vc.image_size[0]) // int(vc.patch_size[0])   # patches per tile side (32 for 448 / 14)
        self.merge = round(1 / cfg.downsample_ratio)                     # 2: pixel shuffle of 2×2 patches
        self.side = self.patches // self.merge                           # tokens per tile side (16)

    def nominal_layout(self) -> None:
        """None: the number of tiles depends on each image's size."""
        return None

    # ---- layout -------------------------------------------------------------------------------------
    def layout(self, input_ids: torch.Tensor, **call: Any) -> Layout:
        """One `side × side` grid per tile: each image's run of `<IMG_CONTEXT>` tokens holds `side²` tokens per
        tile (`source`: tiles per image of a row).

        Raises:
            ValueError: for no image tokens, rows with different layouts, or a run that is not whole tiles.
        """
        positions = image_positions(input_ids, self.image_token_id)
        runs = image_runs(positions[0])
        if any(not torch.equal(image_runs(p), runs) for p in positions[1:]):
            raise ValueError("every batch row must hold the same image layout (images with the same number of tiles, "
                             "in the same order)")
        per_tile = self.side * self.side
        tiles = [n // per_tile for n in runs.tolist()]
        if any(n % per_tile for n in runs.tolist()):
            raise ValueError(f"image spans of {runs.tolist()} tokens are not whole tiles of {per_tile} "
                             f"({self.side}x{self.side}) tokens")
        return Layout(grids=((self.side, self.side),) * sum(tiles), positions=positions, source=tuple(tiles))

    def visual_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, N)` positions of the `<IMG_CONTEXT>` tokens in each row of `input_ids`."""
        return image_positions(input_ids, self.image_token_id)

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The projector (layer norm, MLP) on pixel-shuffled features `(B, N, 4·Dv)`."""
        return self.model.model.multi_modal_projector(vision_features)

    # ---- vision tower (hook "V") ----------------------------------------------------------------------
    def vision_hooks(self, sink: dict[str, Any], names: frozenset[str] = frozenset()) -> list[Any]:
        """Hooks on the tower's feature layer that record, per tile, into `sink`: `cls_attn` (tiles, H, side²),
        the [CLS] attention pooled over each token's 2×2 patches; `vision_keys` (tiles, side², Dv), their mean
        key; `vision_features` (tiles, side², 4·Dv), the pixel-shuffled features the projector maps.

        Raises:
            ValueError: for a multi-layer feature selection, a strategy other than "default", or a feature layer
                that selects the patch embeddings.
        """
        return internvl_feature_hooks(self.model, sink.update)

    def vision_records(self, sink: dict[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
        """Per-tile records joined per batch row in layout order (the tower encodes the tiles in prompt order):
        `cls_attn` (B, H, N), `vision_keys` (B, N, Dv), `vision_features` (B, N, 4·Dv).

        Raises:
            ValueError: if the tiles the tower saw are not the layout's.
        """
        per_row = sum(layout.source)
        n_tiles = sink["vision_features"].shape[0]
        if n_tiles % per_row:
            raise ValueError(f"the vision tower encoded {n_tiles} tiles, not a whole number of rows of {per_row}")
        out = {k: sink[k].unflatten(0, (-1, per_row)) for k in ("cls_attn", "vision_keys", "vision_features")}
        out["cls_attn"] = out["cls_attn"].permute(0, 2, 1, 3).flatten(2)              # (B, H, tiles · side²)
        out["vision_keys"] = out["vision_keys"].flatten(1, 2)
        out["vision_features"] = out["vision_features"].flatten(1, 2)
        return out


def internvl_feature_hooks(model: torch.nn.Module, record: Callable[[dict[str, torch.Tensor]], Any]) -> list[Any]:
    """Hooks on InternViT's feature layer: `record` receives, per call, the pooled [CLS] attention and keys before
    the layer and the pixel-shuffled features after it (see `InternVLAdapter.vision_hooks`).

    Raises:
        ValueError: as `InternVLAdapter.vision_hooks`.
    """
    cfg = model.config
    if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_select_strategy != "default":
        raise ValueError(
            "vision-side (hook 'V') pruning needs a single vision_feature_layer and the 'default' strategy (the "
            f"[CLS] token dropped before pixel shuffle); got {cfg.vision_feature_layer!r}, "
            f"{cfg.vision_feature_select_strategy!r}"
        )
    tower = model.model.vision_tower
    layers = tower.encoder.layer
    h = cfg.vision_feature_layer % (len(layers) + 1)  # index into hidden_states
    if h == 0:
        raise ValueError("vision_feature_layer selects the patch embeddings: there is no attention to read")
    groups = _shuffle_groups(model)                                      # (side², 4) patch indices per token

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        attn, keys = internvl_cls_attention(module, hidden)              # (n, H, P), (n, P, Dv)
        g = groups.to(attn.device)
        record({"cls_attn": attn[..., g].mean(-1), "vision_keys": keys[:, g].mean(2)})

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if cfg.vision_feature_layer == -1:  # get_image_features reads last_hidden_state, after the tower's norm
            out = tower.layernorm(out)
        patches = out[:, 1:]
        n, p, c = patches.shape
        side = int(p ** 0.5)
        shuffled = model.model.pixel_shuffle(patches.reshape(n, side, side, c), scale_factor=cfg.downsample_ratio)
        record({"vision_features": shuffled.reshape(n, -1, shuffled.shape[-1])})

    layer = layers[h - 1]
    return [layer.register_forward_pre_hook(before, with_kwargs=True),
            layer.register_forward_hook(after, with_kwargs=True)]


def internvl_cls_attention(layer: torch.nn.Module, hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] row of an InternViT layer's attention over the patches, and the patch keys.

    Args:
        layer: an `InternVLVisionLayer` (`layernorm_before`, `attention.{q,k}_proj`, `{q,k}_norm`, `scale`).
        hidden_in: `(n, 1 + P, Dv)` hidden states entering the layer, [CLS] first.

    Returns:
        `(n, H, P)` float32 attention of [CLS] over the P patches (softmax over all 1 + P keys, as in the layer)
        and `(n, P, Dv)` the patches' keys (after the key norm, heads concatenated).
    """
    attn = layer.attention
    x = layer.layernorm_before(hidden_in)
    n, t, _ = x.shape
    q = attn.q_norm(attn.q_proj(x[:, :1])).view(n, 1, attn.num_heads, -1).transpose(1, 2)   # (n, H, 1, hd)
    k_flat = attn.k_norm(attn.k_proj(x))
    k = k_flat.view(n, t, attn.num_heads, -1).transpose(1, 2)                                # (n, H, T, hd)
    probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale).softmax(dim=-1)
    return probs[:, :, 0, 1:], k_flat[:, 1:]


def _shuffle_groups(model: torch.nn.Module) -> torch.Tensor:
    """`(tokens, r²)` indices of the patches pixel shuffle puts into each token, read from the model's own
    `pixel_shuffle` applied to patch indices (so its row/column convention is the model's, not a copy)."""
    cfg = model.config
    vc = cfg.vision_config
    side = int(vc.image_size[0]) // int(vc.patch_size[0])
    index = torch.arange(side * side, dtype=torch.float64).view(1, side, side, 1)
    shuffled = model.model.pixel_shuffle(index, scale_factor=cfg.downsample_ratio)
    return shuffled.reshape(-1, shuffled.shape[-1]).long()

