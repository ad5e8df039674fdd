"""The pruning engine: forward pre-hooks that remove visual tokens inside a Hugging Face MLLM.

`with tpx.pruning(model, "fastv", retention=0.25) as run: model.generate(**inputs)` installs hooks at the
method's hook point and removes them on exit, also when the body raises. In prefill, the hook on decoder
layer K gathers the kept rows of the hidden states, their position ids and rotary embeddings, and rebuilds
the causal mask from layer K's own cache; later layers reuse what layer K computed, and every decode step
rebuilds only the masks of pruned layers (their caches are shorter). Hook "E" is the same surgery before
layer 0, on the input embeddings, so every layer sees the short sequence. The engine knows no method by
name: it hands the method's scorer and selector the tensors their argument names ask for.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tpx import select
from tpx.methods import Method, get_method

__all__ = ["INGREDIENTS", "Run", "TraceEntry", "pruning"]

log = logging.getLogger(__name__)

POSITIONS = ("keep", "renumber")
ATTENTION = ("rows", "maps")
# what a scorer or selector may ask for by argument name (besides the method's own parameters)
INGREDIENTS = {
    "attn_last": "(B, H, N) attention of the last prompt token over the visual tokens, layer K−1",
    "attn_last_visual": "(B, H, N) attention of the last visual token over the visual tokens, layer K−1",
    "features": "(B, N, D) hidden states of the visual tokens entering the pruned layer",
    "scores": "(B, N) output of the scorer",
    "n_keep": "int, tokens to keep at this stage",
    "grid": "(rows, cols) of the visual grid",
    "generator": "torch.Generator seeded once per run, on the model's device",
}


@dataclass
class TraceEntry:
    """What one pruning stage of one forward call did, per batch row.

    Attributes:
        method, hook, layer, stage: which method acted where (`layer` = K, 0 for hook "E").
        params: the method's parameters, retention, seed and positions mode.
        n_visual: visual tokens N in the image span (before any pruning).
        n_keep: visual tokens kept by this stage.
        kept: `(B, n_keep)` sorted indices into the visual span of the kept (or representative) tokens.
        grid_rc: `(B, n_keep, 2)` their (row, col) on the visual grid, row 0 at the top.
        scores: `(B, n_visual)` float scores (NaN where a token was already gone), or None if unscored.
        grid: `(rows, cols)` of the visual grid.
    """

    method: str
    hook: str
    layer: int
    stage: int
    params: dict[str, Any]
    n_visual: int
    n_keep: int
    kept: torch.Tensor
    grid_rc: torch.Tensor
    scores: torch.Tensor | None
    grid: tuple[int, int]


class Run:
    """State of one `tpx.pruning` context: hook handles, per-call bookkeeping and the trace.

    Attributes:
        method: the `Method` being applied.
        trace: one `TraceEntry` per pruning stage of every prefill call, in call order.
        kept_positions: `(B, L')` original sequence positions that survive all stages of the last prefill.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: Method,
        retention: float,
        hook: str,
        layers: tuple[int, ...],
        seed: int,
        positions: str,
        attention: str,
        params: dict[str, Any],
    ) -> None:
        from tpx.models import adapter_for

        self.model = model
        self.adapter = adapter_for(model)
        self.method = method
        self.retention = retention
        self.hook = hook
        self.layers = layers
        self.seed = seed
        self.positions = positions
        self.attention = attention
        self.params = params
        self.trace: list[TraceEntry] = []
        self.kept_positions: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._generator: torch.Generator | None = None
        self._prefill = False
        self._mask2d: torch.Tensor | None = None
        self._stages: dict[int, dict[str, Any]] = {}
        self._stash: dict[int, Any] = {}
        self._cur: dict[str, Any] = {}

    # ---- installation -------------------------------------------------------------------------------
    def _install(self) -> None:
        layers = self.adapter.layers
        self._handles.append(self.model.register_forward_pre_hook(self._on_call, with_kwargs=True))
        score_layers = {k - 1 for k in self.layers} if self.method.needs_attention else set()
        for i in sorted(score_layers | set(range(self.layers[0], self.adapter.n_layers))):
            hook = _LayerHook(self, i, stash=i in score_layers)
            self._handles.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        if self.attention == "maps":
            for i in score_layers:
                cap = _MapCapture(self, i)
                self._handles.append(layers[i].self_attn.register_forward_hook(cap))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stash.clear()
        self._cur = {}

    # ---- per call -----------------------------------------------------------------------------------
    def _on_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.adapter.check_cache(cache)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise ValueError(f"tpx.pruning needs a 2-D attention_mask (batch, length), got shape {tuple(mask.shape)}")
        self._mask2d = mask
        self._prefill = cache is None or cache.get_seq_length() == 0
        if not self._prefill:
            return
        if input_ids is None:
            raise ValueError("tpx.pruning needs input_ids to find the image tokens; inputs_embeds-only calls are not supported")
        if mask is not None and not bool(mask[:, -1].all()):
            raise ValueError("batches must be left-padded (tokenizer.padding_side='left'): the last position of every row must be a real token")
        visual = self.adapter.visual_positions(input_ids)
        b, length = input_ids.shape
        self._n_visual = visual.shape[1]
        self._grid = self.adapter.grid(self._n_visual)
        self._length = length
        self._is_visual = torch.zeros(b, length, dtype=torch.bool, device=input_ids.device).scatter(1, visual, True)
        vis_index = torch.arange(self._n_visual, device=input_ids.device).expand(b, -1)
        self._vis_index = torch.full((b, length), -1, dtype=torch.long, device=input_ids.device).scatter(1, visual, vis_index)
        self._budgets = [select.budget(self.retention, self._n_visual)]
        self._seq = torch.arange(length, device=input_ids.device).expand(b, -1)
        self._seq_mask2d = mask
        self._pos0 = None
        self._stages = {}
        self._stash = {}
        self._cur = {}

    def _layer(self, idx: int, args: tuple, kwargs: dict, stash: bool) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        if idx in self.layers:
            if self._prefill:
                hidden = self._prune(idx, hidden, kwargs)
            else:
                self._cur = self._decode_kwargs(idx, hidden, kwargs)
        if idx >= self.layers[0]:
            kwargs.update(self._cur)
        if stash and self._prefill:
            self._stash[idx] = (hidden, kwargs["position_embeddings"], self._seq_mask2d)
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    # ---- prefill: one pruning stage ------------------------------------------------------------------
    def _prune(self, idx: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        stage = self.layers.index(idx)
        n_keep = self._budgets[stage]
        b, length, d = hidden.shape
        seq = self._seq
        vis_mask = self._is_visual.gather(1, seq)                                 # (B, L) visual in current seq
        n_cur = self._n_visual if stage == 0 else self.trace[-1].n_keep
        vis_cur = _true_positions(vis_mask, n_cur)                                 # (B, n_cur)
        vis_orig = self._vis_index.gather(1, seq.gather(1, vis_cur))              # (B, n_cur) into visual span
        with torch.no_grad():
            scores, result = self._score_and_select(idx, hidden, vis_cur, n_cur, n_keep)
        index, merged = (result.index, result.features) if isinstance(result, select.Merged) else (result, None)
        keep_mask = (~vis_mask).scatter(1, vis_cur.gather(1, index), True)
        keep = _true_positions(keep_mask, length - n_cur + n_keep)                 # (B, L') sorted
        new_hidden = hidden.gather(1, keep[..., None].expand(-1, -1, d))
        if merged is not None:
            slots = _true_positions(vis_mask.gather(1, keep), n_keep)
            new_hidden = new_hidden.scatter(1, slots[..., None].expand(-1, -1, d), merged.to(new_hidden.dtype))
        new_seq = seq.gather(1, keep)
        position_ids = kwargs["position_ids"].expand(b, -1)
        if self._pos0 is None:
            self._pos0 = position_ids
        cos, sin = kwargs["position_embeddings"]
        gidx = keep[..., None].expand(-1, -1, cos.shape[-1])
        pos = position_ids.gather(1, keep)
        pe = (cos.expand(b, -1, -1).gather(1, gidx), sin.expand(b, -1, -1).gather(1, gidx))
        shift = None
        if self.positions == "renumber":
            kept_full = torch.zeros_like(self._is_visual).scatter(1, new_seq, True)
            dropped_before = (~kept_full).long().cumsum(1)
            pos = self._pos0.gather(1, new_seq) - dropped_before.gather(1, new_seq)
            shift = (~kept_full).long().sum(1, keepdim=True)
            pe = self.adapter.rotary(new_hidden, pos)
        self._seq, self.kept_positions = new_seq, new_seq
        self._seq_mask2d = None if self._mask2d is None else self._mask2d[:, : self._length].gather(1, new_seq)
        mask = self.adapter.causal_mask(new_hidden, self._seq_mask2d, kwargs.get("cache"), idx)
        self._cur = {"attention_mask": mask, "position_ids": pos, "position_embeddings": pe}
        self._stages[idx] = {"seq": new_seq, "shift": shift}
        self._record(idx, stage, vis_orig, index, scores, n_keep)
        return new_hidden

    def _score_and_select(self, idx: int, hidden: torch.Tensor, vis_cur: torch.Tensor, n_cur: int, n_keep: int) -> tuple:
        if self._generator is None:
            self._generator = torch.Generator(device=hidden.device).manual_seed(self.seed)
        given: dict[str, Any] = dict(self.params, n_keep=n_keep, generator=self._generator)
        given["features"] = hidden.gather(1, vis_cur[..., None].expand(-1, -1, hidden.shape[-1]))
        if n_cur == self._n_visual:
            given["grid"] = self._grid
        method = self.method
        wanted = set(method.ingredients) | set(inspect.signature(method.selector).parameters)
        for name in ("attn_last", "attn_last_visual"):
            if name in wanted:
                given[name] = self._attention(idx - 1, name, vis_cur)
        scores = None
        if method.scorer is not None:
            scores = method.scorer(**_pick(method.scorer, given))
            given["scores"] = scores
        return scores, method.selector(**_pick(method.selector, given))

    def _attention(self, score_layer: int, name: str, vis_cur: torch.Tensor) -> torch.Tensor:
        hidden, pe, mask2d = self._stash.pop(score_layer) if self.attention == "rows" else (None, None, None)
        b, n = vis_cur.shape
        if name == "attn_last":
            rows = torch.full((b, 1), self._seq.shape[1] - 1, device=vis_cur.device, dtype=torch.long)
        else:
            rows = vis_cur[:, -1:]
        if self.attention == "maps":
            maps = self._stash.pop(("maps", score_layer))                               # (B, H, T, T)
            att = maps.gather(2, rows[:, None, :, None].expand(-1, maps.shape[1], -1, maps.shape[3]))
        else:
            att = self.adapter.attention_rows(score_layer, hidden, pe, rows, mask2d)     # (B, H, 1, T)
        att = att[:, :, 0]
        return att.gather(2, vis_cur[:, None, :].expand(-1, att.shape[1], -1))

    def _record(self, idx: int, stage: int, vis_orig: torch.Tensor, index: torch.Tensor, scores: torch.Tensor | None, n_keep: int) -> None:
        kept = vis_orig.gather(1, index)
        cols = self._grid[1]
        full_scores = None
        if scores is not None:
            full_scores = torch.full((kept.shape[0], self._n_visual), float("nan"), device=scores.device)
            full_scores = full_scores.scatter(1, vis_orig, scores.float()).detach()
        params = dict(self.params, retention=self.retention, seed=self.seed, positions=self.positions)
        self.trace.append(TraceEntry(
            method=self.method.name, hook=self.hook, layer=idx, stage=stage, params=params,
            n_visual=self._n_visual, n_keep=n_keep, kept=kept.detach(),
            grid_rc=torch.stack([kept // cols, kept % cols], dim=-1).detach(), scores=full_scores, grid=self._grid,
        ))

    # ---- decode -------------------------------------------------------------------------------------
    def _decode_kwargs(self, idx: int, hidden: torch.Tensor, kwargs: dict) -> dict[str, Any]:
        if idx not in self._stages:
            raise RuntimeError("a decode step reached a pruned layer before any prefill inside this tpx.pruning context")
        stage = self._stages[idx]
        mask2d = None
        if self._mask2d is not None:
            m = self._mask2d
            mask2d = torch.cat([m[:, : self._length].gather(1, stage["seq"]), m[:, self._length:]], dim=1)
        cur: dict[str, Any] = {"attention_mask": self.adapter.causal_mask(hidden, mask2d, kwargs.get("cache"), idx)}
        if stage["shift"] is not None:
            pos = kwargs["position_ids"].expand(hidden.shape[0], -1) - stage["shift"]
            cur.update(position_ids=pos, position_embeddings=self.adapter.rotary(hidden, pos))
        return cur


class _LayerHook:
    """Forward pre-hook of one decoder layer; delegates to its `Run`."""

    def __init__(self, run: Run, idx: int, stash: bool) -> None:
        self.run, self.idx, self.stash = run, idx, stash

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return self.run._layer(self.idx, args, kwargs, self.stash)


class _MapCapture:
    """Forward hook on a self-attention module that keeps its eager attention map (the slow FastV way)."""

    def __init__(self, run: Run, idx: int) -> None:
        self.run, self.idx = run, idx

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.run._prefill and output[1] is not None:
            self.run._stash[("maps", self.idx)] = output[1]


def _true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending positions of the `count` True entries of each row of a `(B, L)` bool mask, without a host sync."""
    return mask.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :count]


def _pick(fn: Any, given: dict[str, Any]) -> dict[str, Any]:
    return {k: given[k] for k in inspect.signature(fn).parameters if k in given}


@contextlib.contextmanager
def pruning(
    model: torch.nn.Module,
    method: str | Method,
    *,
    retention: float,
    layer: int | None = None,
    hook: Literal["V", "E", "L"] | None = None,
    seed: int = 0,
    positions: Literal["keep", "renumber"] = "keep",
    attention: Literal["rows", "maps"] = "rows",
    **params: Any,
) -> Iterator[Run]:
    """Prune visual tokens of `model` inside the `with` block; hooks are removed on exit, even on error.

    Args:
        model: a supported Hugging Face MLLM (see `tpx.models.ADAPTERS`).
        method: a registry name (`tpx.list_methods()`) or a `Method`.
        retention: kept share of visual tokens, in (0, 1]; `n_keep = select.budget(retention, N)`.
        layer: decoder layer K for hook "L" (the first layer that sees the pruned sequence); default: the
            method's. Not allowed for hook "E", which acts before layer 0.
        hook: hook point, one of the method's `hooks`; default: its first.
        seed: seed of the run's generator (random methods draw from it, in call order).
        positions: "keep" (kept tokens keep their original position ids) or "renumber" (compacted).
        attention: "rows" (recompute the needed attention rows; the model keeps SDPA) or "maps" (read the
            eager attention maps of layer K−1, the original FastV way; needs an eager model).
        **params: the method's parameters (`get_method(name).defaults` lists them).

    Yields:
        The `Run`, whose `trace` records what every prefill kept.

    Raises:
        ValueError: for a parameter outside its allowed values (named in the message).
        TypeError: for an unsupported model.
    """
    run = _make_run(model, method, retention, layer, hook, seed, positions, attention, params)
    run._install()
    try:
        yield run
    finally:
        run._remove()


def _make_run(model, method, retention, layer, hook, seed, positions, attention, params) -> Run:
    from tpx.models import adapter_for

    method = get_method(method)
    retention = select.check_retention(retention)
    hook = hook or method.hook
    if hook not in method.hooks:
        raise ValueError(f"hook={hook!r} is not supported by {method.name!r}; supported: {', '.join(method.hooks)}")
    if hook == "V":
        raise ValueError(f"hook 'V' is not supported by this engine yet (method {method.name!r})")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    unknown = sorted(set(params) - set(method.defaults))
    if unknown:
        allowed = ", ".join(sorted(method.defaults)) or "none"
        raise ValueError(f"unknown parameter(s) {unknown} for method {method.name!r}; allowed: {allowed}")
    adapter = adapter_for(model)
    layers = _stage_layers(method, hook, layer, adapter.n_layers)
    if attention == "maps" and adapter.attn_implementation != "eager":
        raise ValueError(f"attention='maps' reads eager attention maps; load the model with attn_implementation='eager' (it uses {adapter.attn_implementation!r})")
    return Run(model, method, retention, hook, layers, seed, positions, attention, dict(method.defaults, **params))


def _stage_layers(method: Method, hook: str, layer: int | None, n_layers: int) -> tuple[int, ...]:
    if hook == "E":
        if layer is not None:
            raise ValueError(f"layer applies to hook 'L' only; {method.name!r} at hook 'E' acts before layer 0 (pass hook='L' to prune inside the LLM)")
        return (0,)
    layers: Sequence[int] = (layer,) if layer is not None else method.layers
    low = 1 if method.needs_attention else 0
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int) or not low <= k < n_layers:
            why = f"; {method.name!r} reads attention at layer K−1, so K ≥ 1" if low else ""
            raise ValueError(f"layer={k} out of range: model has {n_layers} decoder layers (0..{n_layers - 1}), allowed {low}..{n_layers - 1}{why}")
    if len(layers) != 1:
        raise ValueError(f"{method.name!r} prunes at one layer; got layers {tuple(layers)}")
    return tuple(layers)
