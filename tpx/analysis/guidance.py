"""Is language information helpful? Text-guided against vision-only pruning, and where each one looks (Q3).

Text-guided methods score visual tokens with queries from the text (`fastv`: the last token; `sparsevlm`: the
text "raters"); vision-only ones do not read the question (`fastv_vis`: the last visual token, which comes
before the question in the prompt; `fastervlm`: [CLS] attention in the vision tower). The study's claim: the two
kinds score alike on common VQA suites, and guidance pays on a task where the question decides where to look,
its Visual Haystack table. These functions tabulate the comparison (`score_table`, `layout`; differences and
their CIs come from `tpx.analysis.stats`), measure where kept tokens fall when the question names a region of
the image — the share inside the named panel against the panel's area share, which a position-blind method
gets (`panel_frame`, `panel_maps`) — and build the question-swap control: the same image asked about another
panel, and how much of the kept set moves (`swap_question`, `kept_overlap_table`). Pure pandas and torch on
`tpx.evaluate.evaluate` rows; no model code.

Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Q3 (Visual Haystack table, FastV_VIS);
Wu et al., "Visual Haystacks", arXiv 2407.13766 (the benchmark); FastV: Chen et al., ECCV 2024, arXiv
2403.06764; SparseVLM: Zhang et al., ICML 2025, arXiv 2410.04417; FasterVLM: Zhang et al. 2024, arXiv 2412.01818.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["TEXT_GUIDED", "VISION_ONLY", "kept_overlap_table", "layout", "panel_frame", "panel_maps", "panel_mask",
           "panel_masks", "score_table", "swap_question", "swapped"]

TEXT_GUIDED = ("fastv", "sparsevlm")        # visual scores from text-token queries
VISION_ONLY = ("fastv_vis", "fastervlm")    # the same machinery without the question: last visual token, [CLS]
UNPRUNED = "unpruned"


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
        grid: (rows, cols) of a single-grid image; default: each row's own grids (`grids`, from the adapter's
            layout: one per image segment, each spanning the whole image — LLaVA-NeXT's base view and crop
            canvas, a Qwen2-VL image's grid).

    Returns:
        The matching rows plus columns panel (the named panel), haystack (panels holding objects; NaN when
        not set), chance (the share of visual tokens inside the panel: what a position-blind selection keeps
        inside it on average) and share (the share of kept visual tokens inside the named panel; the
        unpruned model keeps every token, so its share is the chance).
    """
    from tpx.analysis.spatial import row_grids

    meta = {s.id: (s.metadata, tuple(s.image.size)) for s in samples if "panel_box" in s.metadata}
    rows = df[df["id"].isin(list(meta))].copy()
    grids = [(grid,)] * len(rows) if grid is not None else row_grids(rows)
    panel, haystack, chance, share = [], [], [], []
    for sid, kept, layout in zip(rows["id"], rows["kept"], grids, strict=True):
        m, size = meta[sid]
        mask = torch.cat([panel_mask(m["panel_box"], size, g).flatten() for g in layout])
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
        grid: (rows, cols) of a single-grid image; default: from the rows (`tpx.analysis.spatial.map_grid`: the
            image's own grid, or a common normalised grid for several segments or layouts).

    Returns:
        {(method, retention): {panel: (rows, cols) share of that panel's samples keeping each cell}}, panels
        in sorted order.
    """
    from tpx.analysis.spatial import keep_frequency, map_grid, normalised_frequency, row_grids

    out: dict[tuple[str, float], dict[str, torch.Tensor]] = {}
    pruned = frame[frame["kept"].notna()]
    for (method, retention), part in pruned.groupby(["method", "retention"], sort=False):
        g, normalised = (grid, False) if grid is not None else map_grid(row_grids(part))
        out[(method, retention)] = {
            p: normalised_frequency([list(k) for k in rows["kept"]], row_grids(rows), g) if normalised else
            keep_frequency(torch.as_tensor([list(k) for k in rows["kept"]], dtype=torch.long), g)
            for p, rows in sorted(part.groupby("panel"), key=lambda kv: kv[0])}
    return out


# ---- the question-swap control ---------------------------------------------------------------------------

_YES_NO = re.compile(r"^in panel (\w) , is there a (\w+) (\w+) \?$")
_COLOUR = re.compile(r"^in panel (\w) , what colour is the (\w+) \?$")
SWAP = "/swap"


def swap_question(sample: Any, rng: np.random.Generator) -> Any | None:
    """The same image with the question naming another panel, and the answer that panel gives.

    A control for language guidance: a method that reads the question should keep other tokens when the named
    panel changes; one that does not (FastV_VIS, [CLS]) keeps the same ones. Yes/no questions move to any other
    filled panel (answer: whether the pair is there); colour questions to another panel holding exactly one
    object of that shape. Returns None when no panel fits.

    Args:
        sample: an organism `anchor` sample (`metadata` with panels and objects).
        rng: numpy generator choosing among the panels that fit.
    """
    m = sample.metadata
    if "panels" not in m or "objects" not in m:
        raise ValueError(f"sample {sample.id!r} has no panels/objects: swap_question needs organism anchor samples")
    others = [p for p in sorted(m.get("filled") or m["panels"]) if p != m["panel"]]
    inside = {p: [o for o in m["objects"] if o["panel"] == p] for p in m["panels"]}
    if (hit := _YES_NO.match(sample.question)) is not None:
        colour, shape = hit.group(2), hit.group(3)
        new = str(rng.choice(others))
        answer = "yes" if any(o["colour"] == colour and o["shape"] == shape for o in inside[new]) else "no"
        question = f"in panel {new} , is there a {colour} {shape} ?"
    elif (hit := _COLOUR.match(sample.question)) is not None:
        shape = hit.group(2)
        fit = [p for p in others if sum(o["shape"] == shape for o in inside[p]) == 1]
        if not fit:
            return None
        new = str(rng.choice(fit))
        answer = next(o["colour"] for o in inside[new] if o["shape"] == shape)
        question = f"in panel {new} , what colour is the {shape} ?"
    else:
        raise ValueError(f"not an anchor question: {sample.question!r}")
    meta = {**m, "panel": new, "panel_box": list(m["panels"][new]), "swapped_from": sample.id}
    return dataclasses.replace(sample, id=sample.id + SWAP, question=question,
                               prompt=sample.prompt.replace(sample.question, question), answers=[answer], metadata=meta)


def swapped(samples: Sequence[Any], seed: int = 0) -> tuple[list[Any], list[Any]]:
    """`(originals, swaps)`: the anchor samples that have a swap, and their swaps, in the same order."""
    rng = np.random.default_rng(seed)
    pairs = [(s, swap_question(s, rng)) for s in samples if "panel_box" in s.metadata]
    pairs = [(s, t) for s, t in pairs if t is not None]
    return [s for s, _ in pairs], [t for _, t in pairs]


def kept_overlap_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (label, retention, original sample): Jaccard overlap of the kept sets under the two questions.

    Args:
        rows: `evaluate` rows of the originals and their swaps (ids ending in `SWAP`), pruned labels only.

    Returns:
        Rows with benchmark, task, id (the original's), label, method, hook, layer, retention, seed and
        `overlap` in [0, 1] (1: the question did not change what was kept) — a per-sample value for
        `tpx.analysis.stats`.
    """
    from tpx.analysis.redundancy import kept_overlap

    pruned = rows[rows["kept"].notna()]
    swap = pruned[pruned["id"].str.endswith(SWAP)].assign(id=lambda d: d["id"].str.removesuffix(SWAP))
    orig = pruned[~pruned["id"].str.endswith(SWAP)]
    keys = ["benchmark", "task", "id", "label", "retention", "seed"]
    both = orig.merge(swap[keys + ["kept"]], on=keys, suffixes=("", "_swap"))
    out = []
    for (label, r), part in both.groupby(["label", "retention"], sort=False):
        a = torch.as_tensor([list(k) for k in part["kept"]], dtype=torch.long)
        b = torch.as_tensor([list(k) for k in part["kept_swap"]], dtype=torch.long)
        n_visual = int(part["n_visual"].iloc[0])
        out.append(part[keys + ["method", "hook", "layer"]].assign(overlap=kept_overlap(a, b, n_visual).tolist()))
    return pd.concat(out, ignore_index=True)
