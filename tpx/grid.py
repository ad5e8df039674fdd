"""The experiment grid: which configurations an evaluation runs, named once.

A configuration is a method at a hook point and decoder layer K, a retention, a seed and method parameters,
with a label that tells variants apart (DART's pivot rules, α values, a hook-E row beside hook L). `grid`
expands methods × hooks × K × retentions × seeds into configurations the way a careful comparison needs:
the unpruned model once, deterministic methods once, seeded ones over every seed, and hook "E"/"V" rows only
once (they act before layer 0, so K does not apply). `tpx.evaluate.evaluate(configs=...)` runs them.

The concepts defined here and imported everywhere else: `UNPRUNED` (the baseline's label), `seeded` (does a
configuration's kept set depend on its seed).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UNPRUNED", "Config", "grid", "label_of", "seeded", "unpruned"]

UNPRUNED = "unpruned"


def seeded(method: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether `method` with `params` draws from the run's generator (random selection, DART's random pivots).

    A method entry that declares `seeded` is believed; otherwise a scorer or selector that takes a
    `generator` is seeded, unless its `pivot` parameter names a deterministic rule.
    """
    from tpx.methods import get_method

    m = get_method(method)
    params = dict(m.defaults, **(params or {}))
    declared = getattr(m, "seeded", None)
    if callable(declared):
        return bool(declared(params))
    if isinstance(declared, bool) and "pivot" not in params:
        return declared
    takes = any(fn is not None and "generator" in inspect.signature(fn).parameters for fn in (m.scorer, m.selector))
    return takes and params.get("pivot", "random") == "random"


def label_of(method: str, hook: str | None = None, layer: int | None = None, params: Mapping[str, Any] | None = None,
             default_hook: str | None = None) -> str:
    """A readable label: the method, its parameters, and the hook when it is not the method's default."""
    parts = [method]
    if params:
        parts.append(",".join(f"{k}={v}" for k, v in sorted(params.items())))
    if hook is not None and hook != default_hook:
        parts.append(f"@{hook}")
    return " ".join(parts) if len(parts) > 1 else method


@dataclass(frozen=True)
class Config:
    """One cell of an experiment grid.

    Attributes:
        method: registry name, or `UNPRUNED`.
        retention: kept share in (0, 1] (1.0 for the baseline).
        hook: "V", "E" or "L"; None: the method's default.
        layer: decoder layer K for hook "L"; None: the method's default (multi-stage: its scaled stages).
        seed: the run's seed.
        params: method parameters, as sorted (name, value) pairs (hashable; see `kwargs`).
        label: names the configuration in result rows and comparisons.
    """

    method: str
    retention: float = 1.0
    hook: str | None = None
    layer: int | None = None
    seed: int = 0
    params: tuple[tuple[str, Any], ...] = field(default=())
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", UNPRUNED if self.method == UNPRUNED
                               else label_of(self.method, params=dict(self.params)))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tpx.pruning` for this configuration (retention and seed included)."""
        out: dict[str, Any] = {"retention": self.retention, "seed": self.seed, **dict(self.params)}
        if self.hook is not None:
            out["hook"] = self.hook
        if self.layer is not None:
            out["layer"] = self.layer
        return out


def unpruned(seed: int = 0, label: str = UNPRUNED) -> Config:
    """The baseline configuration."""
    return Config(UNPRUNED, 1.0, seed=seed, label=label)


def _entries(methods: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    if isinstance(methods, Mapping):
        out = {}
        for label, entry in methods.items():
            entry = dict(entry)
            if "method" not in entry:
                raise ValueError(f"variant {label!r} must name its 'method', got {entry}")
            out[label] = (entry.pop("method"), entry)
        return out
    return {m: (m, {}) for m in methods if m not in (None, UNPRUNED)}


def grid(methods: Sequence[str] | Mapping[str, Mapping[str, Any]], retentions: Sequence[float], *,
         layers: Sequence[int | None] = (None,), hooks: Sequence[str | None] = (None,), seeds: Sequence[int] = (0,),
         baseline: bool = True, label_depth: bool | None = None) -> list[Config]:
    """Expand methods × hooks × K × retentions × seeds into configurations.

    Args:
        methods: registry names, or labelled variants `{label: {"method": name, **params}}`.
        retentions: kept shares. seeds: pruning seeds (seeded configurations run all, others the first).
        layers: K values for hook-"L" single-stage methods (None: the method's default). Methods that do not
            act at hook "L", or that have their own multi-stage layers, run once whatever `layers` holds.
        hooks: hook points to try for each method (None: its default); a hook a method does not support is
            skipped for that method.
        baseline: add the unpruned model first.
        label_depth: append the hook and K to every label ("fastv @L2", "random @E"); None (default): when
            the grid holds several hooks or several K, so that a label always names one configuration.

    Returns:
        Configurations in order, without duplicates.
    """
    from tpx.methods import get_method

    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    out = [unpruned(seeds[0])] if baseline else []
    if label_depth is None:
        label_depth = len(set(layers)) > 1 or len(set(hooks)) > 1
    for label, (name, params) in _entries(methods).items():
        m = get_method(name)
        for hook in hooks:
            h = hook or m.hooks[0]
            if h not in m.hooks:
                continue
            ks: Iterable[int | None] = layers if h == "L" and m.schedule is None else (None,)
            for k in ks:
                for r in retentions:
                    for s in (seeds if seeded(name, params) else seeds[:1]):
                        lab = f"{label} @{h}{'' if k is None else k}" if label_depth else label
                        out.append(Config(name, float(r), hook, k, int(s), tuple(sorted(params.items())), lab))
    return list(dict.fromkeys(out))
