"""The pruning engine: executes a `tpx.plan.Plan` inside a Hugging Face MLLM with forward pre-hooks.

`with tpx.pruning(model, "fastv", retention=0.25) as run: model.generate(**inputs)` builds the plan on entering
the `with` (so every configuration error is raised there, by `tpx.plan`), installs hooks for its stages and
removes them on exit, also when the body raises. In prefill, the hook on decoder layer K gathers the kept rows
of the hidden states, their position ids and rotary embeddings, and rebuilds the causal mask from layer K's
own cache; later layers reuse what layer K computed, and every decode step rebuilds only the masks of pruned
layers (their caches are shorter). Stages at hooks "E" and "V" do the same surgery before layer 0, so every
layer sees the short sequence; "V" scores with what the vision tower recorded and projects merged vision
features. A plan's stages may come from several methods (a checkpoint's training-aware pooling at E, then
FastV at layer 2): each acts on what the previous one kept. The engine knows no method by name: at a stage it
computes the ingredients the stage lists (`tpx.ingredients`) and hands them to the stage (`Stage.select`).
All per-call state lives on the `Run`; nothing is stored on the model or in module globals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tpx import ingredients as ing
from tpx import select
from tpx.layout import Layout
from tpx.methods import Method
from tpx.models import adapter_for, native_plan
from tpx.models.base import Adapter
from tpx.plan import Plan, Selection, Stage, plan
from tpx.stopwatch import Lap

__all__ = ["Run", "TraceEntry", "plan_for", "pruning", "reachable"]


@dataclass
class TraceEntry:
    """What one pruning stage of one forward call did, per batch row.

    Attributes:
        method, hook, layer, stage: which method acted where (`layer` = K; 0 for hooks "E" and "V"; `stage`
            counts the stages of that method).
        params: the method's parameters, retention, seed and positions mode.
        n_visual: visual tokens N in the image span(s) before any pruning.
        n_keep: visual tokens left after this stage.
        kept: `(B, n_keep)` sorted indices into the visual span of the kept (or representative) tokens.
        segment: `(B, n_keep)` image segment of each kept token (0 for a single image).
        grid_rc: `(B, n_keep, 2)` their (row, col) on their segment's grid, row 0 at the top.
        scores: `(B, n_visual)` float scores (NaN where a token was already gone), or None if unscored.
        grids: `(rows, cols)` of every image segment; `grid` is the first one.
        native: the stage is the checkpoint's own compression (`config.tpx_compression`), not the asked method.
        lap: the time the stage spent choosing (ingredients, scorer, selector) when the run was opened with
            `timing=True`, else None; read it as `select_ms`.
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
    native: bool = False
    lap: Lap | None = field(default=None, repr=False, compare=False)

    @property
    def select_ms(self) -> float | None:
        """Milliseconds the stage spent computing its ingredients and running its scorer and selector (None
        unless the run was opened with `timing=True`; on a GPU, reading it waits for that work)."""
        return None if self.lap is None else self.lap.ms

    @property
    def grid(self) -> tuple[int, int]:
        """The grid of the first (usually only) image segment."""
        return self.grids[0]


@dataclass
class _Prefill:
    """State of the last prefill: what was cut where, kept for its decode steps."""

    plan: Plan                      # resolved for this input's layout
    layout: Layout
    length: int                     # prompt length
    is_visual: torch.Tensor         # (B, L) prunable visual token
    vis_index: torch.Tensor         # (B, L) index into the visual span, −1 elsewhere
    is_text: torch.Tensor           # (B, L) text after the image, not padding
    seq: torch.Tensor               # (B, L') original positions of the current sequence
    n_cur: int                      # visual tokens in it
    mask2d: torch.Tensor | None     # its padding mask
    blocks: torch.Tensor | None     # (B, L) bidirectional attention block of each position (−1: causal), or None
    pos: torch.Tensor | None = None  # position ids of the current sequence (None: the model passes none)
    stage_layer: int = -1           # the last stage layer the current call passed
    cur: dict[Any, Any] = field(default_factory=dict)         # per layer type: kwargs of layers ≥ the stage layer
    cut: dict[int, dict[str, Any]] = field(default_factory=dict)  # per stage layer: its seq and position shift
    stash: dict[Any, Any] = field(default_factory=dict)       # what score layers K−1 received


class Run:
    """One `tpx.pruning` context: the plan, the hooks that execute it, and the trace.

    Attributes:
        plan: the `Plan` (bound to the model; budgets resolved again for every prefill's layout).
        trace: one `TraceEntry` per stage of the requested method(s) in every prefill call, in call order.
        native_trace: the same for the stages of the checkpoint's own compression (`config.tpx_compression`),
            which act first; empty for other models.
        kept_positions: `(B, L')` original sequence positions that survive all stages of the last prefill.
    """

    def __init__(self, model: torch.nn.Module, adapter: Adapter, plan: Plan, timing: bool = False) -> None:
        self.model, self.adapter, self.plan, self.timing = model, adapter, plan, timing
        self.trace: list[TraceEntry] = []
        self.native_trace: list[TraceEntry] = []
        self.kept_positions: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._generators: dict[int, torch.Generator] = {}
        self._vision: dict[str, Any] = {}
        self._at = {s.layer: s for s in plan.stages}
        self._first = plan.stages[0].layer if plan.stages else 0
        self._prefill = False
        self._mask2d: torch.Tensor | None = None
        self._p: _Prefill | None = None

    # ---- what was asked (the last request: the user's, after a checkpoint's own compression) -------------
    @property
    def method(self) -> Method | None:
        return self.plan.parts[-1].method if self.plan.parts else None

    @property
    def retention(self) -> float:
        return self.plan.parts[-1].retention if self.plan.parts else 1.0

    @property
    def hook(self) -> str | None:
        return self.plan.parts[-1].hook if self.plan.parts else None

    @property
    def seed(self) -> int:
        return self.plan.parts[-1].seed if self.plan.parts else 0

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.plan.parts[-1].params) if self.plan.parts else {}

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers of the requested stages, in order (one `trace` entry each per prefill)."""
        return tuple(s.layer for s in self.plan.stages if not s.native)

    @property
    def stage_positions(self) -> dict[int, torch.Tensor]:
        """`{layer: (B, L_s)}` original positions that layers ≥ that stage layer saw in the last prefill."""
        return {} if self._p is None else {k: v["seq"] for k, v in self._p.cut.items()}

    def current_positions(self) -> torch.Tensor | None:
        """`(B, L')` original positions of the tokens the decoder layers carry at this moment of a prefill (after
        the stages cut so far; merged tokens at their representative's position), or None outside a prefill.
        Adapters whose language model adds per-token inputs between layers (Qwen3-VL's DeepStack) read it."""
        return self._p.seq if self._prefill and self._p is not None else None

    # ---- installation -------------------------------------------------------------------------------
    def _install(self) -> None:
        stages = self.plan.stages
        if not stages:
            return
        for hook in self.model._forward_pre_hooks.values():
            if isinstance(hook, _CallHook):
                raise ValueError("a tpx.pruning context is already open on this model; compose plans instead: "
                                 "tpx.pruning(model, plan_a + plan_b)")
        layers = self.adapter.layers
        score = {s.layer - 1 for s in stages if s.reads_before}
        self._handles.append(self.model.register_forward_pre_hook(_CallHook(self), with_kwargs=True))
        for i in sorted(score | set(range(stages[0].layer, self.adapter.n_layers))):
            self._handles.append(layers[i].register_forward_pre_hook(_LayerHook(self, i, i in score), with_kwargs=True))
        if self.plan.attention == "maps":
            for i in score:
                self._handles.append(layers[i].self_attn.register_forward_hook(_MapCapture(self, i)))
        if any(s.reads_vision for s in stages):
            self._handles.extend(self.adapter.vision_hooks(self._vision, _vision_needs(self.plan)))
        decoder_hooks = getattr(self.adapter, "decoder_hooks", None)  # optional: see base.Adapter
        if decoder_hooks is not None:
            self._handles.extend(decoder_hooks(self.current_positions))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._vision.clear()
        if self._p is not None:
            self._p.stash.clear()
            self._p.cur = {}

    # ---- per call -----------------------------------------------------------------------------------
    def _on_call(self, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.adapter.decoder.check_cache(cache)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise ValueError(f"tpx.pruning needs a 2-D attention_mask (batch, length), got shape {tuple(mask.shape)}")
        self._mask2d = mask
        self._prefill = cache is None or cache.get_seq_length() == 0
        if not self._prefill:
            self._continue(input_ids, kwargs.get("inputs_embeds"))
            return
        if input_ids is None:
            raise ValueError("tpx.pruning needs input_ids to find the image tokens; "
                             "inputs_embeds-only calls are not supported")
        if mask is not None and not bool(mask[:, -1].all()):
            raise ValueError("batches must be left-padded (tokenizer.padding_side='left'): the last position of every "
                             "row must be a real token")
        layout = self.adapter.layout(input_ids, **{k: v for k, v in kwargs.items() if k != "input_ids"})
        resolved = self.plan.bind(layout=layout)  # this input's budgets (raises as tpx.plan would)
        b, length = input_ids.shape
        dev = input_ids.device
        n = layout.n_visual
        is_visual = torch.zeros(b, length, dtype=torch.bool, device=dev).scatter(1, layout.positions, True)
        vis_index = torch.full((b, length), -1, dtype=torch.long, device=dev).scatter(
            1, layout.positions, torch.arange(n, device=dev).expand(b, -1))
        is_text = ~is_visual & (torch.arange(length, device=dev)[None] > layout.positions[:, :1])
        if layout.fixed is not None and layout.fixed.shape[1]:
            is_text = is_text.scatter(1, layout.fixed, False)  # never-pruned image tokens are not text
        if mask is not None:
            is_text = is_text & mask.bool()
        blocks = None
        if layout.bidirectional:  # each image's tokens attend to one another (Gemma 3): block id = its segment
            segment, _ = layout.locate(torch.arange(n, device=dev).repeat(b, 1))
            blocks = torch.full((b, length), -1, dtype=torch.long, device=dev).scatter(1, layout.positions, segment)
        self._at = {s.layer: s for s in resolved.stages}
        self._p = _Prefill(resolved, layout, length, is_visual, vis_index, is_text,
                           torch.arange(length, device=dev).expand(b, -1), n, mask, blocks)

    def _continue(self, input_ids: torch.Tensor | None, embeds: torch.Tensor | None) -> None:
        """Check a call that continues the cached sequence: a decode step, or the next turn of a conversation.

        A next turn is answered from the pruned cache: its new tokens attend to what the prefill kept, exactly as
        the mask reference does. Two continuations cannot be answered that way and are refused rather than run
        wrongly: new image tokens (pruning happens at prefill, so they would silently stay unpruned), and a
        cache pruned before decoder layer 0 (hook E / V, or K = 0), whose length transformers reads as the
        sequence length, so that `generate` would feed again tokens the cache already holds (measured: wrong
        tokens). A decode step brings one token per row; a call bringing more is taken as a new turn.
        """
        p = self._p
        if p is None:
            return  # a decode step before any prefill: `_decode_kwargs` raises where it matters
        x = input_ids if input_ids is not None else embeds
        n_new = 0 if x is None else x.shape[1]
        cut = [f"{st.method.name!r} at hook {st.hook}" for st in p.plan.stages if st.layer == 0]
        if n_new > 1 and cut:
            raise ValueError(
                f"this call continues a cached sequence with {n_new} new tokens, but {', '.join(cut)} pruned the "
                "cache before decoder layer 0, and transformers reads that shorter cache's length as the sequence "
                "length, so generate would feed again tokens the cache already holds. Continue a conversation from a "
                "cache pruned at hook 'L' (K ≥ 1), or answer the new turn from a fresh prefill of the whole "
                "conversation (generate without the cache)")
        if n_new > 1 and input_ids is not None and bool((input_ids == self.adapter.image_token_id).any()):
            raise ValueError("this call continues a cached conversation with new image tokens, which tpx would not "
                             "prune (it prunes at prefill); answer the new turn from a fresh prefill of the whole "
                             "conversation (generate without the cache)")

    def _before_layer(self, layer: int, args: tuple, kwargs: dict, stash: bool) -> tuple[tuple, dict]:
        p = self._p
        hidden = args[0] if args else kwargs["hidden_states"]
        stage = self._at.get(layer)
        if stage is not None:
            if not self._prefill and (p is None or layer not in p.cut):
                raise RuntimeError("a decode step reached a pruned layer before any prefill inside this tpx.pruning "
                                   "context")
            p.stage_layer, p.cur = layer, {}  # masks (sized from this stage's caches) and rotary are rebuilt
            if self._prefill:
                hidden = self._cut(stage, hidden, kwargs)
        if layer >= self._first:
            kind = self.adapter.decoder.layer_type(layer)  # layers of one type share masks and rotary
            if kind not in p.cur:
                p.cur[kind] = (self._prefill_kwargs if self._prefill else self._decode_kwargs)(layer, hidden, kwargs)
            kwargs.update(p.cur[kind])
        if stash and self._prefill:
            p.stash[layer] = (hidden, kwargs["position_embeddings"], p.mask2d, kwargs.get("cache"),
                              kwargs.get("attention_mask"))
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    # ---- prefill: one stage -------------------------------------------------------------------------
    def _cut(self, stage: Stage, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Score, select, and cut the sequence entering layer `stage.layer` to the kept tokens."""
        p, layer = self._p, stage.layer
        b, length, d = hidden.shape
        vis_mask = p.is_visual.gather(1, p.seq)                                    # (B, L) visual in current seq
        if stage.n_keep > p.n_cur:
            raise ValueError(f"{stage.method.name!r} keeps {stage.n_keep} visual tokens, but only {p.n_cur} reach "
                             f"layer {layer}")
        vis_cur = select.mask_to_index(vis_mask, p.n_cur)                           # (B, n_cur)
        vis_orig = p.vis_index.gather(1, p.seq.gather(1, vis_cur))                 # (B, n_cur) into visual span
        with torch.no_grad():
            lap = Lap(hidden.device).start() if self.timing else None
            chosen = self._select(stage, hidden, vis_cur)
            if lap is not None:
                lap.stop()
        n_keep = chosen.index.shape[1]  # a method may document a count other than the budget (DART's official one)
        keep = select.mask_to_index((~vis_mask).scatter(1, vis_cur.gather(1, chosen.index), True),
                                    length - p.n_cur + n_keep)                     # (B, L') sorted
        new_hidden = select.take(hidden, keep)
        if chosen.merged is not None:
            slots = select.mask_to_index(vis_mask.gather(1, keep), n_keep)
            new_hidden = new_hidden.scatter(1, slots[..., None].expand(-1, -1, d), chosen.merged.to(new_hidden.dtype))
        self._shorten(layer, keep, new_hidden, kwargs)
        p.n_cur = n_keep
        self._record(stage, vis_orig, chosen, n_keep, lap)
        return new_hidden

    def _shorten(self, layer: int, keep: torch.Tensor, new_hidden: torch.Tensor, kwargs: dict) -> None:
        """Original positions, position ids and padding mask of the kept rows, for layer `layer` and after."""
        p = self._p
        b = keep.shape[0]
        position_ids = kwargs.get("position_ids")  # None in a Qwen2-VL forward (3-D M-RoPE lives in cos/sin)
        new_seq = p.seq.gather(1, keep)
        pos = None if position_ids is None else position_ids.expand(b, -1).gather(1, new_seq)
        shift = None
        if self.plan.positions == "renumber":
            kept_full = torch.zeros_like(p.is_visual).scatter(1, new_seq, True)
            pos = pos - (~kept_full).long().cumsum(1).gather(1, new_seq)
            shift = (~kept_full).long().sum(1, keepdim=True)
        p.seq = self.kept_positions = new_seq
        p.pos = pos
        p.mask2d = None if self._mask2d is None else self._mask2d[:, : p.length].gather(1, new_seq)
        p.cut[layer] = {"seq": new_seq, "shift": shift}

    def _prefill_kwargs(self, layer: int, hidden: torch.Tensor, kwargs: dict) -> dict[str, Any]:
        """Mask, position ids and rotary of the current sequence for decoder layer `layer` (and every later layer
        of its type): the model hands each layer its own type's rotary for the full prompt, gathered here at the
        kept positions (or recomputed for renumbered ones); the mask is rebuilt from the layer's cache."""
        p, decoder = self._p, self.adapter.decoder
        if self.plan.positions == "renumber":
            pe = decoder.rotary(hidden, p.pos, layer_idx=layer)
        else:
            cos, sin = kwargs["position_embeddings"]
            gidx = p.seq[..., None].expand(-1, -1, cos.shape[-1])
            pe = tuple(e.expand(p.seq.shape[0], -1, -1).gather(1, gidx) for e in (cos, sin))
        extra = {} if p.blocks is None else {"blocks": p.blocks.gather(1, p.seq)}
        mask = decoder.causal_mask(hidden, p.mask2d, kwargs.get("cache"), layer, **extra)
        return {"attention_mask": mask, "position_ids": p.pos, "position_embeddings": pe}

    def _select(self, stage: Stage, hidden: torch.Tensor, vis_cur: torch.Tensor) -> Selection:
        p, layer = self._p, stage.layer
        grids = p.layout.grids
        if stage.per_segment and p.n_cur != p.layout.n_visual:
            raise ValueError(f"{stage.method.name!r} selects on the image grid, which needs all visual tokens; "
                             f"this stage sees {p.n_cur} of {p.layout.n_visual}")
        ctx = ing.Context(
            decoder=self.adapter.decoder, hidden=hidden, visual=vis_cur, is_text=p.is_text.gather(1, p.seq),
            before=p.stash.pop(layer - 1, None), maps=p.stash.pop(("maps", layer - 1), None),
            vision=self._take_vision(hidden.shape[0]) if stage.reads_vision else None, score_layer=layer - 1,
            grid=grids[0] if len(grids) == 1 else None,
            generator=self._generator(stage, hidden.device) if "generator" in stage.ingredients else None,
            mask2d=p.mask2d)
        chosen = stage.select(ing.compute(stage.ingredients, ctx), grids)
        if chosen.merged is not None and stage.hook == "V":
            # merged at hook V means merged vision features: always projected (also when the vision tower's width
            # equals the LLM's, as in the organism, where a shape test would let them in unprojected)
            chosen = chosen._replace(merged=self.adapter.project(chosen.merged))
        return chosen

    def _generator(self, stage: Stage, device: torch.device) -> torch.Generator:
        """One generator per request, seeded once per run: seeded methods draw in call order."""
        if stage.part not in self._generators:
            self._generators[stage.part] = torch.Generator(device=device).manual_seed(stage.seed)
        return self._generators[stage.part]

    def _take_vision(self, batch: int) -> dict[str, torch.Tensor]:
        if not self._vision:
            raise RuntimeError("hook 'V' found no vision-tower record for this prefill (were pixel_values passed?)")
        vision = self.adapter.vision_records(self._vision, self._p.layout)
        self._vision.clear()
        if vision["cls_attn"].shape[0] != batch:
            raise ValueError(f"hook 'V' needs one image per batch row; got {vision['cls_attn'].shape[0]} images for "
                             f"{batch} rows")
        return vision

    def _record(self, stage: Stage, vis_orig: torch.Tensor, chosen: Selection, n_keep: int, lap: Lap | None) -> None:
        layout = self._p.layout
        kept = vis_orig.gather(1, chosen.index)
        segment, grid_rc = layout.locate(kept)
        full_scores = None
        if chosen.scores is not None:
            full_scores = torch.full((kept.shape[0], layout.n_visual), float("nan"), device=chosen.scores.device)
            full_scores = full_scores.scatter(1, vis_orig, chosen.scores.float()).detach()
        params = dict(stage.params, retention=stage.retention, seed=stage.seed, positions=self.plan.positions)
        (self.native_trace if stage.native else self.trace).append(TraceEntry(
            method=stage.method.name, hook=stage.hook, layer=stage.layer, stage=stage.index, params=params,
            n_visual=layout.n_visual, n_keep=n_keep, kept=kept.detach(), segment=segment.detach(),
            grid_rc=grid_rc.detach(), scores=full_scores, grids=list(layout.grids), native=stage.native, lap=lap,
        ))

    # ---- decode -------------------------------------------------------------------------------------
    def _decode_kwargs(self, layer: int, hidden: torch.Tensor, kwargs: dict) -> dict[str, Any]:
        """The decode step's mask for layer `layer` (and later layers of its type up to the next stage), sized
        from that layer's shorter cache; shifted positions and their rotary when positions are renumbered."""
        p = self._p
        cut = p.cut[p.stage_layer]
        mask2d = None
        if self._mask2d is not None:
            m = self._mask2d
            mask2d = torch.cat([m[:, : p.length].gather(1, cut["seq"]), m[:, p.length:]], dim=1)
        mask = self.adapter.decoder.causal_mask(hidden, mask2d, kwargs.get("cache"), layer)
        cur: dict[str, Any] = {"attention_mask": mask}
        if cut["shift"] is not None:
            pos = kwargs["position_ids"].expand(hidden.shape[0], -1) - cut["shift"]
            cur.update(position_ids=pos, position_embeddings=self.adapter.decoder.rotary(hidden, pos, layer_idx=layer))
        return cur


class _CallHook:
    """Forward pre-hook of the whole model: reads each call's inputs and layout; delegates to its `Run`."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.run._on_call(args, kwargs)


class _LayerHook:
    """Forward pre-hook of one decoder layer; delegates to its `Run`."""

    def __init__(self, run: Run, layer: int, stash: bool) -> None:
        self.run, self.layer, self.stash = run, layer, stash

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return self.run._before_layer(self.layer, args, kwargs, self.stash)


class _MapCapture:
    """Forward hook on a self-attention module that keeps its eager attention map (the slow FastV way)."""

    def __init__(self, run: Run, layer: int) -> None:
        self.run, self.layer = run, layer

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.run._prefill and output[1] is not None:
            self.run._p.stash[("maps", self.layer)] = output[1]


# ---- entry points -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def pruning(
    model: torch.nn.Module,
    method: str | Method | Plan | None = None,
    *,
    retention: float | None = None,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    hook: Literal["V", "E", "L"] | None = None,
    seed: int = 0,
    positions: Literal["keep", "renumber"] = "keep",
    attention: Literal["rows", "maps"] = "rows",
    native: bool = True,
    timing: bool = False,
    **params: Any,
) -> Iterator[Run]:
    """Prune visual tokens of `model` inside the `with` block; hooks are removed on exit, even on error.

    The plan is built on entering the `with` (`plan_for`), so a bad configuration raises there, before any
    hook exists. A checkpoint trained with a compression always on (`config.tpx_compression`) gets it as the
    first stage, and the method acts on what it leaves.

    Args:
        model: a supported Hugging Face MLLM (see `tpx.models.ADAPTERS`).
        method: a registry name (`tpx.list_methods()`), a `Method`, a `Plan` (then no other argument but
            `native`), or None: only the checkpoint's own compression (nothing for other models).
        retention: kept share of visual tokens, in (0, 1]; `n_keep = select.budget(retention, N)` (multi-stage
            methods: see their schedule). After a checkpoint's compression it still counts against the N visual
            tokens of the input, and must keep no more than that compression left.
        layer: decoder layer K for hook "L" (the first layer that sees the pruned sequence); default: the
            method's. Not allowed for hooks "E" / "V", which act before layer 0.
        layers: stage layers of a multi-stage method (default: the method's, scaled to the model's depth).
        hook: hook point, one of the method's `hooks`; default: its first.
        seed: seed of the run's generator (seeded methods draw from it, in call order).
        positions: "keep" (kept tokens keep their original position ids) or "renumber" (compacted).
        attention: "rows" (recompute the needed attention rows; the model keeps SDPA) or "maps" (read the
            eager attention maps of layer K−1, the original FastV way; needs an eager model).
        native: put the checkpoint's `config.tpx_compression` first (default True).
        timing: time what each stage spends choosing its tokens (ingredients, scorer, selector) into its trace
            entry's `select_ms` (`tpx.stopwatch`: CUDA events on a GPU, so nothing waits; `perf_counter` on the
            CPU). Off by default.
        **params: the method's parameters (`get_method(name).params` lists them and their allowed values).

    Yields:
        The `Run`, whose `trace` records what every prefill kept.

    Raises:
        ValueError: for a configuration `tpx.plan` rejects (the parameter is named in the message), or a
            second context on the same model (compose plans instead).
        TypeError: for an unsupported model, or a method without a retention.
    """
    adapter = adapter_for(model)
    if not isinstance(timing, bool):
        raise ValueError(f"timing must be True or False, got {timing!r}")
    run = Run(model, adapter, _plan(model, adapter, method, retention, layer, layers, hook, seed, positions,
                                    attention, native, params, None), timing)
    run._install()
    try:
        yield run
    finally:
        run._remove()


def plan_for(model: torch.nn.Module, method: str | Method | Plan | None = None, *,
             inputs: Mapping[str, Any] | None = None, layout: Layout | None = None, retention: float | None = None,
             layer: int | None = None, layers: Sequence[int] | None = None, hook: str | None = None, seed: int = 0,
             positions: str = "keep", attention: str = "rows", native: bool = True, **params: Any) -> Plan:
    """The plan `tpx.pruning` would run on `model` (its compression first), with budgets for `inputs` (a batch
    of processor outputs) or a `layout`, or else for the model's fixed single-image layout when it has one.

    Raises:
        ValueError, TypeError: as `tpx.pruning` on entry (and, with `inputs`, as its first prefill would).
    """
    adapter = adapter_for(model)
    if inputs is not None:
        call = dict(inputs)
        layout = adapter.layout(call.pop("input_ids"), **call)
    return _plan(model, adapter, method, retention, layer, layers, hook, seed, positions, attention, native, params,
                 layout)


def reachable(model: torch.nn.Module, method: str | Method, retention: float, **kwargs: Any) -> str | None:
    """None if `method` can run at `retention` on `model` (for `inputs=` or `layout=`, if given), else the reason:
    the error `tpx.pruning` would raise. Cheap: no forward pass. `kwargs` are those of `plan_for`.
    """
    try:
        plan_for(model, method, retention=retention, **kwargs)
    except ValueError as err:
        return str(err)
    return None


def _plan(model: torch.nn.Module, adapter: Adapter, method: str | Method | Plan | None, retention: float | None,
          layer: int | None, layers: Sequence[int] | None, hook: str | None, seed: int, positions: str,
          attention: str, native: bool, params: dict[str, Any], layout: Layout | None) -> Plan:
    given = {k: v for k, v in dict(retention=retention, layer=layer, layers=layers, hook=hook).items() if v is not None}
    if isinstance(method, Plan):
        if given or params or seed != 0 or (positions, attention) != ("keep", "rows"):
            raise ValueError(f"a Plan carries its own settings; got {sorted(given) + sorted(params)} beside it")
        requested = method
    elif method is None:
        if given or params:
            raise ValueError(f"{sorted(given) + sorted(params)} given without a method")
        requested = Plan(positions=positions, attention=attention).bind()
    else:
        if retention is None:
            raise TypeError("tpx.pruning with a method needs retention=")
        requested = plan(method, retention, layer=layer, layers=layers, hook=hook, n_layers=adapter.n_layers,
                         seed=seed, positions=positions, attention=attention, **params)
    unavailable = getattr(adapter, "unavailable_ingredients", {})  # what this family's model cannot give
    for stage in requested.stages:
        for name in sorted(stage.ingredients & set(unavailable)):
            raise ValueError(f"{stage.method.name!r} at hook {stage.hook!r} is not supported on {type(model).__name__}:"
                             f" it needs {name!r}, and {unavailable[name]}")
    own = native_plan(model, requested.positions, requested.attention) if native else None
    if own is not None:
        if requested.positions == "renumber":
            raise ValueError("positions='renumber' cannot follow a checkpoint's own compression, which keeps the "
                             "original positions it was trained with; use positions='keep'")
        requested = own + requested
    if requested.positions == "renumber" and not adapter.supports_renumber:
        raise ValueError(f"positions='renumber' is not supported on {type(model).__name__}: its M-RoPE positions "
                         "are 3-D; use positions='keep'")
    missing = sorted(_vision_needs(requested) - adapter.vision_ingredients)
    if missing:
        names = ", ".join(s.method.name for s in requested.stages if set(missing) & s.ingredients)
        raise ValueError(f"{names} needs {', '.join(missing)} from the vision tower, which the "
                         f"{type(adapter).__name__} does not record (it records "
                         f"{', '.join(sorted(adapter.vision_ingredients))})")
    if requested.attention == "maps" and adapter.decoder.attn_implementation != "eager":
        raise ValueError("attention='maps' reads eager attention maps; load the model with attn_implementation='eager' "
                         f"(it uses {adapter.decoder.attn_implementation!r})")
    return requested.bind(n_layers=adapter.n_layers, layout=layout if layout is not None else adapter.nominal_layout())


def _vision_needs(plan: Plan) -> frozenset[str]:
    """The vision-tower ingredients the plan's stages need (recorded by the adapter's `vision_hooks`)."""
    return frozenset(n for s in plan.stages for n in s.ingredients if ing.INGREDIENTS[n].reads == "vision")
