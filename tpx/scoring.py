"""Scoring answers: one sample's score in [0, 1] by its benchmark's metric, and benchmark-level scores.

`score` applies each benchmark's own rule (organism exact match and grid-cell hits, POPE yes/no, GQA exact
match, TextVQA / VizWiz VQA accuracy, multiple-choice letters, RefCOCO IoU ≥ 0.5); `summarize` turns answer
rows into the numbers the benchmarks report (POPE F1 over its negative types, MME perception, per-task
organism accuracy), as the mean over seeds with its spread or per seed.
"""

from __future__ import annotations

import math

import pandas as pd

from tpx import metrics
from tpx.data import Sample, organism_record

__all__ = ["SCORERS", "score", "summarize"]


def _grounding(sample: Sample, prediction: str) -> float:
    box = metrics.parse_box(prediction)
    if box is None:
        return 0.0
    try:
        pixels = metrics.box_to_pixels(box, sample.metadata["width"], sample.metadata["height"])
    except ValueError:  # a malformed box (x2 < x1) is a miss, as in grounding_accuracy
        return 0.0
    return float(metrics.box_iou(pixels, sample.metadata["box"]) >= 0.5)


def _organism(sample: Sample, prediction: str) -> float:
    from tpx.organism import suite

    return float(suite.score(organism_record(sample), prediction))


def _vqa(sample: Sample, prediction: str) -> float:
    return metrics.vqa_accuracy(prediction, sample.answers, leave_one_out=len(sample.answers) > 1)


def _choice(sample: Sample, prediction: str) -> float:
    return float(metrics.parse_choice(prediction, len(sample.metadata["options"])) == sample.answer)


SCORERS = {
    "organism": _organism,
    "pope": lambda s, p: float(metrics.parse_yes_no(p) == s.answer),
    "mme": lambda s, p: float(metrics._mme_answer(p) == s.answer),  # MME's own prefix rule
    "gqa": lambda s, p: metrics.exact_match(p, s.answer),
    "textvqa": _vqa, "vizwiz": _vqa, "scienceqa_img": _choice, "mmbench": _choice,
    "refcoco": _grounding, "refcoco+": _grounding, "refcocog": _grounding,
}


def score(sample: Sample, prediction: str) -> float:
    """Score of one answer in [0, 1]: organism exact match (`locate`: cell hit), POPE / MME yes-no correct,
    GQA exact match, TextVQA / VizWiz VQA accuracy (leave-one-out), ScienceQA / MMBench option letter,
    RefCOCO IoU ≥ 0.5 of the parsed box (LLaVA-1.5's [0, 1] coordinates of the unpadded image)."""
    family = "pope" if sample.benchmark.startswith("pope") else sample.benchmark
    if family not in SCORERS:
        raise ValueError(f"no scorer for benchmark {sample.benchmark!r}; known: {', '.join(SCORERS)}")
    return SCORERS[family](sample, prediction)


def summarize(df: pd.DataFrame, by_seed: bool = False) -> pd.DataFrame:
    """Benchmark-level scores (×100) per benchmark, task (organism only), configuration and retention.

    POPE: F1 averaged over its negative types (LLaVA-1.5's number); MME: perception score (acc + acc+ over
    the images whose two questions are both present); organism: accuracy per task; others: mean score. A
    configuration is a label when the rows carry one (`evaluate(configs=...)`), else a method.

    Args:
        df: `evaluate` rows.
        by_seed: one row per seed (what per-seed analyses need); False (default): the mean over seeds with its
            spread, as a result should be reported.

    Returns:
        by_seed: columns benchmark, task, method, [label,] retention, seed, score, n. Otherwise: benchmark,
        task, method, [label,] retention, score (mean over seeds), score_std (NaN for one seed), score_min,
        score_max, n_seeds, n (answers per seed).
    """
    out = []
    keys = ["benchmark", "method"] + (["label"] if "label" in df.columns else []) + ["retention", "seed"]
    for key, group in df.groupby(keys, dropna=False, sort=False):
        bench = key[0]
        if bench == "organism":
            parts = [(task, 100 * g["score"].mean(), len(g)) for task, g in group.groupby("task", sort=False)]
        elif str(bench).startswith("pope"):
            f1 = [metrics.pope_scores(list(g["answer"]), list(g["reference"]))["f1"] for _, g in group.groupby("task")]
            parts = [("", 100 * sum(f1) / len(f1), len(group))]
        elif bench == "mme":
            frame = group.rename(columns={"task": "subtask", "answer": "prediction"})
            frame = frame.assign(answer=frame["reference"])
            frame = frame[frame.groupby(["subtask", "image_id"])["id"].transform("size") == 2]
            value = metrics.mme_scores(frame, require_all_subtasks=False)["perception"] if len(frame) else math.nan
            parts = [("", value, len(frame))]
        else:
            parts = [("", 100 * group["score"].mean(), len(group))]
        out += [dict(zip(keys, key), task=t, score=v, n=n) for t, v, n in parts]
    cols = ["benchmark", "task", *keys[1:], "score", "n"]
    per_seed = pd.DataFrame(out, columns=cols)
    if by_seed:
        return per_seed
    group = [c for c in cols if c not in ("seed", "score", "n")]
    g = per_seed.groupby(group, dropna=False, sort=False)
    return g.agg(score=("score", "mean"), score_std=("score", "std"), score_min=("score", "min"),
                 score_max=("score", "max"), n_seeds=("seed", "nunique"), n=("n", "first")).reset_index()


