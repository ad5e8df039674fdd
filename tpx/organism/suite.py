"""The organism's synthetic visual-QA suite: samples, fixed splits and question-only priors.

`make_sample(task, split, index)` is a pure function of its arguments: the same triple
always gives the same image (pixel-equal), question and answer. Splits are disjoint by
construction (each split seeds its own random streams) and checked by the tests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tpx.organism import draw, tasks
from tpx.organism.draw import Scene

SPLITS = {"train": 0, "val": 1, "test": 2}
TASK_IDS = {t: i + 1 for i, t in enumerate(tasks.TASKS)}
PACKED_STREAM = 99  # the training draw of multi-question samples uses its own stream inside `train`
MAX_TRIES = 50


@dataclass
class Sample:
    """One question about one image, with the ground truth the answer came from."""

    image: Image.Image
    question: str
    answer: str
    task: str
    split: str
    meta: dict = field(default_factory=dict)


def _rng(split: str, stream: int, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return np.random.default_rng([SPLITS[split], stream, index])


def scene_for(task: str, rng: np.random.Generator, haystack: int | None = None) -> Scene:
    """Draw the kind of scene `task` asks about (panels for `anchor`, a forced glyph for `read`).

    `haystack` (panel tasks only): how many panels hold objects, see `draw.make_panel_scene`.
    """
    if task in tasks.PANEL_TASKS:
        return draw.make_panel_scene(rng, haystack)
    if haystack is not None:
        raise ValueError(f"haystack applies to the panel tasks {list(tasks.PANEL_TASKS)} only, got task {task!r}")
    return draw.make_scene(rng, glyph=True if task == "read" else None)


def ground_truth(scene: Scene) -> dict:
    """Plain-data ground truth of a scene: objects, glyphs and panels with pixel boxes and grid cells."""
    return {
        "objects": [{"shape": o.shape, "colour": o.colour, "box": list(o.box), "cell": list(o.cell),
                     "panel": o.panel} for o in scene.objects],
        "glyphs": [{"char": g.char, "box": list(g.box), "panel": g.panel} for g in scene.glyphs],
        "panels": {k: list(v) for k, v in scene.panels.items()},
        "grid": [draw.GRID, draw.GRID], "patch": draw.PATCH,
    }


def draw_question(task: str, rng: np.random.Generator,
                  haystack: int | None = None) -> tuple[Scene, str, str, dict]:
    """Draw scenes from `rng` until one hosts a `task` question; return (scene, question, answer, meta)."""
    if task not in tasks.TASKS:
        raise ValueError(f"task must be one of {list(tasks.TASKS)}, got {task!r}")
    for _ in range(MAX_TRIES):
        scene = scene_for(task, rng, haystack)
        out = tasks.TASKS[task](scene, rng)
        if out is not None:
            return (scene, *out)
    raise RuntimeError(f"no scene hosted a {task!r} question in {MAX_TRIES} draws")


def make_sample(task: str, split: str, index: int, haystack: int | None = None) -> Sample:
    """The `index`-th sample of `task` in `split`, fully determined by (task, split, index, haystack).

    `haystack` (panel tasks only): how many of the four panels hold objects (1-4; the Visual Haystack
    analogue). None is the suite's own sample; 4 gives the same scene, question and answer as None, with
    `meta["haystack"]` and `meta["filled"]` (the panels holding objects) added.
    """
    rng = _rng(split, TASK_IDS.get(task, 0), index)
    scene, question, answer, meta = draw_question(task, rng, haystack)
    meta = {**meta, **ground_truth(scene), "index": index}
    if haystack is not None:
        meta.update(haystack=haystack, filled=list(scene.filled))
    return Sample(scene.pil(), question, answer, task, split, meta)


def build(split: str, n_per_task: int, task_names: list[str] | None = None) -> list[Sample]:
    """`n_per_task` samples of every task in `split` (indices 0..n-1), task-major order."""
    names = list(tasks.TASKS) if task_names is None else task_names
    return [make_sample(t, split, i) for t in names for i in range(n_per_task)]


def question_only_answers(task: str, n: int = 20000, split: str = "train") -> dict[str, str]:
    """Majority answer per question string over `n` training questions (answer text only, no images drawn twice)."""
    table: dict[str, Counter] = defaultdict(Counter)
    for i in range(n):
        rng = _rng(split, TASK_IDS[task], i)
        _, q, a, _ = draw_question(task, rng)
        table[q][a] += 1
    overall = Counter()
    for c in table.values():
        overall.update(c)
    fallback = overall.most_common(1)[0][0]
    majority = {q: c.most_common(1)[0][0] for q, c in table.items()}
    majority[""] = fallback
    return majority


def prior_accuracy(samples: list[Sample], majority: dict[str, dict[str, str]]) -> dict[str, float]:
    """Per-task accuracy of answering every sample with its question string's majority training answer."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        table = majority[s.task]
        guess = table.get(s.question, table[""])
        hits[s.task].append(score(s, guess))
    return {t: float(np.mean(v)) for t, v in hits.items()}


def score(sample: Sample, prediction: str) -> bool:
    """Exact match, except `locate`: a hit when the predicted cell's centre lies inside the object's box."""
    if sample.task != "locate":
        return prediction.strip() == sample.answer
    parts = prediction.split()
    if len(parts) != 2 or not (parts[0][:1] == "r" and parts[1][:1] == "c"):
        return False
    try:
        r, c = int(parts[0][1:]), int(parts[1][1:])
    except ValueError:
        return False
    x0, y0, x1, y1 = sample.meta["box"]
    cx, cy = (c + 0.5) * draw.PATCH, (r + 0.5) * draw.PATCH
    return x0 <= cx < x1 and y0 <= cy < y1


def priors(n_train: int = 20000, n_test: int = 500, split: str = "test") -> dict[str, float]:
    """Question-only prior accuracy of every task on `split` (majority answers from `n_train` training draws)."""
    majority = {t: question_only_answers(t, n_train) for t in tasks.TASKS}
    return prior_accuracy(build(split, n_test), majority)
