"""The pruning engine: forward pre-hooks that remove visual tokens inside a Hugging Face MLLM.

`with tpx.pruning(model, "fastv", retention=0.25) as run: model.generate(**inputs)` installs hooks at the
method's hook point and removes them on exit, also when the body raises. In prefill, the hook on decoder
layer K gathers the kept rows of the hidden states, their position ids and rotary embeddings, and rebuilds
the causal mask from layer K's own cache; later layers reuse what layer K computed, and every decode step
rebuilds only the masks of pruned layers (their caches are shorter). Hooks "E" and "V" do the same surgery
before layer 0, so every layer sees the short sequence; "V" scores with what the vision tower recorded and
projects merged vision features. Multi-stage methods repeat the surgery at each of their layers. The engine
knows no method by name: it hands the method's scorer and selector the tensors their argument names ask for.
Contexts nest: an inner `tpx.pruning` acting at later layers continues from what the enclosing one kept
(e.g. `pooling` at hook E, then `fastv` at layer 2 — a model trained with pooling, pruned further).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tpx import ingredients as ing
from tpx import select
from tpx.methods import Method, get_method

__all__ = ["INGREDIENTS", "Run", "TraceEntry", "pruning"]

log = logging.getLogger(__name__)
INGREDIENTS = ing.INGREDIENTS
POSITIONS = ("keep", "renumber")
# ingredients indexed by visual token along dim 1, and along the last dim (attention over visual keys)
_PER_TOKEN = ("scores", "features", "normed_features", "visual_keys", "vision_keys", "vision_features")
_PER_KEY = ("attn_last", "attn_last_visual", "attn_text", "cls_attn")
ATTENTION = ("rows", "maps")
_ACTIVE: dict[int, list[Run]] = {}  # open runs per model (id), outermost first


@dataclass
class TraceEntry:
    """What one pruning stage of one forward call did, per batch row.

    Attributes:
        method, hook, layer, stage: which method acted where (`layer` = K; 0 for hooks "E" and "V").
        params: the method's parameters, retention, seed and positions mode.
        n_visual: visual tokens N in the image span(s) before any pruning.
        n_keep: visual tokens left after this stage.
        kept: `(B, n_keep)` sorted indices into the visual span of the kept (or representative) tokens.
        segment: `(B, n_keep)` image segment of each kept token (0 for a single image).
        grid_rc: `(B, n_keep, 2)` their (row, col) on their segment's grid, row 0 at the top.
        scores: `(B, n_visual)` float scores (NaN where a token was already gone), or None if unscored.
        grids: `(rows, cols)` of every image segment; `grid` is the first one.
    """

    method: str
    hook: str
    layer: int
    stage: int
    params: dict[str, Any]
    n_visual: int
    n_keep: int
    kept: torch.Tensor
    segment: torch.Tensor
    grid_rc: torch.Tensor
    scores: torch.Tensor | None
    grids: list[tuple[int, int]] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        """The grid of the first (usually only) image segment."""
        return self.grids[0]


class Run:
    """State of one `tpx.pruning` context: hook handles, per-call bookkeeping and the trace.

    Attributes:
        method: the `Method` being applied.
        trace: one `TraceEntry` per pruning stage of every prefill call, in call order.
        kept_positions: `(B, L')` original sequence positions that survive all stages of the last prefill.
    """

    def __init__(self, model: torch.nn.Module, adapter: Any, method: Method, retention: float, hook: str,
                 layers: tuple[int, ...], seed: int, positions: str, attention: str, params: dict[str, Any]) -> None:
        self.model, self.adapter, self.method = model, adapter, method
        self.retention, self.hook, self.layers, self.seed = retention, hook, layers, seed
        self.positions, self.attention, self.params = positions, attention, params
        self.trace: list[TraceEntry] = []
        self.kept_positions: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._generator: torch.Generator | None = None
        self._wanted = ing.wanted(method.scorer, method.selector)
        self._prefill = False
        self._mask2d: torch.Tensor | None = None
        self._stages: dict[int, dict[str, Any]] = {}
        self._stash: dict[Any, Any] = {}
        self._vision: dict[str, torch.Tensor] = {}
        self._cur: dict[str, Any] = {}
        self.outer: Run | None = None  # the enclosing run on the same model, if this context is nested
        self._adopted = False

    @property
    def stage_positions(self) -> dict[int, torch.Tensor]:
        """`{layer: (B, L_s)}` original positions that layers ≥ that stage layer saw in the last prefill."""
        return {k: v["seq"] for k, v in self._stages.items()}

    # ---- installation -------------------------------------------------------------------------------
    def _install(self) -> None:
        layers = self.adapter.layers
        score = {k - 1 for k in self.layers} if ing.needs_layer_before(self._wanted) else set()
        stack = _ACTIVE.setdefault(id(self.model), [])
        if stack:
            self._nest(stack[-1], min(score | set(self.layers)))
        stack.append(self)
        self._handles.append(self.model.register_forward_pre_hook(self._on_call, with_kwargs=True))
        for i in sorted(score | set(range(self.layers[0], self.adapter.n_layers))):
            hook = _LayerHook(self, i, stash=i in score)
            self._handles.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        if self.attention == "maps":
            for i in score:
                self._handles.append(layers[i].self_attn.register_forward_hook(_MapCapture(self, i)))
        if ing.needs_vision(self._wanted):
            self._handles.extend(self.adapter.vision_hooks(self._vision))

    def _nest(self, outer: Run, first_hooked: int) -> None:
        """Continue from an enclosing run: it must finish pruning before this run's first stage."""
        if self.positions == "renumber" or outer.positions == "renumber":
            raise ValueError("nested tpx.pruning contexts need positions='keep' in both; positions='renumber' cannot nest")
        if self.layers[0] <= outer.layers[-1] or first_hooked < outer.layers[-1]:
            raise ValueError(
                f"a nested tpx.pruning must act after the enclosing one: {outer.method.name!r} prunes before "
                f"layer {outer.layers[-1]}, so {self.method.name!r} needs layer > {outer.layers[-1]}"
                f"{' (and reads layer K−1)' if first_hooked < self.layers[0] else ''}; got layers {self.layers}")
        self.outer = outer

    def _adopt(self) -> None:
        """In prefill, take over the sequence the enclosing run left (its kept tokens, mask and positions)."""
        o = self.outer
        self._seq, self._n_cur, self._seq_mask2d, self._pos0 = o._seq, o._n_cur, o._seq_mask2d, o._pos0
        self._cur = dict(o._cur)
        self._adopted = True

    def _remove(self) -> None:
        stack = _ACTIVE.get(id(self.model), [])
        if self in stack:
            stack.remove(self)
        if not stack:
            _ACTIVE.pop(id(self.model), None)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stash.clear()
        self._vision.clear()
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
        layout = self.adapter.layout(input_ids, **{k: v for k, v in kwargs.items() if k != "input_ids"})
        b, length = input_ids.shape
        dev = input_ids.device
        self._n_visual = layout.positions.shape[1]
        self._grids = layout.grids
        self._length = length
        self._is_visual = torch.zeros(b, length, dtype=torch.bool, device=dev).scatter(1, layout.positions, True)
        vis_index = torch.arange(self._n_visual, device=dev).expand(b, -1)
        self._vis_index = torch.full((b, length), -1, dtype=torch.long, device=dev).scatter(1, layout.positions, vis_index)
        after_image = torch.arange(length, device=dev)[None] > layout.positions[:, :1]
        placeholder = input_ids == self.adapter.image_token_id  # unprunable image tokens (LLaVA-NeXT newlines) are not text
        self._is_text = ~self._is_visual & ~placeholder & after_image & (mask.bool() if mask is not None else True)
        context = dict(self.params, layers=self.layers, n_layers=self.adapter.n_layers)
        self._budgets = _budgets(self.method, self.retention, self._n_visual, len(self.layers), context)
        self._n_cur = self._n_visual
        self._seq = torch.arange(length, device=dev).expand(b, -1)
        self._seq_mask2d = mask
        self._pos0 = None
        self._stages, self._cur = {}, {}
        self._stash = {}
        self._adopted = False

    def _layer(self, idx: int, args: tuple, kwargs: dict, stash: bool) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.outer is not None and self._prefill and not self._adopted:
            self._adopt()
        if idx in self.layers:
            if self._prefill:
                if idx > self.layers[0]:  # a later stage starts from the current (pruned) positions and rotary
                    kwargs.update(self._cur)
                hidden = self._prune(idx, hidden, kwargs)
            else:
                self._cur = self._decode_kwargs(idx, hidden, kwargs)
        if idx >= self.layers[0]:
            kwargs.update(self._cur)
        if stash and self._prefill:
            self._stash[idx] = (hidden, kwargs["position_embeddings"], self._seq_mask2d, kwargs.get("cache"))
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
        n_cur = self._n_cur
        if n_keep > n_cur:
            raise ValueError(f"{self.method.name!r} at retention={self.retention} keeps {n_keep} of the "
                             f"{self._n_visual} visual tokens, but only {n_cur} reach layer {idx} (an enclosing "
                             f"tpx.pruning kept them); use retention ≤ {n_cur / self._n_visual:.4g}")
        vis_cur = _true_positions(vis_mask, n_cur)                                 # (B, n_cur)
        vis_orig = self._vis_index.gather(1, seq.gather(1, vis_cur))              # (B, n_cur) into visual span
        with torch.no_grad():
            scores, index, merged = self._score_and_select(idx, hidden, seq, vis_cur, n_cur, n_keep)
        n_keep = self._n_cur = index.shape[1]  # a method may document a count other than the budget (DART's official one)
        keep_mask = (~vis_mask).scatter(1, vis_cur.gather(1, index), True)
        keep = _true_positions(keep_mask, length - n_cur + n_keep)                 # (B, L') sorted
        new_hidden = hidden.gather(1, keep[..., None].expand(-1, -1, d))
        if merged is not None:
            slots = _true_positions(vis_mask.gather(1, keep), n_keep)
            new_hidden = new_hidden.scatter(1, slots[..., None].expand(-1, -1, d), merged.to(new_hidden.dtype))
        new_seq = seq.gather(1, keep)
        position_ids = kwargs.get("position_ids")  # None in a Qwen2-VL forward (3-D M-RoPE lives in cos/sin)
        if position_ids is not None:
            position_ids = position_ids.expand(b, -1)
        if self._pos0 is None:
            self._pos0 = position_ids
        cos, sin = kwargs["position_embeddings"]
        gidx = keep[..., None].expand(-1, -1, cos.shape[-1])
        pos = None if position_ids is None else position_ids.gather(1, keep)
        pe = (cos.expand(b, -1, -1).gather(1, gidx), sin.expand(b, -1, -1).gather(1, gidx))
        shift = None
        if self.positions == "renumber":
            kept_full = torch.zeros_like(self._is_visual).scatter(1, new_seq, True)
            pos = self._pos0.gather(1, new_seq) - (~kept_full).long().cumsum(1).gather(1, new_seq)
            shift = (~kept_full).long().sum(1, keepdim=True)
            pe = self.adapter.rotary(new_hidden, pos)
        self._seq, self.kept_positions = new_seq, new_seq
        self._seq_mask2d = None if self._mask2d is None else self._mask2d[:, : self._length].gather(1, new_seq)
        mask = self.adapter.causal_mask(new_hidden, self._seq_mask2d, kwargs.get("cache"), idx)
        self._cur = {"attention_mask": mask, "position_ids": pos, "position_embeddings": pe}
        self._stages[idx] = {"seq": new_seq, "shift": shift}
        self._record(idx, stage, vis_orig, index, scores, n_keep)
        return new_hidden

    def _score_and_select(self, idx: int, hidden: torch.Tensor, seq: torch.Tensor, vis_cur: torch.Tensor,
                          n_cur: int, n_keep: int) -> tuple:
        if self._generator is None:
            self._generator = torch.Generator(device=hidden.device).manual_seed(self.seed)
        text_mask_seq = self._is_text.gather(1, seq)
        n_text = int(text_mask_seq.sum(1).max()) if self._wanted & {"attn_text", "text_keys", "normed_text", "text_mask"} else 0
        text = _true_positions(text_mask_seq, n_text)
        text_valid = text_mask_seq.gather(1, text)
        text = torch.where(text_valid, text, seq.shape[1] - 1)
        before = self._stash.pop(idx - 1, None)
        maps = self._stash.pop(("maps", idx - 1), None)
        vision = self._take_vision(hidden.shape[0]) if ing.needs_vision(self._wanted) else None
        stage = ing.Stage(self.adapter, hidden, vis_cur, text, text_valid, before, maps, vision, idx - 1)
        given: dict[str, Any] = dict(self.params, n_keep=n_keep, generator=self._generator)
        given.update(ing.collect(self._wanted, stage))
        method = self.method
        scores = None
        if method.scorer is not None:
            scores = method.scorer(**_pick(method.scorer, given))
            given["scores"] = scores
        if method.per_segment or "grid" in inspect.signature(method.selector).parameters:
            index, merged = self._select_per_segment(given, n_cur, n_keep)
        else:
            index, merged = _unpack(method.selector(**_pick(method.selector, given)))
        if merged is not None and self.hook == "V" and merged.shape[-1] != hidden.shape[-1]:
            merged = self.adapter.project(merged)
        return scores, index, merged

    def _select_per_segment(self, given: dict[str, Any], n_cur: int, n_keep: int) -> tuple:
        """Selectors that need a grid run on each image segment with a share of the budget."""
        if len(self._grids) == 1 and "grid" not in inspect.signature(self.method.selector).parameters:
            return _unpack(self.method.selector(**_pick(self.method.selector, given)))
        if n_cur != self._n_visual:
            raise ValueError(f"{self.method.name!r} selects on the image grid, which needs all visual tokens; "
                             f"this stage sees {n_cur} of {self._n_visual}")
        sizes = [r * c for r, c in self._grids]
        shares = select.split_budget(n_keep, sizes) if len(sizes) > 1 else [n_keep]
        indices, features, start = [], [], 0
        for grid, size, share in zip(self._grids, sizes, shares, strict=True):
            part = dict(given, grid=grid, n_keep=share)
            for name in _PER_TOKEN:
                if given.get(name) is not None:
                    part[name] = given[name][:, start:start + size]
            for name in _PER_KEY:
                if name in given:
                    part[name] = given[name][..., start:start + size]
            index, merged = _unpack(self.method.selector(**_pick(self.method.selector, part)))
            indices.append(index + start)
            features.append(merged)
            start += size
        merged = None if features[0] is None else torch.cat(features, dim=1)
        return torch.cat(indices, dim=1), merged

    def _take_vision(self, batch: int) -> dict[str, torch.Tensor]:
        if not self._vision:
            raise RuntimeError("hook 'V' found no vision-tower record for this prefill (were pixel_values passed?)")
        vision = dict(self._vision)
        self._vision.clear()
        if vision["cls_attn"].shape[0] != batch:
            raise ValueError(f"hook 'V' needs one image per batch row; got {vision['cls_attn'].shape[0]} images for {batch} rows")
        return vision

    def _record(self, idx: int, stage: int, vis_orig: torch.Tensor, index: torch.Tensor,
                scores: torch.Tensor | None, n_keep: int) -> None:
        kept = vis_orig.gather(1, index)
        sizes = torch.tensor([r * c for r, c in self._grids], device=kept.device)
        starts = sizes.cumsum(0) - sizes
        segment = torch.searchsorted(starts, kept, right=True) - 1
        local = kept - starts[segment]
        cols = torch.tensor([c for _, c in self._grids], device=kept.device)[segment]
        full_scores = None
        if scores is not None:
            full_scores = torch.full((kept.shape[0], self._n_visual), float("nan"), device=scores.device)
            full_scores = full_scores.scatter(1, vis_orig, scores.float()).detach()
        params = dict(self.params, retention=self.retention, seed=self.seed, positions=self.positions)
        self.trace.append(TraceEntry(
            method=self.method.name, hook=self.hook, layer=idx, stage=stage, params=params,
            n_visual=self._n_visual, n_keep=n_keep, kept=kept.detach(), segment=segment.detach(),
            grid_rc=torch.stack([local // cols, local % cols], dim=-1).detach(), scores=full_scores,
            grids=list(self._grids),
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


def _unpack(result: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(result, select.Merged):
        return result.index, result.features
    return result, None


def _budgets(method: Method, retention: float, n_visual: int, n_stages: int, params: dict[str, Any]) -> list[int]:
    if method.schedule is None:
        return [select.budget(retention, n_visual)]
    budgets = [int(k) for k in method.schedule(retention, n_visual, n_stages, **_pick(method.schedule, params))]
    if len(budgets) != n_stages or any(not 1 <= k <= n_visual for k in budgets) or budgets != sorted(budgets, reverse=True):
        raise ValueError(f"{method.name!r} schedule gave {budgets} for {n_stages} stages of {n_visual} tokens; "
                         "it must give one non-increasing count in [1, N] per stage")
    return budgets


@contextlib.contextmanager
def pruning(
    model: torch.nn.Module,
    method: str | Method,
    *,
    retention: float,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
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
        retention: kept share of visual tokens, in (0, 1]; `n_keep = select.budget(retention, N)` (multi-stage
            methods: see their schedule). Inside an enclosing `tpx.pruning` it still counts against the N
            visual tokens of the input, and must keep no more than the enclosing run left.
        layer: decoder layer K for hook "L" (the first layer that sees the pruned sequence); default: the
            method's. Not allowed for hooks "E" / "V", which act before layer 0.
        layers: stage layers of a multi-stage method (default: the method's, scaled to the model's depth).
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
    run = _make_run(model, method, retention, layer, layers, hook, seed, positions, attention, params)
    run._install()
    try:
        yield run
    finally:
        run._remove()


def _make_run(model, method, retention, layer, layers, hook, seed, positions, attention, params) -> Run:
    from tpx.models import adapter_for

    method = get_method(method)
    retention = select.check_retention(retention)
    hook = hook or method.hook
    if hook not in method.hooks:
        raise ValueError(f"hook={hook!r} is not supported by {method.name!r}; supported: {', '.join(method.hooks)}")
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
    if positions == "renumber" and not adapter.supports_renumber:
        raise ValueError(f"positions='renumber' is not supported on {type(model).__name__}: its M-RoPE positions are 3-D; use positions='keep'")
    stage_layers = _stage_layers(method, hook, layer, layers, adapter.n_layers)
    if attention == "maps" and adapter.attn_implementation != "eager":
        raise ValueError(f"attention='maps' reads eager attention maps; load the model with attn_implementation='eager' (it uses {adapter.attn_implementation!r})")
    return Run(model, adapter, method, retention, hook, stage_layers, seed, positions, attention, dict(method.defaults, **params))


def _stage_layers(method: Method, hook: str, layer: int | None, layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layer is not None and layers is not None:
        raise ValueError("pass either layer= (one stage) or layers= (several), not both")
    if hook in ("E", "V"):
        if layer is not None or layers is not None:
            raise ValueError(f"layer applies to hook 'L' only; {method.name!r} at hook {hook!r} acts before layer 0 "
                             "(pass hook='L' to prune inside the LLM)")
        return (0,)
    low = 1 if ing.needs_layer_before(ing.wanted(method.scorer, method.selector)) else 0
    if layer is not None:
        chosen: Sequence[int] = (layer,)
    elif layers is not None:
        chosen = tuple(layers)
    elif method.scale_layers and n_layers != 32:
        chosen = _scaled(method.layers, n_layers, low)
    else:
        chosen = method.layers
    for k in chosen:
        if isinstance(k, bool) or not isinstance(k, int) or not low <= k < n_layers:
            why = f"; {method.name!r} reads layer K−1, so K ≥ 1" if low else ""
            raise ValueError(f"layer={k} out of range: model has {n_layers} decoder layers (0..{n_layers - 1}), "
                             f"allowed {low}..{n_layers - 1}{why}")
    if list(chosen) != sorted(set(chosen)):
        raise ValueError(f"layers must be strictly increasing, got {tuple(chosen)}")
    if len(chosen) != len(method.layers) and (method.schedule is None or len(chosen) == 0):
        raise ValueError(f"{method.name!r} prunes at {len(method.layers)} layer(s); got layers {tuple(chosen)}")
    return tuple(chosen)


def _scaled(layers: Sequence[int], n_layers: int, low: int) -> tuple[int, ...]:
    """Stage layers given for a 32-layer LLM, moved to the same relative depth of a shallower/deeper one."""
    out: list[int] = []
    for k in layers:
        k = max(low, round(k * n_layers / 32), out[-1] + 1 if out else low)
        out.append(k)
    if out[-1] >= n_layers:
        raise ValueError(f"a {n_layers}-layer model is too shallow for {len(layers)} pruning stages; pass layers=")
    return tuple(out)
