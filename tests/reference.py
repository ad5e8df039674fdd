"""Test oracles: the unpruned model with dropped positions masked out (and merged tokens substituted).

Masking dropped prompt positions for every layer ≥ K is the exact semantic equivalent of removing them; it
is slow and saves nothing, which is why it lives here and not in tpx.
"""

from __future__ import annotations

import torch

from tpx import select


def _positions(mask2d: torch.Tensor) -> torch.Tensor:
    # what generate() uses: cumulative count of real tokens, padding at 1
    return (mask2d.long().cumsum(-1) - 1).masked_fill(mask2d == 0, 1)


class MaskReference:
    """Hooks on an unpruned model: layers ≥ K may not attend to dropped prompt positions.

    Args:
        model: the LLaVA model.
        layer: K.
        kept: `(B, L')` prompt positions that survive (from `run.kept_positions`).
        prompt_len: length L of the prompt.
        merge_grid: if set, substitute 2-D pooled features at the representatives at layer K's input
            (pooling), computed from the hidden states entering layer K.
        visual: `(B, N)` visual positions (needed with `merge_grid`).
    """

    def __init__(self, model, layer, kept, prompt_len, merge_grid=None, visual=None, n_keep=None):
        self.model, self.layer, self.kept, self.prompt_len = model, layer, kept, prompt_len
        self.merge_grid, self.visual, self.n_keep = merge_grid, visual, n_keep
        self.mask2d = None
        layers = model.model.language_model.layers
        self.handles = [model.register_forward_pre_hook(self._top, with_kwargs=True)]
        self.handles.append(layers[layer].register_forward_pre_hook(self._merge, with_kwargs=True))
        for lay in layers[layer:]:
            self.handles.append(lay.register_forward_pre_hook(self._mask, with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()

    def _top(self, module, args, kwargs):
        self.mask2d = kwargs.get("attention_mask")

    def _merge(self, module, args, kwargs):
        if self.merge_grid is None:
            return None
        hs = args[0] if args else kwargs["hidden_states"]
        d = hs.shape[-1]
        feats = hs.gather(1, self.visual[..., None].expand(-1, -1, d))
        merged = select.pool2d(feats, self.n_keep, self.merge_grid)
        slots = self.visual.gather(1, merged.index)
        hs = hs.scatter(1, slots[..., None].expand(-1, -1, d), merged.features)
        return ((hs, *args[1:]) if args else args), (kwargs if args else {**kwargs, "hidden_states": hs})

    def _mask(self, module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        b, q, _ = hs.shape
        kv = q  # no cache in the reference loop
        allowed_k = torch.ones(b, kv, dtype=torch.bool)
        allowed_k[:, : self.prompt_len] = False
        allowed_k[:, : self.prompt_len] = allowed_k[:, : self.prompt_len].scatter(1, self.kept, True)
        if self.mask2d is not None:
            allowed_k &= self.mask2d[:, :kv].bool()
        idx = torch.arange(kv)
        causal = idx[None, :] <= idx[:, None]
        allowed = (causal[None] & allowed_k[:, None, :]) | torch.eye(kv, dtype=torch.bool)[None]
        allowed = allowed[:, None]
        if self.model.config.text_config._attn_implementation == "eager":
            mask = torch.zeros(allowed.shape, dtype=hs.dtype).masked_fill(~allowed, torch.finfo(hs.dtype).min)
        else:
            mask = allowed
        kwargs["attention_mask"] = mask
        return args, kwargs


def reference_generate(model, inputs, ref: MaskReference, n_new: int):
    """Greedy decoding without a cache, recomputing the whole sequence with the reference hooks each step.

    Returns:
        (tokens (B, n_new), logits list of (B, V)).
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    tokens, logits = [], []
    for _ in range(n_new):
        out = model(
            input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=mask,
            position_ids=_positions(mask), use_cache=False,
        )
        step = out.logits[:, -1]
        nxt = step.argmax(-1, keepdim=True)
        logits.append(step)
        tokens.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(tokens, 1), logits
