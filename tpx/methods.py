"""The registry of pruning methods, keyed by the names the literature uses.

A method is data: where it acts (hook point), at which decoder layer(s), which scorer and selector it calls
and with which defaults. Adding a method is one entry here plus pure functions in `tpx.scores` /
`tpx.select`; no model code. Hook points: "V" vision side before the projector, "E" the LLM's input
embeddings (before decoder layer 0), "L" inside the LLM before decoder layer K.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from tpx import dedup, merge, schedules, scores, select

__all__ = ["METHODS", "Method", "get_method", "list_methods", "register", "variant"]

Hook = Literal["V", "E", "L"]


@dataclass(frozen=True)
class Method:
    """One pruning method.

    Attributes:
        name: registry key (the literature's name, lower snake case).
        hooks: hook points the method supports; the first is its default.
        layers: default decoder layer(s) K for hook "L" (0-based: layer K is the first to see the pruned
            sequence); empty for methods without an "L" hook.
        scorer: pure function returning `(B, N)` scores, or None for methods that do not score (pooling);
            its argument names name the ingredients it needs.
        selector: pure function returning kept indices or a `select.Merged`.
        defaults: method parameters and their default values; `tpx.pruning` accepts exactly these keys.
        paper: citation of the method's source.
        schedule: for multi-stage methods, a pure function `(retention, n_visual, n_stages, **params) ->
            list[int]` giving the tokens kept after each stage; None for single-stage methods.
        scale_layers: multi-stage layers are given for a 32-layer LLM (LLaVA-1.5-7B) and scaled to the model's
            depth; single-stage layers (FastV's K = 2) are absolute.
        per_segment: select inside each image segment (AnyRes crop, image) with a proportional share of the
            budget, as FasterVLM and VisionZip do per crop; selectors that take `grid` always do.
    """

    name: str
    hooks: tuple[Hook, ...]
    layers: tuple[int, ...]
    scorer: Callable[..., Any] | None
    selector: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    paper: str = ""
    schedule: Callable[..., list[int]] | None = None
    scale_layers: bool = False
    per_segment: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        bad = [h for h in self.hooks if h not in ("V", "E", "L")]
        if not self.hooks or bad:
            raise ValueError(f"hooks must be a non-empty subset of ('V', 'E', 'L'), got {self.hooks}")

    @property
    def hook(self) -> Hook:
        """The default hook point."""
        return self.hooks[0]

    @property
    def ingredients(self) -> tuple[str, ...]:
        """Names of the tensors the scorer asks the engine for."""
        if self.scorer is None:
            return ()
        return tuple(inspect.signature(self.scorer).parameters)

    @property
    def needs_attention(self) -> bool:
        """Whether scoring reads attention rows of layer K−1 (then K must be ≥ 1)."""
        return any(name.startswith("attn_") for name in self.ingredients)


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

METHODS: dict[str, Method] = {
    "random": Method(
        name="random", hooks=("E", "L"), layers=(2,), scorer=scores.random_scores, selector=select.topk,
        paper=_STUDY + " (random baseline)",
    ),
    "pooling": Method(
        name="pooling", hooks=("E", "L"), layers=(2,), scorer=None, selector=select.pool2d,
        paper=_STUDY + " (2-D average pooling baseline)",
    ),
    "fastv": Method(
        name="fastv", hooks=("L",), layers=(2,), scorer=scores.last_token_attention, selector=select.topk,
        paper=_FASTV,
    ),
    "fastv_vis": Method(
        name="fastv_vis", hooks=("L",), layers=(2,), scorer=scores.last_visual_attention, selector=select.topk,
        paper=_STUDY + " (FastV_VIS, Q3)",
    ),
    "window_fastv": Method(
        name="window_fastv", hooks=("L",), layers=(2,), scorer=scores.last_token_attention,
        selector=select.window_topk, defaults={"window": 2}, paper=_STUDY + " (Window FastV, Q1)",
    ),
    # alpha = 0.2: the best mean relative score over the four benchmarks of the study's Table 6 (93.9%)
    "alpha": Method(
        name="alpha", hooks=("L",), layers=(2,), scorer=scores.last_token_attention, selector=dedup.alpha_mix,
        defaults={"alpha": 0.2, "uniqueness": "dup", "n_visual_pivots": 4, "n_text_pivots": 4},
        paper=_STUDY + " (importance vs. uniqueness, Q4, Eq. 6)",
    ),
    # SparseVLM prunes inside layers 2, 6 and 15 with their own attention: the next layers (K = 3, 7, 16) see
    # the pruned sequence and the scores come from K − 1, tpx's convention
    "sparsevlm": Method(
        name="sparsevlm", hooks=("L",), layers=(3, 7, 16), scorer=scores.text_rater_attention,
        selector=merge.topk_recycle, defaults={"recycle": False}, paper=_SPARSEVLM,
        schedule=schedules.sparsevlm_schedule, scale_layers=True,
    ),
    "pdrop": Method(
        name="pdrop", hooks=("L",), layers=(8, 16, 24), scorer=scores.last_token_attention, selector=select.topk,
        defaults={"ratios": (0.5, 0.25, 0.125)}, paper=_PDROP, schedule=schedules.pyramid_schedule, scale_layers=True,
    ),
    "dart": Method(
        name="dart", hooks=("L",), layers=(2,), scorer=scores.key_norm, selector=dedup.pivot_duplication,
        defaults={"n_visual_pivots": 4, "n_text_pivots": 4, "exact_budget": True, "pivot": "max"},
        paper=_DART,
    ),
    "divprune": Method(
        name="divprune", hooks=("E",), layers=(), scorer=None, selector=dedup.max_min_diversity, paper=_DIVPRUNE,
    ),
    "fastervlm": Method(
        name="fastervlm", hooks=("V",), layers=(), scorer=scores.cls_attention, selector=select.topk, paper=_FASTERVLM,
        per_segment=True,
    ),
    "visionzip": Method(
        name="visionzip", hooks=("V",), layers=(), scorer=scores.cls_attention, selector=merge.dominant_contextual,
        defaults={"dominant_share": 54 / 64}, paper=_VISIONZIP, per_segment=True,
    ),
}


def get_method(name: str) -> Method:
    """Look a method up by name.

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


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in METHODS if fnmatch.fnmatch(n, pattern))


def register(method: Method) -> Method:
    """Add a method to the registry; a name that is already taken is an error (use `dataclasses.replace`
    to derive a variant under a new name)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def variant(name: str, new_name: str, **changes: Any) -> Method:
    """A copy of a registered method with some fields changed, under a new name (not registered)."""
    return dataclasses.replace(get_method(name), name=new_name, **changes)
