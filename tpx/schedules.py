"""Schedules of multi-stage methods: how many visual tokens survive each pruning stage.

A schedule is a pure function `(retention, n_visual, n_stages, *, layers, n_layers, **params) -> list[int]`
(the plan passes the stage layers and the model's depth; a schedule that needs neither ignores them). For
multi-stage methods `retention` is the *equivalent* budget: the visual tokens per decoder layer averaged over
the LLM's layers, divided by N — the way SparseVLM and PyramidDrop are compared with single-stage methods at
"192/128/64 tokens".

Papers covered:
    SparseVLM: Zhang et al., ICML 2025, arXiv 2410.04417.
    PyramidDrop: Xing et al., CVPR 2025, arXiv 2410.17247.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tpx.select import check_retention, round_count

__all__ = ["pyramid_schedule", "sparsevlm_schedule"]


def sparsevlm_schedule(retention: float, n_visual: int, n_stages: int = 3, **params: Any) -> list[int]:
    """SparseVLM's per-stage counts: visual tokens kept after each of its three pruning layers.

    `retention` is the *equivalent* budget the SparseVLM paper reports: the number of visual tokens per
    decoder layer averaged over a 32-layer LLM with stages at the paper's layers 2, 6 and 15 (tpx's K = 3, 7, 16:
    the first layers that see each stage's count) is ≈ retention·N (its
    "192" schedule 300/200/110 averages 188 tokens, "128" → 124, "64" → 62). At the paper's three budgets of
    N = 576 the table is reproduced exactly: 192 → 300/200/110, 128 → 303/110/36, 64 → 66/30/17. Other
    budgets interpolate the table linearly in retention between the anchors r = 1/9, 2/9, 1/3 and 1 (no
    pruning, N/N/N); below 1/9 the 1/9 schedule is scaled by r·9. Other N scale the counts by N/576.
    Counts are rounded, at least 1 and non-increasing.

    Reference: Zhang et al., SparseVLM, ICML 2025, arXiv 2410.04417 (LLaVA-1.5 settings; the counts are those
    of the official code's `sparse_token_list_192/128/64`).

    Args:
        retention: equivalent retention in (0, 1].
        n_visual: visual tokens N before the first stage.
        n_stages: must be 3 (the paper's schedule has three stages).
        **params: the method's other parameters (ignored).

    Returns:
        `[k₁, k₂, k₃]`, tokens kept after each stage.
    """
    retention = check_retention(retention)
    if n_stages != 3:
        raise ValueError(f"n_stages must be 3 for SparseVLM's schedule (its layers 2, 6, 15), got {n_stages}")
    if int(n_visual) < 1:
        raise ValueError(f"n_visual must be ≥ 1, got {n_visual}")
    anchors = [(1 / 9, (66, 30, 17)), (2 / 9, (303, 110, 36)), (1 / 3, (300, 200, 110)), (1.0, (576, 576, 576))]
    if retention <= anchors[0][0]:
        frac = [c / 576 * retention / anchors[0][0] for c in anchors[0][1]]
    else:
        (r0, c0), (r1, c1) = next((a, b) for a, b in zip(anchors, anchors[1:]) if retention <= b[0] + 1e-12)
        w = min(1.0, (retention - r0) / (r1 - r0))
        frac = [((1 - w) * a + w * b) / 576 for a, b in zip(c0, c1)]
    return _monotone_counts(frac, int(n_visual))


def pyramid_schedule(
    retention: float,
    n_visual: int,
    n_stages: int = 3,
    ratios: Sequence[float] = (0.5, 0.25, 0.125),
    layers: Sequence[int] | None = None,
    n_layers: int | None = None,
    **params: Any,
) -> list[int]:
    """PyramidDrop's per-stage counts: a pyramid of shares of N, scaled to an equivalent budget.

    `retention` is the equivalent budget: visual tokens per decoder layer averaged over all layers equal
    retention·N, the way multi-stage methods are compared with single-stage ones at "192/128/64 tokens".
    Stage s keeps N·min(1, c·ratios[s]) tokens, with the one scale c that meets the budget; at c = 1 this is
    the paper's schedule (50/25/12.5% after layers 8/16/24 of 32, equivalent retention 0.46875). Layers
    0 … l₁−1 always see all N tokens, so retention must exceed l₁/L (0.25 for the default layers); a lower
    budget is an error, not a silent clamp. Without `layers`, stage s sits at depth s/(n_stages+1) of a
    32-layer LLM (8/16/24 for three stages); the share does not depend on depth when layers scale with it.

    Reference: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
    Redundancy Reduction", CVPR 2025, arXiv 2410.17247 (λ = 0.5 after layers 8, 16, 24 of LLaVA-1.5-7B).
    Differs from the official code: the code takes the ratios as given and reports no equivalent budget; tpx
    scales them to the requested retention (use retention=0.46875 for the code's 288/144/72 at N = 576).
    tpx's stage layers are the first layers that see each stage's count (the engine's K); the README's
    "after layer 8" may place the cut one layer later.

    Args:
        retention: equivalent retention in (0, 1].
        n_visual: visual tokens N before the first stage.
        n_stages: number of pruning stages; `len(ratios)` must equal it.
        ratios: shares of N kept after each stage at c = 1, in (0, 1], non-increasing.
        layers: stage layers (the first layer that sees each stage's tokens); default as above.
        n_layers: decoder depth L; required with `layers`.
        **params: the method's other parameters (ignored).

    Returns:
        tokens kept after each stage, non-increasing, each ≥ 1.

    Raises:
        ValueError: for malformed ratios or layers, or a retention below what the first stage layer allows.
    """
    retention = check_retention(retention)
    ratios = [float(x) for x in ratios]
    if len(ratios) != n_stages or any(not 0 < x <= 1 for x in ratios) or ratios != sorted(ratios, reverse=True):
        raise ValueError(f"ratios must be {n_stages} non-increasing shares in (0, 1], got {tuple(ratios)}")
    if layers is None:
        n_layers, layers = 32, [round(32 * (s + 1) / (n_stages + 1)) for s in range(n_stages)]
    layers = [int(x) for x in layers]
    if (n_layers is None or len(layers) != n_stages or layers != sorted(set(layers))
            or not 0 < layers[0] <= layers[-1] < n_layers):
        raise ValueError(f"layers must be {n_stages} increasing layers in 1..n_layers-1, with n_layers given; "
                         f"got layers={layers}, n_layers={n_layers}")
    n = int(n_visual)
    width = [b - a for a, b in zip(layers, layers[1:] + [n_layers])]

    def share(c: float) -> float:
        return (layers[0] + sum(w * min(1.0, max(c * x, 1 / n)) for w, x in zip(width, ratios))) / n_layers

    lowest = share(0.0)
    if retention < lowest - 1e-12:
        raise ValueError(
            f"retention={retention:.4g} is below what pdrop can reach with stages at layers {tuple(layers)} of "
            f"{n_layers}: all N tokens pass the first {layers[0]} layers, so retention must be ≥ {lowest:.4g}; "
            f"pass earlier stage layers for a smaller budget"
        )
    lo, hi = 0.0, 1.0 / ratios[-1]
    for _ in range(100):  # bisection on a scalar; share() is increasing in c
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid) < retention else (lo, mid)
    c = (lo + hi) / 2
    return _monotone_counts([min(1.0, c * x) for x in ratios], n)


def _monotone_counts(frac: Sequence[float], n: int) -> list[int]:
    counts, prev = [], n
    for f in frac:
        prev = max(1, min(prev, round_count(f * n)))
        counts.append(prev)
    return counts
