"""Vision need by depth, measured with the mask reference: hide all but `n_keep` random visual tokens from layer K on.

Keeping `n_keep` visual tokens from decoder layer K on is, by the engine's own oracle (DESIGN.md, test
oracle 2), the unpruned model with the dropped visual positions masked out as keys for layers >= K. This
module computes exactly that with per-layer 4-D masks (forward pre-hooks on the decoder layers, a greedy
loop with a `DynamicCache`), so it needs no adapter: it measures a model the engine cannot prune yet (the
deep organism's Gemma 3) as well as the shallow organism. The curve over K says how late the answer still
reads the image; the study's FastV setting is K = 2 (Wen et al. 2025; Chen et al. 2024, FastV).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from tpx.organism import suite


def _layers(model) -> torch.nn.ModuleList:
    return model.model.language_model.layers


@torch.no_grad()
def greedy_keep(model, processor, samples: list, layer: int, n_keep: int = 1, seed: int = 0,
                max_new_tokens: int = 6, batch_size: int = 16) -> list[str]:
    """Greedy answers with only `n_keep` random visual tokens visible as keys from decoder layer `layer` on.

    `layer` = number of decoder layers keeps every token (the unpruned model); `n_keep` >= the visual count
    also does. Draws are per batch row from a `torch.Generator` seeded with (`seed`, batch index).
    """
    n_layers = len(_layers(model))
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer must be in 0..{n_layers} (the decoder's layer count), got {layer}")
    if n_keep < 1:
        raise ValueError(f"n_keep must be >= 1, got {n_keep}")
    tok = processor.tokenizer
    tok.padding_side = "left"
    image_id = int(model.config.image_token_id)
    window = getattr(model.config.text_config, "sliding_window", None)
    state: dict[str, torch.Tensor] = {}

    def pre(module, args, kwargs):
        kwargs["attention_mask"] = state["pruned"]
        return args, kwargs

    handles = [_layers(model)[i].register_forward_pre_hook(pre, with_kwargs=True) for i in range(layer, n_layers)]
    out = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            texts = [processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
                add_generation_prompt=True) for s in chunk]
            enc = processor(images=[s.image for s in chunk], text=texts, return_tensors="pt", padding=True)
            ids, valid = enc["input_ids"], enc["attention_mask"].bool()
            b, t = ids.shape
            if window is not None and t + max_new_tokens > window:
                raise ValueError(f"prompt + answer ({t + max_new_tokens}) exceed the sliding window ({window})")
            visual = ids == image_id
            g = torch.Generator().manual_seed(seed * 1_000_003 + start)
            draw = torch.rand(ids.shape, generator=g).masked_fill(~visual, -1.0)
            kept = draw.topk(min(n_keep, int(visual.sum(1).min())), dim=1).indices
            hidden = visual.clone()
            hidden.scatter_(1, kept, False)  # visual key columns hidden from layer `layer` on
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            full = (causal & valid[:, None, :]) | torch.eye(t, dtype=torch.bool)  # padding rows see themselves
            state["pruned"] = (full & ~hidden[:, None, :])[:, None]
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)
            cache = DynamicCache(config=model.config.text_config)
            res = model(input_ids=ids, pixel_values=enc["pixel_values"], attention_mask=full[:, None],
                        position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
            nxt = res.logits[:, -1].argmax(-1)
            answers, done = [nxt], nxt == tok.eos_token_id
            pos = positions[:, -1:]
            for _ in range(max_new_tokens - 1):
                if bool(done.all()):
                    break
                valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool)], 1)
                hidden = torch.cat([hidden, torch.zeros(b, 1, dtype=torch.bool)], 1)
                pos = pos + 1
                state["pruned"] = (valid & ~hidden)[:, None, None, :]
                res = model(input_ids=nxt[:, None], attention_mask=valid[:, None, None, :], position_ids=pos,
                            cache=cache, use_cache=True, logits_to_keep=1)
                nxt = res.logits[:, -1].argmax(-1).masked_fill(done, tok.eos_token_id)
                answers.append(nxt)
                done = done | (nxt == tok.eos_token_id)
            out += [a.strip() for a in tok.batch_decode(torch.stack(answers, 1), skip_special_tokens=True)]
    finally:
        for h in handles:
            h.remove()
    return out


def profile(model, processor, samples: list, layers: list[int], n_keep: int = 1, seed: int = 0) -> dict[str, Any]:
    """Per-task accuracy unpruned and with `n_keep` visual tokens kept from each K in `layers`.

    Returns `{"unpruned": {task: acc}, "by_layer": {K: {task: acc}}, "relative": {K: r}}` where r is the mean
    over tasks except `blind` (it needs no image) of acc(K), divided by the same mean unpruned.
    """
    def accuracy(answers):
        hits = defaultdict(list)
        for s, a in zip(samples, answers):
            hits[s.task].append(suite.score(s, a))
        return {t: round(float(np.mean(v)), 4) for t, v in hits.items()}

    was = model.training
    model.eval()
    n_layers = len(_layers(model))
    base = accuracy(greedy_keep(model, processor, samples, n_layers, n_keep, seed))
    by_layer = {k: accuracy(greedy_keep(model, processor, samples, k, n_keep, seed)) for k in layers}
    model.train(was)
    vision = [t for t in base if t != "blind"]
    ref = float(np.mean([base[t] for t in vision]))
    relative = {k: round(float(np.mean([a[t] for t in vision])) / ref, 4) if ref > 0 else float("nan")
                for k, a in by_layer.items()}
    return {"unpruned": base, "by_layer": by_layer, "relative": relative, "n_keep": n_keep, "seed": seed}
