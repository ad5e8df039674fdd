"""Benchmark metrics: per-sample scores and the study's relative "Avg.".

Free-form model outputs go in, plain numbers come out; fractions lie in [0, 1] except MME, which keeps its
own points. Papers: VQA (Antol et al. 2015, arXiv 1505.00468; Goyal et al. 2017, arXiv 1612.00837), POPE
(Li et al. 2023, arXiv 2305.10355), MME (Fu et al. 2023, arXiv 2306.13394), RefCOCO (Mao et al. 2016,
arXiv 1511.02283), LLaVA-1.5 answer formats (Liu et al. 2024, arXiv 2310.03744) and the study's relative
score (Wen et al. 2025, arXiv 2502.11501).
"""

import math
import re
import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe. Those that are also words without one ("its", "well",
# "were", "ill", "shed", "lets", ...) are left alone on purpose.
_CONTRACTIONS = {w.replace("'", ""): w for w in (
    "ain't aren't can't couldn't could've didn't doesn't don't hadn't hasn't haven't he'd he's i'm i've "
    "isn't it'd it'll mightn't might've mustn't must've needn't shan't she's shouldn't should've that's "
    "there's they'd they'll they're they've wasn't weren't we've what's where's who's won't wouldn't "
    "would've you'd you'll you're you've").split()}
_PUNCTUATION = re.escape("".join(c for c in string.punctuation if c not in "':."))
_NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_BOX = re.compile(rf"[\[(]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\])]?\s*,\s*[\[(]?\s*({_NUMBER})\s*,\s*"
                  rf"({_NUMBER})\s*[\])]")


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _check_same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have the same length, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{name_a} must not be empty")


def _check_frame(df: pd.DataFrame, required: Sequence[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"df is missing columns {missing}; required {list(required)}, got {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("df must not be empty")


def _check_labels(labels: Sequence[str], name: str) -> list[str]:
    out = []
    for i, label in enumerate(labels):
        value = label.strip().lower() if isinstance(label, str) else label
        if value not in ("yes", "no"):
            raise ValueError(f"{name}[{i}] must be 'yes' or 'no', got {label!r}")
        out.append(value)
    return out


def normalize_answer(text: str) -> str:
    """Returns a short answer normalised as the VQA evaluation does before comparing strings.

    Lower-case; drop commas between digits (100,978 -> 100978) and periods that are not a decimal point;
    other punctuation except ' (possessives) and : (times) becomes a space; number words zero..ten and
    "none" become digits; articles a/an/the go; "dont" -> "don't"; whitespace is collapsed.

    Reference: Antol et al., ICCV 2015, arXiv 1505.00468; Goyal et al., CVPR 2017, arXiv 1612.00837
    (visualqa.org evaluation protocol).
    Differs from the official code: it skips punctuation, number and article handling of the prediction
    when all human answers agree; here both sides are always fully normalised.

    Args:
        text: A free-form answer.
    """
    s = _check_text(text, "text").lower().replace("\n", " ").replace("\t", " ")
    s = re.sub(r"(?<=\d),(?=\d)", "", s)
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", "", s)
    s = re.sub(f"[{_PUNCTUATION}]", " ", s)
    words = (_NUMBER_WORDS.get(w, w) for w in s.split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str], leave_one_out: bool = False) -> float:
    """Returns the VQA accuracy of one prediction, min(#human answers equal to it / 3, 1), in [0, 1].

    The default is the rule as the VQA papers state it. ``leave_one_out=True`` gives the official script's
    form: the rule over each of the n subsets of n - 1 answers, averaged (3 of 10 matching -> 0.9, not 1.0).

    Reference: Antol et al., ICCV 2015, arXiv 1505.00468, Sec. 2; Goyal et al., CVPR 2017, arXiv 1612.00837.

    Args:
        prediction: The model's answer, free-form.
        answers: The human answers (10 for VQAv2, TextVQA, VizWiz), compared after ``normalize_answer``.
        leave_one_out: Average over the leave-one-annotator-out subsets (needs at least 2 answers).

    Raises:
        ValueError: If ``answers`` is empty, or has one answer with ``leave_one_out=True``.
    """
    pred = normalize_answer(prediction)
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"answers must be a non-empty sequence of str, got {answers!r}")
    hits = [normalize_answer(_check_text(a, f"answers[{i}]")) == pred for i, a in enumerate(answers)]
    if not leave_one_out:
        return min(sum(hits) / 3, 1.0)
    if len(hits) < 2:
        raise ValueError(f"answers needs at least 2 entries with leave_one_out=True, got {len(hits)}")
    return float(np.mean([min((sum(hits) - h) / 3, 1.0) for h in hits]))


def exact_match(prediction: str, answer: str) -> float:
    """Returns 1.0 if prediction and answer agree after ``normalize_answer``, else 0.0 (GQA accuracy).

    Reference: Hudson & Manning, "GQA", CVPR 2019, arXiv 1902.09506.

    Args:
        prediction: The model's answer, free-form.
        answer: The reference answer.
    """
    return float(normalize_answer(prediction) == normalize_answer(_check_text(answer, "answer")))


def parse_yes_no(text: str) -> str:
    """Returns "yes" or "no" read from a free-form answer as LLaVA's POPE evaluation does.

    Only the first sentence counts: "no" if it contains the word "no" or "not", else "yes" ("Yes, there is
    a dog." -> yes; "There is no dog." -> no; an empty answer -> yes).

    Reference: Li et al., EMNLP 2023, arXiv 2305.10355; LLaVA-1.5, arXiv 2310.03744 (POPE evaluation).
    Differs from the official code: words are matched case-insensitively with punctuation stripped, so
    "NO!" is no (LLaVA matches "No", "no", "not" verbatim and reads it as yes).

    Args:
        text: The model's answer.
    """
    first = _check_text(text, "text").split(".", 1)[0].lower()
    words = re.sub(r"[^\w\s']", " ", first).split()
    return "no" if "no" in words or "not" in words else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE accuracy, precision, recall, F1 and yes-ratio, with "yes" the positive class.

    Reference: Li et al., "Evaluating Object Hallucination in LVLMs", EMNLP 2023, arXiv 2305.10355, Sec. 4.

    Args:
        predictions: Free-form answers, read with ``parse_yes_no``.
        labels: Ground truth, each "yes" or "no" (case and surrounding spaces ignored).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` in [0, 1] (precision and F1 are 0.0
        when nothing is predicted yes) and the counts ``tp``, ``fp``, ``tn``, ``fn``.

    Raises:
        ValueError: If the lengths differ, the inputs are empty or a label is not yes/no.
    """
    _check_same_length(predictions, labels, "predictions", "labels")
    gold = np.array(_check_labels(labels, "labels")) == "yes"
    pred = np.array([parse_yes_no(p) for p in predictions]) == "yes"
    tp, fp = int(np.sum(pred & gold)), int(np.sum(pred & ~gold))
    tn, fn = int(np.sum(~pred & ~gold)), int(np.sum(~pred & gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(gold), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(gold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _mme_answer(text: str) -> str:
    # MME's own rule: yes/no within the first four characters ("Not" reads as no), else wrong.
    s = _check_text(text, "prediction").strip().lower()[:4]
    return "yes" if "yes" in s else "no" if "no" in s else "other"


def mme_scores(df: pd.DataFrame, require_all_subtasks: bool = True) -> dict[str, float]:
    """MME scores: acc + acc+ per subtask (x100 each), summed to perception and cognition.

    Each image has two yes/no questions; acc is the share of questions right, acc+ the share of images with
    both right. Maxima: 200 per subtask, 2000 perception (10 subtasks), 800 cognition (4).

    Reference: Fu et al., "MME", arXiv 2306.13394, Sec. 2.3 (answers read with MME's prefix rule).

    Args:
        df: One row per question with columns ``subtask`` (in ``MME_PERCEPTION`` or ``MME_COGNITION``),
            ``image_id``, ``prediction`` (free-form) and ``answer`` ("yes"/"no").
        require_all_subtasks: If False, totals sum the subtasks present (NaN for a group with none), which
            is not comparable with published totals.

    Returns:
        ``{subtask: score}`` for the subtasks present, and ``perception``, ``cognition``, ``total``.

    Raises:
        ValueError: On a missing column or subtask, an unknown subtask, an image without two questions
            or an answer that is not yes/no.
    """
    _check_frame(df, ["subtask", "image_id", "prediction", "answer"])
    known, present = MME_PERCEPTION + MME_COGNITION, set(df["subtask"])
    if unknown := sorted(map(str, present - set(known))):
        raise ValueError(f"df['subtask'] has unknown MME subtask(s) {unknown}; known: {', '.join(known)}")
    if require_all_subtasks and (missing := [s for s in known if s not in present]):
        raise ValueError(f"df lacks MME subtask(s) {missing}; require_all_subtasks=False sums the rest")
    sizes = df.groupby(["subtask", "image_id"]).size()
    if (sizes != 2).any():
        bad = sizes.index[sizes != 2][0]
        raise ValueError(f"each MME image needs exactly 2 questions; (subtask, image_id)={bad} has {sizes[bad]}")
    gold = _check_labels(list(df["answer"]), "df['answer']")
    correct = [_mme_answer(p) == g for p, g in zip(df["prediction"], gold)]
    frame = df[["subtask", "image_id"]].assign(correct=correct)
    acc = frame.groupby("subtask")["correct"].mean() * 100
    acc_plus = frame.groupby(["subtask", "image_id"])["correct"].all().groupby(level=0).mean() * 100
    scores = {s: float(acc[s] + acc_plus[s]) for s in known if s in present}
    for group, names in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        values = [scores[s] for s in names if s in scores]
        scores[group] = float(sum(values)) if values else math.nan
    scores["total"] = float(np.nansum([scores["perception"], scores["cognition"]]))
    return scores


def _as_boxes(boxes: object, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=float)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) as [x1, y1, x2, y2], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    if np.any(arr[..., 2] < arr[..., 0]) or np.any(arr[..., 3] < arr[..., 1]):
        raise ValueError(f"{name} must have x2 >= x1 and y2 >= y1, got {arr.tolist()}")
    return arr


def _is_box(box: object) -> bool:
    arr = np.asarray(box if box is not None else [], dtype=float)
    return arr.shape == (4,) and bool(np.all(np.isfinite(arr)) and arr[2] >= arr[0] and arr[3] >= arr[1])


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Intersection over union of [x1, y1, x2, y2] boxes, element-wise with numpy broadcasting.

    Reference: Everingham et al., "The PASCAL VOC Challenge", IJCV 2010 (overlap criterion).

    Args:
        a: Box(es) of shape (4,) or (..., 4).
        b: Box(es) broadcastable against ``a``.

    Returns:
        A float for two single boxes, else an array of the broadcast shape less the last axis (0.0 where
        both boxes have zero area).

    Raises:
        ValueError: If the last axis is not 4, a value is not finite, or x2 < x1 or y2 < y1.
    """
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
             + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """Returns the first box in model output as written, or None: "[0.1, 0.3, 0.5, 0.6]", "(x1,y1),(x2,y2)".

    No scale is guessed: LLaVA-1.5 answers in [0, 1] of its padded square input, and ``box_to_pixels``
    maps that back.

    Reference: Liu et al., LLaVA-1.5, CVPR 2024, arXiv 2310.03744 (RefCOCO box format).

    Args:
        text: The model's answer.
    """
    match = _BOX.search(_check_text(text, "text"))
    return None if match is None else tuple(float(v) for v in match.groups())


def box_to_pixels(box: Sequence[float], width: float, height: float, scale: float = 1.0,
                  pad_to_square: bool = False) -> tuple[float, float, float, float]:
    """Returns a box in [0, ``scale``] coordinates mapped to (x1, y1, x2, y2) pixels of the original image.

    The study's grounding script scales by the unpadded width and height (the default here), although
    LLaVA-1.5 sees the image padded, centred, to a square of side max(width, height);
    ``pad_to_square=True`` undoes that padding instead.

    Args:
        box: [x1, y1, x2, y2] in [0, scale].
        width: Image width in pixels, > 0.
        height: Image height in pixels, > 0.
        scale: Coordinate range: 1.0 for LLaVA-1.5, 1000.0 for InternVL / Qwen-VL style outputs; > 0.
        pad_to_square: Undo centred padding to a square before scaling.

    Raises:
        ValueError: If ``width``, ``height`` or ``scale`` is not > 0, or ``box`` is not 4 ordered values.
    """
    for name, value in (("width", width), ("height", height), ("scale", scale)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    x1, y1, x2, y2 = (float(v) / scale for v in _as_boxes(box, "box").reshape(4))
    side_x, side_y = (max(width, height),) * 2 if pad_to_square else (width, height)
    dx, dy = (side_x - width) / 2, (side_y - height) / 2
    return x1 * side_x - dx, y1 * side_y - dy, x2 * side_x - dx, y2 * side_y - dy


def grounding_accuracy(pred_boxes: Sequence[Sequence[float] | None], gt_boxes: Sequence[Sequence[float]],
                       threshold: float = 0.5) -> float:
    """Returns the share of predicted boxes with IoU >= ``threshold`` against the truth (RefCOCO Acc@0.5).

    Reference: Mao et al., CVPR 2016, arXiv 1511.02283; Yu et al., ECCV 2016, arXiv 1608.00272.

    Args:
        pred_boxes: One [x1, y1, x2, y2] per sample; None (no box parsed) or a malformed box (not 4
            finite values with x2 >= x1, y2 >= y1) counts as a miss, since models do write such boxes.
        gt_boxes: One [x1, y1, x2, y2] per sample, in the same coordinates.
        threshold: IoU needed for a hit, in (0, 1].

    Raises:
        ValueError: If ``threshold`` is outside (0, 1], the lengths differ or the inputs are empty.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    _check_same_length(pred_boxes, gt_boxes, "pred_boxes", "gt_boxes")
    gt = _as_boxes(gt_boxes, "gt_boxes")
    hits = [_is_box(p) and box_iou(p, g) >= threshold for p, g in zip(pred_boxes, gt)]
    return float(np.mean(hits))


def parse_choice(text: str, n_options: int) -> str | None:
    """Returns the option letter ("A", "B", ...) in an answer to LLaVA's multiple-choice prompt, or None.

    Accepted: the letter alone ("A", "a", "A.", "(A)"), a leading letter and delimiter ("A. cat",
    "(B) dog"), or "answer is A" / "Answer: (A)" anywhere. Only a lone letter may be lower-case, so "a dog"
    is not A.

    Reference: Liu et al., LLaVA-1.5, arXiv 2310.03744 (MMBench / ScienceQA prompts and parsing).
    Differs from the official code: LLaVA's ScienceQA script accepts only "A", "A. ..." and "The answer
    is A."; MMBench's official evaluation also matches option text with a GPT judge, not done here.

    Args:
        text: The model's answer.
        n_options: Number of options, in [1, 26]; letters beyond it are rejected.

    Raises:
        ValueError: If ``n_options`` is outside [1, 26].
    """
    if isinstance(n_options, bool) or not isinstance(n_options, int) or not 1 <= n_options <= 26:
        raise ValueError(f"n_options must be an int in [1, 26], got {n_options!r}")
    letters = string.ascii_uppercase[:n_options]
    s = _check_text(text, "text").strip()
    if alone := re.fullmatch(r"[(\[]?([A-Za-z])[)\].:]?", s):
        return alone.group(1).upper() if alone.group(1).upper() in letters else None
    match = (re.search(rf"^[(\[]?([{letters}])[)\].:,]\s", s)
             or re.search(rf"(?i:answer(?: is)?)\s*:?\s*[(\[]?([{letters}])\b", s))
    return match.group(1) if match else None


def multiple_choice_accuracy(predictions: Sequence[str], answers: Sequence[str],
                             n_options: int | Sequence[int]) -> float:
    """Returns the share of answers whose parsed letter is the correct one (unparseable ones are wrong).

    Reference: Liu et al., MMBench, ECCV 2024, arXiv 2307.06281; Lu et al., ScienceQA, NeurIPS 2022,
    arXiv 2209.09513 (plain accuracy; MMBench's CircularEval is not applied).

    Args:
        predictions: Free-form model answers.
        answers: The correct letters ("A", "B", ...).
        n_options: Option count for all questions, or one per question.

    Raises:
        ValueError: On mismatched lengths, empty inputs, a bad ``n_options`` or an answer outside the options.
    """
    _check_same_length(predictions, answers, "predictions", "answers")
    counts = [n_options] * len(answers) if isinstance(n_options, int) else list(n_options)
    _check_same_length(counts, answers, "n_options", "answers")
    hits = []
    for i, (pred, gold, n) in enumerate(zip(predictions, answers, counts)):
        letter = parse_choice(pred, n)  # also validates n
        if not isinstance(gold, str) or len(gold) != 1 or gold not in string.ascii_uppercase[:n]:
            raise ValueError(f"answers[{i}] must be one of the first {n} capital letters, got {gold!r}")
        hits.append(letter == gold)
    return float(np.mean(hits))


def relative_score(score: float, baseline: float) -> float:
    """Returns score / baseline: a pruned model's score over the unpruned one's on the same benchmark.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Table 1.

    Args:
        score: The method's benchmark score, finite.
        baseline: The unpruned score in the same units, finite and > 0.

    Raises:
        ValueError: If ``baseline`` is not > 0 or a value is not finite.
    """
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    if not (math.isfinite(baseline) and baseline > 0):
        raise ValueError(f"baseline must be finite and > 0, got {baseline}")
    return score / baseline


def relative_table(df: pd.DataFrame, baseline: str = "unpruned") -> pd.DataFrame:
    """Relative scores as a method x benchmark table, NaN where a method lacks a benchmark.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Table 1.

    Args:
        df: Columns ``benchmark``, ``method``, ``score``; one row per (benchmark, method), so aggregate
            seeds and samples first.
        baseline: The method every other is divided by; it needs a score > 0 on every benchmark.

    Returns:
        DataFrame indexed by method, one column per benchmark, both in order of first appearance.

    Raises:
        ValueError: On a missing column, an empty frame, a duplicate (benchmark, method) row or a baseline
            score missing or not > 0.
    """
    _check_frame(df, ["benchmark", "method", "score"])
    if (dup := df.duplicated(["benchmark", "method"])).any():
        row = tuple(df.loc[dup, ["benchmark", "method"]].iloc[0])
        raise ValueError(f"df has several scores for (benchmark, method)={row}; aggregate them first")
    wide = df.pivot(index="method", columns="benchmark", values="score").astype(float)
    wide = wide.loc[pd.unique(df["method"]), pd.unique(df["benchmark"])]
    if baseline not in wide.index:
        raise ValueError(f"baseline method {baseline!r} is not in df; methods: {list(wide.index)}")
    base = wide.loc[baseline]
    if missing := base.index[base.isna()].tolist():
        raise ValueError(f"baseline {baseline!r} has no score for benchmark(s) {missing}")
    if bad := base.index[~(np.isfinite(base) & (base > 0))].tolist():
        raise ValueError(f"baseline {baseline!r} scores must be finite and > 0; not so for {bad}")
    return wide / base


def average_relative(df: pd.DataFrame, baseline: str = "unpruned") -> pd.Series:
    """Returns the study's "Avg." per method: the mean over benchmarks of method score / baseline score.

    A method lacking a benchmark is averaged over those it has (Table 1's "–" entries). Table 1's Random,
    Pooling, FastV and SparseVLM averages come out as printed this way; Window FastV's gives 92.8%, not 93.2%.

    Reference: Wen et al., Findings of ACL 2025, arXiv 2502.11501, Table 1 ("Avg." column).

    Args:
        df: Columns ``benchmark``, ``method``, ``score``; one row per (benchmark, method).
        baseline: Name of the unpruned method (its average is 1.0).

    Returns:
        Series indexed by method, named "avg_relative", as fractions (0.95 is 95%).

    Raises:
        ValueError: As ``relative_table``.
    """
    return relative_table(df, baseline).mean(axis=1, skipna=True).rename("avg_relative")
