"""Test oracles: the unpruned model with dropped positions masked out (and merged tokens substituted).

Masking dropped prompt positions for every layer ≥ K is the exact semantic equivalent of removing them; it
is slow and saves nothing, which is why it lives here and not in tpx. Multi-stage methods mask with each
stage's kept set from that stage's layer on; merged tokens (pooling, VisionZip, recycling) are substituted
into the hidden states at their representatives' positions as they enter the stage layer. Every model family
uses these (tests/test_engine.py for LLaVA, tests/models/test_adapters.py for the others).

Two rules make "masked out" mean "removed" in families that have them. Sliding-window layers count the window in
kept tokens (a pruned layer sees the shorter sequence, and its cache keeps the last `window − 1` of those); and
with `token_type_ids` (Gemma 3) the kept tokens of one image still attend to one another in both directions:
AND(window, OR(causal, image block)).
"""

from __future__ import annotations

import functools

import torch

from tpx import select


def generate_positions(mask2d: torch.Tensor) -> torch.Tensor:
    # what generate() uses: cumulative count of real tokens, padding at 1
    return (mask2d.long().cumsum(-1) - 1).masked_fill(mask2d == 0, 1)


def spy(selector, sink: list):
    """Wrap a selector so every output is appended to `sink` (signature preserved for the engine)."""

    @functools.wraps(selector)
    def wrapped(*args, **kwargs):
        out = selector(*args, **kwargs)
        sink.append(out)
        return out

    return wrapped


class MaskReference:
    """Hooks on an unpruned model reproducing a pruned run by masking.

    Args:
        model: the LLaVA model.
        stages: list of `(layer, kept (B, L_s), subs)` with `subs = (positions (B, M), features (B, M, D))` or
            None: from `layer` on, only `kept` prompt positions may be attended to; `subs` replace the hidden
            states at those positions as they enter `layer`.
        prompt_len: length of the prompt.
        blocks: `(B, prompt_len)` bidirectional image block of each prompt position (−1: causal), or None.
    """

    def __init__(self, model, stages, prompt_len, blocks=None):
        self.model, self.stages, self.prompt_len, self.blocks = model, stages, prompt_len, blocks
        text = model.config.get_text_config()
        types = getattr(text, "layer_types", None)
        window = getattr(text, "sliding_window", None)
        self.window = {i: window for i in range(len(model.model.language_model.layers))
                       if window is not None and (types is None or types[i] == "sliding_attention")}
        self.mask2d = None
        layers = model.model.language_model.layers
        self.handles = [model.register_forward_pre_hook(self._top, with_kwargs=True)]
        for i in range(stages[0][0], len(layers)):
            self.handles.append(layers[i].register_forward_pre_hook(functools.partial(self._layer, i), with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()

    def _top(self, module, args, kwargs):
        self.mask2d = kwargs.get("attention_mask")

    def _layer(self, idx, module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        current = [s for s in self.stages if s[0] <= idx][-1]
        layer, kept, subs = current
        if layer == idx and subs is not None:
            pos, feats = subs
            hs = hs.scatter(1, pos[..., None].expand(-1, -1, hs.shape[-1]), feats.to(hs.dtype))
        b, kv, _ = hs.shape  # no cache in the reference loop
        keep = torch.ones(b, kv, dtype=torch.bool)
        keep[:, : self.prompt_len] = False
        keep[:, : self.prompt_len] = keep[:, : self.prompt_len].scatter(1, kept, True)
        allowed_k = keep.clone()
        if self.mask2d is not None:
            allowed_k &= self.mask2d[:, :kv].bool()
        idx_ = torch.arange(kv)
        rule = (idx_[None, :] <= idx_[:, None])[None]                            # (1 or B, q, k) causal
        if self.blocks is not None:
            blocks = torch.cat([self.blocks, torch.full((b, kv - self.prompt_len), -1)], dim=1)
            rule = rule | ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))
        if idx in self.window:  # the window counts kept tokens: rank in the shortened sequence
            rank = keep.long().cumsum(1)
            rule = rule & (rank[:, None, :] > rank[:, :, None] - self.window[idx])
        allowed = ((rule & allowed_k[:, None, :]) | torch.eye(kv, dtype=torch.bool)[None])[:, None]
        if self.model.config.text_config._attn_implementation == "eager":
            mask = torch.zeros(allowed.shape, dtype=hs.dtype).masked_fill(~allowed, torch.finfo(hs.dtype).min)
        else:
            mask = allowed
        kwargs["attention_mask"] = mask
        if args:
            return (hs, *args[1:]), kwargs
        kwargs["hidden_states"] = hs
        return args, kwargs


def image_blocks(token_type_ids: torch.Tensor) -> torch.Tensor:
    """`(B, L)` block of each position: runs of image tokens (`token_type_ids == 1`) numbered 0, 1, … per row, −1
    for the others."""
    image = token_type_ids == 1
    starts = image & ~torch.cat([torch.zeros_like(image[:, :1]), image[:, :-1]], dim=1)
    return torch.where(image, starts.long().cumsum(1) - 1, -1)


def reference_stages(run, outputs: list, visual: torch.Tensor, entries: list | None = None,
                     stage_positions: dict | None = None) -> list:
    """`MaskReference` stages of a pruned run's prefill from its selectors' outputs (`spy`, in call order).

    Per stage: its layer, the positions layers ≥ it attended to, and the merged tokens to substitute there
    (representatives' positions, features projected into the LLM when they are vision features). A stage that
    selects per image segment called its selector once per segment; those outputs are joined with the
    segments' offsets.

    Args:
        run: the `tpx.engine.Run` of one prefill. outputs: what the spied selectors returned during it.
        visual: `(B, N)` positions of the prunable visual tokens (`tpx.models.layout(model, inputs).positions`).
        entries, stage_positions: the trace entries and `run.stage_positions` of the prefill to reproduce
            (default: the run's whole trace and its last prefill; a run with several prefills, e.g. two turns of
            a conversation, passes each one's).
    """
    entries = run.trace if entries is None else entries
    stage_positions = run.stage_positions if stage_positions is None else stage_positions
    stages, prev, i = [], None, 0
    for entry, stage in zip(entries, run.plan.stages, strict=True):
        grids = entry.grids
        per_segment = stage.per_segment and (len(grids) > 1 or "grid" in stage.needs.selector)
        sizes = [r * c for r, c in grids]
        shares = select.split_budget(entry.n_keep, sizes) if per_segment and len(grids) > 1 else [entry.n_keep]
        starts = [sum(sizes[:k]) for k in range(len(shares))]
        starts = [s for s, share in zip(starts, shares, strict=True) if share]  # segments left nothing: no call
        count = len(starts)
        outs, i = outputs[i:i + count], i + count
        subs = None
        if isinstance(outs[0], select.Merged):
            index = torch.cat([o.index + start for o, start in zip(outs, starts, strict=True)], dim=1)
            features = torch.cat([o.features for o in outs], dim=1)
            if stage.hook == "V":  # merged vision features (whatever their width): the engine projects them
                features = run.adapter.project(features)
            current = visual if prev is None else visual.gather(1, prev.kept)
            subs = (current.gather(1, index), features)
        stages.append((entry.layer, stage_positions[entry.layer], subs))
        prev = entry
    return stages


def reference_generate(model, inputs, ref: MaskReference, n_new: int, positions: bool = True):
    """Greedy decoding without a cache, recomputing the whole sequence with the reference hooks each step.

    Args:
        positions: pass the position ids `generate()` uses (1-D RoPE); False for M-RoPE models, which compute
            their 3-D positions from the inputs (and `mm_token_type_ids`, extended here step by step).

    Returns:
        (tokens (B, n_new), logits list of (B, V)).
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    types = inputs.get("mm_token_type_ids")
    images = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    tokens, logits = [], []
    for _ in range(n_new):
        step_inputs = dict(images)
        if positions:
            step_inputs["position_ids"] = generate_positions(mask)
        if types is not None:
            step_inputs["mm_token_type_ids"] = types
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **step_inputs)
        step = out.logits[:, -1]
        nxt = step.argmax(-1, keepdim=True)
        logits.append(step)
        tokens.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        if types is not None:
            types = torch.cat([types, torch.zeros_like(nxt, dtype=types.dtype)], 1)
    return torch.cat(tokens, 1), logits


# ---- the oracles, as every suite runs them -------------------------------------------------------------

def greedy(model, inputs, n_new: int):
    """`generate` greedily: the new tokens `(B, n_new)` and each step's logits."""
    out = model.generate(**inputs, max_new_tokens=n_new, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
    return out.sequences[:, inputs["input_ids"].shape[1]:], out.logits


def check_retention_one(model, inputs, method, hook: str, n_new: int):
    """Oracle 1: at retention 1.0 the pruned model is the unpruned one, bit for bit (logits, greedy tokens,
    every decode step; `n_new=0`: the prefill logits only). Returns the run."""
    import tpx

    with torch.no_grad():
        ref_logits = model(**inputs).logits
        ref_tokens, ref_steps = greedy(model, inputs, n_new) if n_new else (None, [])
        with tpx.pruning(model, method, retention=1.0, hook=hook, seed=3) as run:
            logits = model(**inputs).logits
            tokens, steps = greedy(model, inputs, n_new) if n_new else (None, [])
    assert run.trace and all(e.n_keep == e.n_visual for e in run.trace)
    assert torch.equal(logits, ref_logits) and (n_new == 0 or torch.equal(tokens, ref_tokens))
    for a, b in zip(steps, ref_steps, strict=True):
        assert torch.equal(a, b)
    return run


def check_mask_reference(model, inputs, method, hook: str, retention: float, n_new: int, positions: bool = True,
                         atol: float = 1e-5):
    """Oracle 2: the pruned model equals the unpruned one with the dropped positions masked (merged tokens
    substituted) — logits ≤ 1e-5 and the same greedy tokens, prefill and every decode step (`n_new=0`: the
    prefill logits only, for models too large to decode without a cache).

    Args:
        method: a `Method` (its selector is spied on to read the merged tokens) or a registry name.
        positions: 1-D RoPE: give the forward the position ids `generate()` uses, so both prefills see the same
            inputs (key norms depend on them); False for M-RoPE models, which derive them from the inputs.
        atol: logit tolerance; 1e-5 for tiny random models, more for a trained model whose float32 noise between
            two exact kernels (SDPA vs eager) is larger (the deep organism: 3.7e-5 at logits up to 32).

    Returns:
        The run of the pruned forward.
    """
    import dataclasses

    import tpx
    import tpx.models

    method = tpx.get_method(method)
    outputs: list = []
    spied = dataclasses.replace(method, selector=spy(method.selector, outputs))
    extra = {"position_ids": generate_positions(inputs["attention_mask"])} if positions else {}
    with torch.no_grad():
        with tpx.pruning(model, spied, retention=retention, hook=hook, seed=7) as run:
            logits = model(**inputs, **extra).logits
        in_forward = len(outputs)  # the forward's prefill, not generate's
        tokens, steps, ref_tokens, ref_steps = None, [], None, []
        if n_new:
            with tpx.pruning(model, spied, retention=retention, hook=hook, seed=7) as again:
                tokens, steps = greedy(model, inputs, n_new)
            assert torch.equal(again.kept_positions, run.kept_positions)  # same seed, same prefill: same selection
        kept = run.kept_positions
        visual = tpx.models.layout(model, inputs).positions
        stages = reference_stages(run, outputs[:in_forward], visual)
        types = inputs.get("token_type_ids")
        ref = MaskReference(model, stages, inputs["input_ids"].shape[1],
                            blocks=None if types is None else image_blocks(types))
        try:
            full = model(**inputs, **extra).logits
            if n_new:
                ref_tokens, ref_steps = reference_generate(model, inputs, ref, n_new, positions=positions)
        finally:
            ref.remove()
    entry = run.trace[-1]
    assert logits.shape[1] == inputs["input_ids"].shape[1] - entry.n_visual + entry.n_keep
    ref_logits = full.gather(1, kept[..., None].expand(-1, -1, full.shape[-1]))
    real = inputs["attention_mask"].gather(1, kept).bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=atol, rtol=0)
    assert n_new == 0 or torch.equal(tokens, ref_tokens)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    return run
