"""Is language information helpful? Text-guided against vision-only pruning, and where each one looks (Q3).

Text-guided methods score visual tokens with queries from the text (`fastv`: the last token; `sparsevlm`: the
text "raters"); vision-only ones do not read the question (`fastv_vis`: the last visual token, which comes
before the question in the prompt; `fastervlm`: [CLS] attention in the vision tower). The study's claim: the two
kinds score alike on common VQA suites, and guidance pays on a task where the question decides where to look,
its Visual Haystack table. These functions run the comparison (`evaluate_methods`), tabulate it with standard
errors (`score_table`, `group_gap`) and measure where kept tokens fall when the question names a region of the
image: the share inside the named panel against the panel's area share, which a position-blind method gets
(`panel_frame`, `panel_maps`). Pure pandas and torch on `tpx.evaluate.evaluate` rows; no model code.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q3 (Visual Haystack table, FastV_VIS);
Wu et al., "Visual Haystacks", arXiv 2407.13766 (the benchmark); FastV: Chen et al., ECCV 2024, arXiv
2403.06764; SparseVLM: Zhang et al., ICML 2025, arXiv 2410.04417; FasterVLM: Zhang et al. 2024, arXiv 2412.01818.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

__all__ = ["TEXT_GUIDED", "VISION_ONLY", "evaluate_methods", "group_gap", "layout", "panel_frame", "panel_maps",
           "panel_mask", "panel_masks", "score_table", "square_grid", "verdict"]

TEXT_GUIDED = ("fastv", "sparsevlm")        # visual scores from text-token queries
VISION_ONLY = ("fastv_vis", "fastervlm")    # the same machinery without the question: last visual token, [CLS]
UNPRUNED = "unpruned"


def evaluate_methods(model: Any, processor: Any, samples: Sequence[Any], methods: Sequence[str | None],
                     retentions: Sequence[float], seeds: Sequence[int] = (0,), *, layer: int | None = None,
                     progress: bool = True, **evaluate_kwargs: Any) -> pd.DataFrame:
    """The unpruned baseline and every method at every retention, as `tpx.analysis.tables.evaluate_methods` runs them.

    `layer` goes only to single-stage hook-"L" methods (FastV's K) and only seeded methods (`random`) run
    every seed. The guidance comparisons need every (method, retention) cell, so one a method cannot reach is
    an error here rather than a skipped row.

    Args:
        model, processor: from `tpx.load`. samples: from `tpx.data.load_samples`.
        methods: registry names; None or "unpruned" (the baseline, always included) is accepted and ignored.
        retentions, seeds, layer, progress, **evaluate_kwargs: as for `tpx.analysis.tables.evaluate_methods`.

    Returns:
        The rows of every `evaluate` call, concatenated (see `evaluate`).

    Raises:
        ValueError: a method cannot run at one of the retentions (the engine's reason is given).
    """
    from tpx.analysis import tables

    names = [m for m in methods if m not in (None, UNPRUNED)]
    df, skipped = tables.evaluate_methods(model, processor, samples, names, retentions, seeds, layer=layer,
                                          progress=progress, **evaluate_kwargs)
    if len(skipped):
        row = skipped.iloc[0]
        raise ValueError(f"{row['method']!r} cannot run at retention={row['retention']:g}: {row['reason']}")
    return df


def score_table(df: pd.DataFrame, by: Sequence[str], value: str = "score", scale: float = 100.0) -> pd.DataFrame:
    """Mean of a per-answer column with its standard error, per group (seeds pooled).

    Args:
        df: per-answer rows (from `evaluate` or `panel_frame`).
        by: grouping columns, e.g. ["method", "retention", "task"].
        value: the column averaged ("score", or "share" of `panel_frame`).
        scale: multiplier (100: accuracies and shares in percent).

    Returns:
        DataFrame with the `by` columns, `value` (mean × scale), "se" (standard error × scale; NaN for one
        answer) and "n" (answers), groups in order of appearance.
    """
    g = df.groupby(list(by), sort=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out[value] = scale * out.pop("mean")
    out["se"] = scale * out.pop("std") / out["count"].pow(0.5)
    return out.rename(columns={"count": "n"})


def layout(table: pd.DataFrame, column: str, retention: float, value: str = "score") -> pd.DataFrame:
    """The study's table layout at one retention: rows = methods (unpruned first), columns = values of `column`.

    Args:
        table: from `score_table`, with columns method, retention, `column` and `value`.
        column: what the columns are (e.g. "haystack", as in the Visual Haystack table, or "task").
        retention: the pruned methods' retention; unpruned rows are taken whatever their retention.
        value: the cell values.
    """
    part = table[(table["retention"] == retention) | (table["method"] == UNPRUNED)]
    out = part.pivot_table(index="method", columns=column, values=value, sort=False)
    order = [UNPRUNED] * (UNPRUNED in out.index) + [m for m in dict.fromkeys(part["method"]) if m != UNPRUNED]
    return out.reindex(order)


def group_gap(df: pd.DataFrame, first: Sequence[str] = TEXT_GUIDED, second: Sequence[str] = VISION_ONLY,
              value: str = "score", scale: float = 100.0) -> dict[str, float]:
    """Mean of `value` over the answers of the methods in `first` minus that of `second`, with its error.

    The two groups answer the same samples, so treating them as independent (as here) overstates the error:
    a difference beyond 2 standard errors is a conservative call.

    Returns:
        {"first": mean, "second": mean, "gap": first − second, "se": standard error of the gap}, × scale.

    Raises:
        ValueError: a group has no rows in `df`.
    """
    stats = {}
    for key, names in (("first", first), ("second", second)):
        x = df.loc[df["method"].isin(list(names)), value].astype(float)
        if x.empty:
            raise ValueError(f"no rows of methods {list(names)} in df; "
                             f"methods present: {sorted(df['method'].unique())}")
        stats[key] = (scale * x.mean(), scale * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan)
    return {"first": stats["first"][0], "second": stats["second"][0], "gap": stats["first"][0] - stats["second"][0],
            "se": math.hypot(stats["first"][1], stats["second"][1])}


def verdict(gap: dict[str, float], claim: str = "positive", z: float = 2.0) -> str:
    """Whether a measured gap (`group_gap`) agrees with a paper's claim, judged against its standard error.

    Args:
        gap: {"gap": difference, "se": its standard error}.
        claim: "positive" (the first group scores higher) or "none" (the groups score alike).
        z: how many standard errors count as a difference.

    Returns:
        "agrees", "disagrees" or, for a positive claim whose gap is within `z` errors of 0, "inconclusive".

    Raises:
        ValueError: for an unknown claim.
    """
    big = abs(gap["gap"]) > z * gap["se"]
    if claim == "positive":
        return "inconclusive" if not big else "agrees" if gap["gap"] > 0 else "disagrees"
    if claim == "none":
        return "disagrees" if big else "agrees"
    raise ValueError(f"claim must be 'positive' or 'none', got {claim!r}")


def square_grid(n_visual: int) -> tuple[int, int]:
    """The (rows, cols) of a square single-image grid of `n_visual` tokens (12×12 organism, 24×24 LLaVA-1.5).

    Raises:
        ValueError: `n_visual` is not a square (several images or AnyRes crops: pass the grid explicitly).
    """
    g = math.isqrt(int(n_visual))
    if g * g != n_visual or g == 0:
        raise ValueError(f"n_visual={n_visual} is not a square single-image grid; pass grid=(rows, cols)")
    return (g, g)


def panel_mask(box: Sequence[float], image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Grid cells whose centre lies inside a pixel box of the image, assuming the model sees the whole image.

    Args:
        box: (x0, y0, x1, y1) in pixels, end-exclusive.
        image_size: (width, height) of the image in pixels.
        grid: (rows, cols) of the visual tokens, row 0 at the top.

    Returns:
        `(rows, cols)` bool tensor.
    """
    (w, h), (rows, cols) = image_size, grid
    cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * h / rows
    cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * w / cols
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def panel_masks(sample: Any, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """{panel letter: `(rows, cols)` bool cells} of a panel sample (`metadata["panels"]`), by `panel_mask`."""
    return {p: panel_mask(box, tuple(sample.image.size), grid) for p, box in sorted(sample.metadata["panels"].items())}


def panel_frame(df: pd.DataFrame, samples: Sequence[Any], grid: tuple[int, int] | None = None) -> pd.DataFrame:
    """The rows of `df` whose sample names a panel, with where their kept tokens fell.

    Args:
        df: rows from `evaluate`.
        samples: the samples evaluated; those with `metadata["panel_box"]` (the organism's `anchor`) are kept.
        grid: (rows, cols) of the visual tokens; default: `square_grid` of each row's `n_visual`.

    Returns:
        The matching rows plus columns panel (the named panel), haystack (panels holding objects; NaN when
        not set), chance (the panel's share of the grid: what a position-blind selection keeps inside it on
        average) and share (the share of kept visual tokens inside the named panel; the unpruned model keeps
        every token, so its share is the chance).
    """
    meta = {s.id: (s.metadata, tuple(s.image.size)) for s in samples if "panel_box" in s.metadata}
    rows = df[df["id"].isin(list(meta))].copy()
    panel, haystack, chance, share = [], [], [], []
    for sid, kept, n_visual in zip(rows["id"], rows["kept"], rows["n_visual"], strict=True):
        m, size = meta[sid]
        mask = panel_mask(m["panel_box"], size, grid or square_grid(n_visual)).flatten()
        idx = torch.arange(mask.numel()) if kept is None else torch.as_tensor(list(kept), dtype=torch.long)
        panel.append(m["panel"])
        haystack.append(m.get("haystack", math.nan))
        chance.append(float(mask.double().mean()))
        share.append(float(mask[idx].double().mean()))
    return rows.assign(panel=panel, haystack=haystack, chance=chance, share=share)


def panel_maps(frame: pd.DataFrame,
               grid: tuple[int, int] | None = None) -> dict[tuple[str, float], dict[str, torch.Tensor]]:
    """Keep frequency of every grid cell, per (method, retention) and named panel (`tpx.analysis.spatial.keep_frequency`).

    Args:
        frame: from `panel_frame` (pruned rows are used; unpruned rows keep everything and are skipped).
        grid: (rows, cols); default: `square_grid` of the rows' `n_visual`.

    Returns:
        {(method, retention): {panel: (rows, cols) share of that panel's samples keeping each cell}}, panels
        in sorted order.
    """
    from tpx.analysis.spatial import keep_frequency

    out: dict[tuple[str, float], dict[str, torch.Tensor]] = {}
    pruned = frame[frame["kept"].notna()]
    for (method, retention), part in pruned.groupby(["method", "retention"], sort=False):
        g = grid or square_grid(int(part["n_visual"].iloc[0]))
        out[(method, retention)] = {
            p: keep_frequency(torch.as_tensor([list(k) for k in rows["kept"]], dtype=torch.long), g)
            for p, rows in sorted(part.groupby("panel"), key=lambda kv: kv[0])}
    return out
