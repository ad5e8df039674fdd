"""The plan: a pruning request turned into stages — layer, budget, ingredients — before anything runs.

`plan("fastv", 0.25, layer=2, n_layers=32, layout=layout)` checks every argument and returns a `Plan` whose
stages say where each pruning acts (hook, decoder layer K), how many visual tokens it keeps (`n_keep`, once
the layout is known) and which ingredients it needs; every error a configuration can have is raised here,
with the parameter named. Plans compose: `pooling_at_E + fastv_at_2` is one plan whose stages act in layer
order (a checkpoint trained with pooling, pruned further); the engine executes a plan and knows no method by
name. Analysis code asks `reachable(...)` instead of copying engine rules. Pure: no model, no transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from tpx import select
from tpx.ingredients import INGREDIENTS
from tpx.layout import Layout
from tpx.methods import Method, Needs, get_method

__all__ = ["ATTENTION", "POSITIONS", "Part", "Plan", "Selection", "Stage", "plan", "reachable"]

POSITIONS = ("keep", "renumber")
ATTENTION = ("rows", "maps")
_DEPTH = 32  # multi-stage layers in the registry are given for a 32-layer LLM (LLaVA-1.5-7B)


@dataclass(frozen=True)
class Part:
    """One method's request inside a plan: the checked arguments of one `plan` call.

    Attributes:
        method: the registry entry. retention: kept share of the N visual tokens of the input.
        hook: hook point. layer, layers: stage layer(s) as given (None: the method's default).
        seed: seed of this part's generator. params: the method's parameters, checked, defaults filled in.
        native: the compression a checkpoint was trained with (`Plan.as_native`), not a pruning asked for.
    """

    method: Method
    retention: float
    hook: str
    layer: int | None
    layers: tuple[int, ...] | None
    seed: int
    params: Mapping[str, Any]
    native: bool = False


class Selection(NamedTuple):
    """What a stage chose: `(B, N)` scores (or None), `(B, n_keep)` sorted kept indices into the N tokens it
    saw, and `(B, n_keep, D)` merged features in the order of `index` (None when tokens are only dropped)."""

    scores: torch.Tensor | None
    index: torch.Tensor
    merged: torch.Tensor | None


@dataclass(frozen=True)
class Stage:
    """One pruning stage: the engine cuts the sequence before decoder layer `layer` (0 for hooks "E" and "V").

    Attributes:
        method: the registry entry. hook: "V", "E" or "L". layer: K, the first layer that sees the result.
        index: stage number within its method (multi-stage methods count 0, 1, 2).
        part: which composed request the stage belongs to.
        retention, seed, params: of its request.
        needs: ingredients of its scorer and selector (computed, and only these, by the engine).
        seeded: whether its selection depends on the seed.
        n_keep: visual tokens left after the stage, or None until the plan knows the layout.
        native: part of a checkpoint's own compression.
    """

    method: Method
    hook: str
    layer: int
    index: int
    part: int
    retention: float
    seed: int
    params: Mapping[str, Any]
    needs: Needs
    seeded: bool
    n_keep: int | None = None
    native: bool = False

    @property
    def ingredients(self) -> frozenset[str]:
        return self.needs.all

    @property
    def reads_before(self) -> bool:
        """Whether an ingredient is read at layer K−1 (attention rows, keys)."""
        return any(INGREDIENTS[n].reads == "before" for n in self.ingredients)

    @property
    def reads_vision(self) -> bool:
        """Whether an ingredient comes from the vision tower (hook "V")."""
        return any(INGREDIENTS[n].reads == "vision" for n in self.ingredients)

    @property
    def per_segment(self) -> bool:
        """Whether the selector runs once per image segment with a share of the budget."""
        return self.method.per_segment or "grid" in self.needs.selector

    @property
    def selector_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if self.method.params[k].to == "selector"}

    @property
    def schedule_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if self.method.params[k].to == "schedule"}

    def select(self, values: Mapping[str, Any], grids: Sequence[tuple[int, int]] = ()) -> Selection:
        """Score and select from the stage's computed ingredients: how every method is called.

        `scores = scorer(**scorer ingredients)`, then `selector(scores=, n_keep=, **selector ingredients,
        **parameters)`; a per-segment stage runs the selector on each image segment with its share of the
        budget (`select.split_budget`), each ingredient sliced along its token axis. The engine calls this with
        what it computed inside the model; anything else holding the ingredients can too (the organism's
        pooled training runs its `pooling` stage on the projector's output this way).

        Args:
            values: the stage's ingredients (`ingredients.compute(stage.ingredients, context)`) over its N tokens.
            grids: `(rows, cols)` of the image segments of those N tokens.
        """
        if self.n_keep is None:
            raise ValueError("the stage's budget is unknown: bind the plan to a layout first")
        method = self.method
        scores = None if method.scorer is None else method.scorer(**{n: values[n] for n in self.needs.scorer})
        given = {n: values[n] for n in self.needs.selector}
        if scores is not None:
            given["scores"] = scores
        if self.per_segment and (len(grids) > 1 or "grid" in given):
            return Selection(scores, *_per_segment(method, given, self.selector_params, self.n_keep, grids))
        return Selection(scores, *_unpack(method.selector(**given, n_keep=self.n_keep, **self.selector_params)))


@dataclass(frozen=True)
class Plan:
    """Stages in the order they act, from one or several methods, and the run-wide settings.

    Attributes:
        parts: the requests the plan was made from (`plan` gives one; `a + b` concatenates).
        stages: every stage, in layer order.
        n_layers: decoder depth the layers were checked against (None: not yet bound to a model).
        layout: the geometry budgets were computed for (None: budgets unknown, `n_keep` None).
        positions: "keep" or "renumber". attention: "rows" or "maps".
    """

    parts: tuple[Part, ...] = ()
    stages: tuple[Stage, ...] = ()
    n_layers: int | None = None
    layout: Layout | None = None
    positions: str = "keep"
    attention: str = "rows"

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s.layer for s in self.stages)

    @property
    def budgets(self) -> tuple[int | None, ...]:
        """`n_keep` of every stage."""
        return tuple(s.n_keep for s in self.stages)

    @property
    def ingredients(self) -> frozenset[str]:
        """Every ingredient some stage needs."""
        return frozenset().union(*(s.ingredients for s in self.stages))

    def bind(self, n_layers: int | None = None, layout: Layout | None = None) -> Plan:
        """The same requests checked against a model's depth and/or an input's layout (budgets resolved).

        Raises:
            ValueError: as `plan` does.
        """
        return _derive(self.parts, self.n_layers if n_layers is None else n_layers,
                       self.layout if layout is None else layout, self.positions, self.attention)

    def as_native(self) -> Plan:
        """The same plan marked as a checkpoint's own compression (its stages' trace entries say `native`)."""
        return _derive(tuple(replace(p, native=True) for p in self.parts), self.n_layers, self.layout,
                       self.positions, self.attention)

    def __add__(self, other: Plan) -> Plan:
        """Both plans' stages in one run: `other`'s act after this one's, on what it kept.

        Raises:
            ValueError: for different positions / attention settings or depths, or stages out of layer order.
        """
        if not isinstance(other, Plan):
            return NotImplemented
        if (self.positions, self.attention) != (other.positions, other.attention):
            raise ValueError(f"composed plans need the same positions and attention, got "
                             f"{(self.positions, self.attention)} and {(other.positions, other.attention)}")
        if None not in (self.n_layers, other.n_layers) and self.n_layers != other.n_layers:
            raise ValueError(f"composed plans were made for {self.n_layers} and {other.n_layers} decoder layers")
        n_layers = self.n_layers if self.n_layers is not None else other.n_layers
        layout = self.layout if self.layout is not None else other.layout
        return _derive(self.parts + other.parts, n_layers, layout, self.positions, self.attention)

    def __str__(self) -> str:
        n = "?" if self.layout is None else self.layout.n_visual
        head = f"Plan: {len(self.stages)} stage(s), N={n}, n_layers={self.n_layers}, positions={self.positions}, " \
               f"attention={self.attention}"
        rows = [f"  {s.method.name:<12} hook {s.hook}  layer {s.layer:>2}  n_keep {'?' if s.n_keep is None else s.n_keep:>4}"
                f"  needs {', '.join(sorted(s.ingredients)) or '-'}" for s in self.stages]
        return "\n".join([head, *rows])


def plan(
    method: str | Method,
    retention: float,
    *,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    hook: str | None = None,
    n_layers: int | None = None,
    layout: Layout | None = None,
    seed: int = 0,
    positions: str = "keep",
    attention: str = "rows",
    **params: Any,
) -> Plan:
    """Check a pruning configuration and lay out its stages; every error is raised here, before any hook.

    Args:
        method: a registry name (`tpx.list_methods()`) or a `Method`.
        retention: kept share of visual tokens, in (0, 1]; `n_keep = select.budget(retention, N)` (multi-stage
            methods: their schedule's equivalent budget). In a composed plan it still counts against the N
            visual tokens of the input.
        layer: decoder layer K for hook "L" (the first layer that sees the pruned sequence); default: the
            method's. Not allowed for hooks "E" / "V", which act before layer 0.
        layers: stage layers of a multi-stage method (default: the method's, scaled to `n_layers`).
        hook: hook point, one of the method's `hooks`; default: its first.
        n_layers: decoder depth of the model (None: layers are checked when the plan is bound to a model).
        layout: the input's `Layout` (None: budgets are resolved when the engine sees the input).
        seed: seed of the generator that seeded methods draw from.
        positions: "keep" (kept tokens keep their original position ids) or "renumber" (compacted).
        attention: "rows" (recompute the needed attention rows) or "maps" (read eager attention maps).
        **params: the method's parameters (`get_method(name).params` lists them and their allowed values).

    Returns:
        The `Plan`.

    Raises:
        ValueError: for an unknown method or parameter, a value outside its domain (named in the message), a
            hook the method lacks, a layer out of range, a budget the layout cannot hold.
    """
    part = _part(method, retention, layer, layers, hook, seed, params)
    return _derive((part,), n_layers, layout, positions, attention)


def reachable(method: str | Method, retention: float, **kwargs: Any) -> str | None:
    """None if `plan(method, retention, **kwargs)` succeeds, else why not (its error message).

    Pass `n_layers` and `layout` (e.g. `tpx.models.layout(model, inputs)`) to check everything the engine would.
    """
    try:
        plan(method, retention, **kwargs)
    except ValueError as err:
        return str(err)
    return None


def _part(method: str | Method, retention: float, layer: int | None, layers: Sequence[int] | None,
          hook: str | None, seed: int, params: Mapping[str, Any]) -> Part:
    method = get_method(method)
    retention = select.check_retention(retention)
    hook = method.hook if hook is None else hook
    if hook not in method.hooks:
        raise ValueError(f"hook={hook!r} is not supported by {method.name!r}; supported: {', '.join(method.hooks)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if layer is not None and layers is not None:
        raise ValueError("pass either layer= (one stage) or layers= (several), not both")
    if hook in ("E", "V") and (layer is not None or layers is not None):
        raise ValueError(f"layer applies to hook 'L' only; {method.name!r} at hook {hook!r} acts before layer 0 "
                         "(pass hook='L' to prune inside the LLM)")
    return Part(method, retention, hook, layer, None if layers is None else tuple(layers), seed,
                method.check_params(params))


def _derive(parts: tuple[Part, ...], n_layers: int | None, layout: Layout | None, positions: str,
            attention: str) -> Plan:
    """Stages of `parts` against a depth and a layout: the one place where plans are checked."""
    select.check_choice("positions", positions, POSITIONS)
    select.check_choice("attention", attention, ATTENTION)
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        raise ValueError(f"n_layers must be an int ≥ 1, got {n_layers!r}")
    stages: list[Stage] = []
    for p, part in enumerate(parts):
        needs = part.method.needs_for(part.params)
        seeded = part.method.is_seeded(part.params)
        for i, k in enumerate(_stage_layers(part, needs, n_layers)):
            stages.append(Stage(part.method, part.hook, k, i, p, part.retention, part.seed, part.params, needs, seeded,
                                native=part.native))
    for a, b in zip(stages, stages[1:]):
        if b.hook == "V":
            raise ValueError(f"{b.method.name!r} at hook 'V' reads the vision tower's record of every visual token: "
                             f"it must be the first stage, but {a.method.name!r} acts before it")
        if b.layer <= a.layer and b.part != a.part:
            raise ValueError(
                f"composed stages must act at increasing layers: {a.method.name!r} prunes before layer {a.layer}, "
                f"so {b.method.name!r} must act later (hook 'L', layer > {a.layer}); got hook {b.hook!r}, "
                f"layer {b.layer}")
    if layout is not None:
        stages = _budgets(parts, stages, layout, n_layers)
    return Plan(tuple(parts), tuple(stages), n_layers, layout, positions, attention)


def _stage_layers(part: Part, needs: Needs, n_layers: int | None) -> tuple[int, ...]:
    method = part.method
    if part.hook in ("E", "V"):
        return (0,)
    low = 1 if any(INGREDIENTS[n].reads == "before" for n in needs.all) else 0
    if part.layer is not None:
        chosen: tuple = (part.layer,)
    elif part.layers is not None:
        chosen = part.layers
    elif method.scale_layers and n_layers != _DEPTH:
        if n_layers is None:
            raise ValueError(f"{method.name!r} places its stages relative to the model's depth: pass n_layers "
                             "(or layers=)")
        chosen = _scaled(method.layers, n_layers, low)
    else:
        chosen = method.layers
    for k in chosen:
        if isinstance(k, bool) or not isinstance(k, int) or k < low or (n_layers is not None and k >= n_layers):
            why = f"; {method.name!r} reads layer K−1, so K ≥ 1" if low else ""
            span = f"model has {n_layers} decoder layers (0..{n_layers - 1}), allowed {low}..{n_layers - 1}" \
                if n_layers is not None else f"allowed ≥ {low}"
            raise ValueError(f"layer={k} out of range: {span}{why}")
    if list(chosen) != sorted(set(chosen)):
        raise ValueError(f"layers must be strictly increasing, got {tuple(chosen)}")
    if len(chosen) != len(method.layers) and (method.schedule is None or len(chosen) == 0):
        raise ValueError(f"{method.name!r} prunes at {len(method.layers)} layer(s); got layers {tuple(chosen)}")
    return tuple(chosen)


def _scaled(layers: Sequence[int], n_layers: int, low: int) -> tuple[int, ...]:
    """Stage layers given for a 32-layer LLM, moved to the same relative depth of a shallower/deeper one."""
    out: list[int] = []
    for k in layers:
        out.append(max(low, round(k * n_layers / _DEPTH), out[-1] + 1 if out else low))
    if out[-1] >= n_layers:
        raise ValueError(f"a {n_layers}-layer model is too shallow for {len(layers)} pruning stages; pass layers=")
    return tuple(out)


def _budgets(parts: tuple[Part, ...], stages: list[Stage], layout: Layout, n_layers: int | None) -> list[Stage]:
    """`n_keep` of every stage for `layout`, with the checks that need it."""
    n = layout.n_visual
    if n < 1:
        raise ValueError("the input holds no visual tokens to prune")
    out: list[Stage] = []
    left, by = n, None  # tokens reaching the next stage, and the stage that left them
    for p, part in enumerate(parts):
        mine = [s for s in stages if s.part == p]
        for stage, n_keep in zip(mine, _counts(part, mine, n, n_layers), strict=True):
            m = stage.method
            if n_keep > left:
                raise ValueError(
                    f"{m.name!r} at retention={part.retention:g} keeps {n_keep} of the {n} visual tokens, but only "
                    f"{left} reach layer {stage.layer} ({by.method.name!r} at layer {by.layer} kept them); "
                    f"use retention ≤ {left / n:.4g}")
            if stage.per_segment and left < n:
                raise ValueError(f"{m.name!r} selects on the image grid, which needs all {n} visual tokens; "
                                 f"{by.method.name!r} leaves {left}")
            for key, value in stage.params.items():
                if m.params[key].at_most_tokens and value > left:
                    raise ValueError(f"{key} must be at most the {left} visual tokens {m.name!r} sees, got {value}")
            if m.grid_check is not None and layout.grids:
                shares = select.split_budget(n_keep, layout.sizes) if len(layout.grids) > 1 else [n_keep]
                for grid, share in zip(layout.grids, shares, strict=True):
                    m.grid_check(share, grid)
            out.append(replace(stage, n_keep=n_keep))
            left, by = n_keep, stage
    return out


def _counts(part: Part, stages: list[Stage], n: int, n_layers: int | None) -> list[int]:
    m = part.method
    if m.schedule is None:
        return [select.budget(part.retention, n)]
    layers = [s.layer for s in stages]
    counts = [int(k) for k in m.schedule(part.retention, n, len(layers), layers=layers, n_layers=n_layers,
                                         **stages[0].schedule_params)]
    if len(counts) != len(layers) or any(not 1 <= k <= n for k in counts) or counts != sorted(counts, reverse=True):
        raise ValueError(f"{m.name!r} schedule gave {counts} for {len(layers)} stages of {n} tokens; "
                         "it must give one non-increasing count in [1, N] per stage")
    return counts


def _per_segment(method: Method, given: dict[str, Any], params: dict[str, Any], n_keep: int,
                 grids: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not grids:
        raise ValueError(f"{method.name!r} selects per image segment, but the layout has no grids")
    sizes = [r * c for r, c in grids]
    shares = select.split_budget(n_keep, sizes) if len(sizes) > 1 else [n_keep]
    indices, features = [], []
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    for grid, size, share, start in zip(grids, sizes, shares, starts, strict=True):
        if share == 0:  # a budget below the number of segments leaves some of them nothing (split_budget)
            continue
        part = {}
        for name, x in given.items():
            axis = "token" if name == "scores" else INGREDIENTS[name].axis
            if axis == "token":
                x = x[:, start:start + size]
            elif axis == "key":
                x = x[..., start:start + size]
            part[name] = x
        if "grid" in part:
            part["grid"] = grid
        index, merged = _unpack(method.selector(**part, n_keep=share, **params))
        indices.append(index + start)
        features.append(merged)
    return torch.cat(indices, dim=1), None if features[0] is None else torch.cat(features, dim=1)


def _unpack(result: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(result, select.Merged):
        return result.index, result.features
    return result, None
