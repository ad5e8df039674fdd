"""The registry of pruning methods, keyed by the names the literature uses.

A method is data: where it acts (hook point), at which decoder layer(s), which scorer and selector it calls,
the ingredients each of them takes (`needs`, names from `tpx.ingredients.INGREDIENTS`), whether its choice
depends on the seed, and its parameters with the values they allow. Adding a method is one entry here plus
pure functions in `tpx.scores` / `tpx.select` (and, for a tensor no method used before, one entry in
`tpx.ingredients`); no engine or model code. Hook points: "V" vision side before the projector, "E" the LLM's
input embeddings (before decoder layer 0), "L" inside the LLM before decoder layer K.

How the engine calls a method at a stage: `scores = scorer(**its ingredients)`; then
`selector(scores=scores, n_keep=budget, **its ingredients, **its parameters)` (no `scores` without a
scorer). Ingredients and parameters are separate namespaces: a parameter may not be named like an ingredient.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from tpx import dedup, merge, schedules, scores, select, select_diverse
from tpx.ingredients import INGREDIENTS

__all__ = ["METHODS", "Method", "MethodInfo", "Needs", "Param", "get_method", "list_methods", "register", "variant"]

Hook = Literal["V", "E", "L"]
HOOKS: tuple[Hook, ...] = ("V", "E", "L")
# names that belong to the engine's call or to `tpx.pruning` / `tpx.plan`, never to a method's parameters
RESERVED = frozenset({"scores", "n_keep", "retention", "seed", "layer", "layers", "hook", "positions", "attention",
                      "n_layers", "layout", "native", "timing"})


class Needs(NamedTuple):
    """Ingredients a method's scorer and selector take (keyword arguments named as in `INGREDIENTS`)."""

    scorer: tuple[str, ...] = ()
    selector: tuple[str, ...] = ()

    @property
    def all(self) -> frozenset[str]:
        return frozenset(self.scorer) | frozenset(self.selector)


@dataclass(frozen=True)
class Param:
    """One method parameter: its default, the values it allows, and which function receives it.

    Build with the constructors (`Param.unit(0.2)`, `Param.count(4, low=1)`, ...); `check` raises a
    `ValueError` that names the parameter, its value and what is allowed.

    Attributes:
        default: the registry's value.
        kind: "unit" (a number in [0, 1]), "count" (an int ≥ `low`), "flag" (True / False), "choice" (one of
            `choices`), "window" (an int ≥ 1 or a `(height, width)` pair), "shares" (non-increasing numbers in
            (0, 1], one per stage).
        low: smallest count. choices: allowed strings.
        at_most_tokens: a count that may not exceed the visual tokens its stage sees (checked by the plan once
            the layout is known).
        to: the function that receives it: "selector" or "schedule".
    """

    default: Any
    kind: Literal["unit", "count", "flag", "choice", "window", "shares"]
    low: int = 0
    choices: tuple[str, ...] = ()
    at_most_tokens: bool = False
    to: Literal["selector", "schedule"] = "selector"

    @classmethod
    def unit(cls, default: float) -> Param:
        return cls(default, "unit")

    @classmethod
    def count(cls, default: int, low: int = 0, at_most_tokens: bool = False) -> Param:
        return cls(default, "count", low=low, at_most_tokens=at_most_tokens)

    @classmethod
    def flag(cls, default: bool) -> Param:
        return cls(default, "flag")

    @classmethod
    def choice(cls, default: str, choices: Sequence[str]) -> Param:
        return cls(default, "choice", choices=tuple(choices))

    @classmethod
    def window(cls, default: int | tuple[int, int]) -> Param:
        return cls(default, "window")

    @classmethod
    def shares(cls, default: Sequence[float], to: Literal["selector", "schedule"] = "schedule") -> Param:
        return cls(tuple(default), "shares", to=to)

    def check(self, name: str, value: Any) -> Any:
        """`value` if it is allowed (as the function expects it); otherwise `ValueError` naming `name`."""
        if self.kind == "unit":
            return select.check_unit(name, value)
        if self.kind == "count":
            return select.check_count(name, value, self.low)
        if self.kind == "flag":
            return select.check_flag(name, value)
        if self.kind == "choice":
            return select.check_choice(name, value, self.choices)
        if self.kind == "window":
            sides = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
            if (not isinstance(sides, Sequence) or isinstance(sides, str) or len(sides) != 2
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides)):
                raise ValueError(f"{name} must be an int ≥ 1 or a (height, width) pair of them, got {value!r}")
            return value if isinstance(value, int) else tuple(value)
        values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
        if (not values or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in values)
                or list(values) != sorted(values, reverse=True)):
            raise ValueError(f"{name} must be non-increasing numbers in (0, 1], one per stage, got {value!r}")
        return tuple(float(x) for x in values)


@dataclass(frozen=True)
class Method:
    """One pruning method.

    Attributes:
        name: registry key (the literature's name, lower snake case).
        hooks: hook points the method supports; the first is its default.
        layers: default decoder layer(s) K for hook "L" (0-based: layer K is the first to see the pruned
            sequence); empty for methods without an "L" hook.
        scorer: pure function returning `(B, N)` scores, or None for methods that do not score (pooling).
        selector: pure function returning kept indices or a `select.Merged`.
        needs: the ingredients the scorer and the selector take, or a function of the method's parameters
            giving them (so that, e.g., α's "last" reading never pays for keys).
        seeded: whether the kept set depends on the run's seed, or a function of the parameters saying so; a
            seeded method must need "generator".
        params: the method's parameters (`Param`); `tpx.pruning` accepts exactly these keys.
        paper: citation of the method's source.
        schedule: for multi-stage methods, a pure function `(retention, n_visual, n_stages, *, layers, n_layers,
            **params) -> list[int]` giving the tokens kept after each stage; None for single-stage methods.
        scale_layers: multi-stage layers are given for a 32-layer LLM (LLaVA-1.5-7B) and scaled to the model's
            depth; single-stage layers (FastV's K = 2) are absolute.
        per_segment: select inside each image segment (AnyRes crop, image) with a proportional share of the
            budget, as FasterVLM and VisionZip do per crop; selectors that need "grid" always do.
        grid_check: `(n_keep, grid) -> None`, raising `ValueError` when the selector cannot keep `n_keep`
            tokens of a segment with this grid (pooling's exact output grid), so the plan can say so first.
    """

    name: str
    hooks: tuple[Hook, ...]
    layers: tuple[int, ...]
    scorer: Callable[..., Any] | None
    selector: Callable[..., Any]
    needs: Needs | Callable[[Mapping[str, Any]], Needs]
    seeded: bool | Callable[[Mapping[str, Any]], bool]
    params: Mapping[str, Param] = field(default_factory=dict)
    paper: str = ""
    schedule: Callable[..., list[int]] | None = None
    scale_layers: bool = False
    per_segment: bool = False
    grid_check: Callable[[int, tuple[int, int]], Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        bad = [h for h in self.hooks if h not in HOOKS]
        if not self.hooks or bad:
            raise ValueError(f"hooks must be a non-empty subset of {HOOKS}, got {self.hooks}")
        clash = sorted(set(self.params) & (set(INGREDIENTS) | RESERVED))
        if clash:
            raise ValueError(f"{self.name!r}: parameter name(s) {clash} are taken by ingredients or by tpx.pruning")
        for key, spec in self.params.items():
            spec.check(key, spec.default)
        self.needs_for(self.defaults)

    @property
    def hook(self) -> Hook:
        """The default hook point."""
        return self.hooks[0]

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Parameter name → default value."""
        return MappingProxyType({k: p.default for k, p in self.params.items()})

    @property
    def ingredients(self) -> tuple[str, ...]:
        """Ingredients the method needs at its default parameters."""
        return tuple(sorted(self.needs_for(self.defaults).all))

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All parameters, `given` over the defaults, each checked.

        Raises:
            ValueError: for an unknown name (listing the allowed ones) or a value outside its domain.
        """
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"unknown parameter(s) {unknown} for method {self.name!r}; allowed: {allowed}")
        return {k: spec.check(k, given.get(k, spec.default)) for k, spec in self.params.items()}

    def needs_for(self, params: Mapping[str, Any]) -> Needs:
        """The ingredients needed with these (checked) parameters.

        Raises:
            ValueError: for an ingredient name that is not in `tpx.ingredients.INGREDIENTS`, or a seeded
                method that does not need "generator".
        """
        needs = self.needs(params) if callable(self.needs) else self.needs
        unknown = sorted(needs.all - set(INGREDIENTS))
        if unknown:
            raise ValueError(f"{self.name!r} needs unknown ingredient(s) {unknown}; known: {', '.join(INGREDIENTS)}")
        if self.is_seeded(params) and "generator" not in needs.all:
            raise ValueError(f"{self.name!r} is seeded but needs no 'generator'")
        return needs

    def is_seeded(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether the kept set depends on the seed, with these parameters (default: the defaults)."""
        params = self.defaults if params is None else params
        return bool(self.seeded(params) if callable(self.seeded) else self.seeded)


_FASTV = "Chen et al., An Image is Worth 1/2 Tokens After Layer 2, ECCV 2024, arXiv 2403.06764"
_STUDY = "Wen et al., Token Pruning in MLLMs: Are We Solving the Right Problem?, Findings of ACL 2025, arXiv 2502.11501"
_DART = (
    "Wen et al., Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More (DART),"
    " EMNLP 2025, arXiv 2502.11494"
)
_SPARSEVLM = (
    "Zhang et al., SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference,"
    " ICML 2025, arXiv 2410.04417"
)
_PDROP = (
    "Xing et al., PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy Reduction,"
    " CVPR 2025, arXiv 2410.17247"
)
_DIVPRUNE = (
    "Alvar et al., DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models,"
    " CVPR 2025, arXiv 2503.02175"
)
_FASTERVLM = (
    "Zhang et al., [CLS] Attention is All You Need for Training-Free Visual Token Pruning (FasterVLM),"
    " 2024, arXiv 2412.01818"
)
_VISIONZIP = (
    "Yang et al., VisionZip: Longer is Better but Not Necessary in Vision Language Models,"
    " CVPR 2025, arXiv 2412.04467"
)
_CDPRUNER = "Zhang et al., Maximizing Conditional Diversity for Token Pruning (CDPruner), NeurIPS 2025, arXiv 2506.10967"
_VISPRUNER = "Zhang et al., Exploiting Visual Cues for Effective Token Pruning (VisPruner), ICCV 2025, arXiv 2412.01818"
_HIPRUNE = "Liu et al., HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention, 2025, arXiv 2508.00553"
_IDPRUNER = "IDPruner: Harmonizing Importance and Diversity in Visual Token Pruning for MLLMs, 2026, arXiv 2602.13315"
_DOWNSAMPLE = (
    "Liao et al., Are We Using the Right Benchmark: An Evaluation Framework for Visual Token Compression Methods"
    " (VTC-Bench), arXiv 2510.07143 (downsampling baseline); Peng et al., Can Visual Input Be Compressed?"
    " (UniPruneBench), arXiv 2511.02650"
)
_DART_TEXT = ("normed_features", "normed_text", "text_mask", "text_keys")


def _alpha_needs(p: Mapping[str, Any]) -> Needs:
    """α = 1 is FastV (no uniqueness); "last" compares with the last token, "dup" with DART's pivots."""
    if p["alpha"] == 1.0:
        return Needs(scorer=("attn_last",))
    if p["uniqueness"] == "last":
        return Needs(scorer=("attn_last",), selector=("features", "last_feature"))
    return Needs(scorer=("attn_last",), selector=(*_DART_TEXT, "visual_keys"))


def _dart_needs(p: Mapping[str, Any]) -> Needs:
    extra = (("generator",) if p["pivot"] == "random" else ()) + (
        ("visual_positions", "text_positions") if p["pivot_order"] == "python_set" else ())
    return Needs(scorer=("visual_keys",), selector=_DART_TEXT + extra)


def _sparsevlm_needs(p: Mapping[str, Any]) -> Needs:
    return Needs(scorer=("attn_text", "text_mask"), selector=("features",) if p["recycle"] else ())


_PIVOTS = {"n_visual_pivots": Param.count(4, low=1, at_most_tokens=True), "n_text_pivots": Param.count(4, low=0)}

METHODS: dict[str, Method] = {
    "random": Method(
        name="random", hooks=("E", "L"), layers=(2,), scorer=scores.random_scores, selector=select.topk,
        needs=Needs(scorer=("features", "generator")), seeded=True, paper=_STUDY + " (random baseline)",
    ),
    "pooling": Method(
        name="pooling", hooks=("E", "L"), layers=(2,), scorer=None, selector=select.pool2d,
        needs=Needs(selector=("features", "grid")), seeded=False, grid_check=select.pool_grid,
        paper=_STUDY + " (2-D average pooling baseline)",
    ),
    # the downsampling baseline: the pre-projector patch grid averaged (select.downsample says why not a resize)
    "downsample": Method(
        name="downsample", hooks=("V",), layers=(), scorer=None, selector=select.downsample,
        needs=Needs(selector=("vision_features", "grid")), seeded=False, grid_check=select.pool_grid,
        paper=_DOWNSAMPLE,
    ),
    "fastv": Method(
        name="fastv", hooks=("L",), layers=(2,), scorer=scores.last_token_attention, selector=select.topk,
        needs=Needs(scorer=("attn_last",)), seeded=False, paper=_FASTV,
    ),
    "fastv_vis": Method(
        name="fastv_vis", hooks=("L",), layers=(2,), scorer=scores.last_visual_attention, selector=select.topk,
        needs=Needs(scorer=("attn_last_visual",)), seeded=False, paper=_STUDY + " (FastV_VIS, Q3)",
    ),
    "window_fastv": Method(
        name="window_fastv", hooks=("L",), layers=(2,), scorer=scores.last_token_attention,
        selector=select.window_topk, needs=Needs(scorer=("attn_last",), selector=("grid",)), seeded=False,
        params={"window": Param.window(2)}, paper=_STUDY + " (Window FastV, Q1)",
    ),
    # alpha = 0.2: the best mean relative score over the four benchmarks of the study's Table 6 (93.9%)
    "alpha": Method(
        name="alpha", hooks=("L",), layers=(2,), scorer=scores.last_token_attention, selector=dedup.alpha_mix,
        needs=_alpha_needs, seeded=False,
        params={"alpha": Param.unit(0.2), "uniqueness": Param.choice("dup", dedup.UNIQUENESS),
                "n_visual_pivots": Param.count(4, low=0, at_most_tokens=True), "n_text_pivots": Param.count(4, low=0)},
        paper=_STUDY + " (importance vs. uniqueness, Q4, Eq. 6)",
    ),
    # SparseVLM prunes inside its layers 2, 6 and 15 with their own attention: tpx's K = 3, 7, 16 are the first
    # layers that see the pruned sequence, and the scores come from K − 1 = 2, 6, 15 (tpx's convention)
    "sparsevlm": Method(
        name="sparsevlm", hooks=("L",), layers=(3, 7, 16), scorer=scores.text_rater_attention,
        selector=merge.topk_recycle, needs=_sparsevlm_needs, seeded=False, params={"recycle": Param.flag(False)},
        paper=_SPARSEVLM, schedule=schedules.sparsevlm_schedule, scale_layers=True,
    ),
    "pdrop": Method(
        name="pdrop", hooks=("L",), layers=(8, 16, 24), scorer=scores.last_token_attention, selector=select.topk,
        needs=Needs(scorer=("attn_last",)), seeded=False, params={"ratios": Param.shares((0.5, 0.25, 0.125))},
        paper=_PDROP, schedule=schedules.pyramid_schedule, scale_layers=True,
    ),
    "dart": Method(
        name="dart", hooks=("L",), layers=(2,), scorer=scores.key_norm, selector=dedup.pivot_duplication,
        needs=_dart_needs, seeded=lambda p: p["pivot"] == "random",
        params={**_PIVOTS, "exact_budget": Param.flag(True), "pivot": Param.choice("max", dedup.PIVOTS),
                "pivot_order": Param.choice("rank", dedup.PIVOT_ORDERS)},
        paper=_DART,
    ),
    "divprune": Method(
        name="divprune", hooks=("E",), layers=(), scorer=None, selector=dedup.max_min_diversity,
        needs=Needs(selector=("features",)), seeded=False, paper=_DIVPRUNE,
    ),
    "fastervlm": Method(
        name="fastervlm", hooks=("V",), layers=(), scorer=scores.cls_attention, selector=select.topk,
        needs=Needs(scorer=("cls_attn",)), seeded=False, paper=_FASTERVLM, per_segment=True,
    ),
    "visionzip": Method(
        name="visionzip", hooks=("V",), layers=(), scorer=scores.cls_attention, selector=merge.dominant_contextual,
        needs=Needs(scorer=("cls_attn",), selector=("vision_keys", "vision_features")), seeded=False,
        params={"dominant_share": Param.unit(54 / 64)}, paper=_VISIONZIP, per_segment=True,
    ),
    # relevance from the LLM's input embeddings (llava-hf ships no CLIP text tower); DPP per image segment
    "cdpruner": Method("cdpruner", ("E",), (), scores.instruction_relevance, select_diverse.conditional_dpp,
                       Needs(("features", "text_features", "text_mask"), ("features",)), False, paper=_CDPRUNER,
                       per_segment=True),
    "vispruner": Method("vispruner", ("V",), (), scores.cls_attention, select_diverse.important_diverse,
                        Needs(("cls_attn",), ("vision_features",)), False, {"important_share": Param.unit(0.5)},
                        paper=_VISPRUNER, per_segment=True),
    # anchors at the tower's object layer (CLIP-L's 9 of 24: ingredients.OBJECT_DEPTH), registers at its feature layer
    "hiprune": Method("hiprune", ("V",), (), scores.received_attention, select_diverse.anchor_buffer_register,
                      Needs(("vision_received",), ("vision_received_object", "grid")), False,
                      {"anchor_share": Param.unit(0.1)}, paper=_HIPRUNE),
    # importance from [CLS] attention: the official trained scorer has no weights for these models
    "idpruner": Method("idpruner", ("V",), (), scores.cls_attention, select_diverse.marginal_relevance,
                       Needs(("cls_attn",), ("vision_features",)), False, {"importance_weight": Param.unit(0.5)},
                       paper=_IDPRUNER, per_segment=True),
}


def get_method(name: str | Method) -> Method:
    """Look a method up by name (a `Method` is returned as it is).

    Raises:
        ValueError: for an unknown name; the message suggests the closest match and lists the known ones.
    """
    if isinstance(name, Method):
        return name
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(str(name), list(METHODS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} known: {', '.join(sorted(METHODS))}")


class MethodInfo(NamedTuple):
    """A registry entry at a glance: its hook points (default first), default layer(s), parameter defaults, source."""

    name: str
    hooks: tuple[str, ...]
    layers: tuple[int, ...]
    defaults: dict[str, Any]
    source: str


def list_methods(pattern: str = "*", *, details: bool = False) -> list[str] | list[MethodInfo]:
    """Registered method names matching a shell-style `pattern`, sorted; with `details=True`, a `MethodInfo`
    (hooks, layers, defaults, source) for each instead."""
    names = sorted(n for n in METHODS if fnmatch.fnmatch(n, pattern))
    if not details:
        return names
    return [MethodInfo(n, METHODS[n].hooks, METHODS[n].layers, dict(METHODS[n].defaults), METHODS[n].paper)
            for n in names]


def register(method: Method) -> Method:
    """Add a method to the registry; a name that is already taken is an error (use `variant` to derive a
    changed copy under a new name)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def variant(name: str, new_name: str, *, defaults: Mapping[str, Any] | None = None, **changes: Any) -> Method:
    """A copy of a registered method with some fields (and parameter defaults) changed, under a new name
    (not registered).

    Raises:
        ValueError: for a default of a parameter the method does not have, or outside its domain.
    """
    method = get_method(name)
    if defaults:
        method.check_params(defaults)
        changes["params"] = {k: dataclasses.replace(p, default=defaults.get(k, p.default))
                             for k, p in method.params.items()}
    return dataclasses.replace(method, name=new_name, **changes)
