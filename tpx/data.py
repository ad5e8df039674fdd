"""Data for tpx: one `Sample` type for the organism suite and the real benchmarks of the study.

`load_samples(benchmark, ...)` returns a list of `Sample`s: the synthetic suite of the model organism
(`"organism"`), or a real benchmark read with `datasets` from the lmms-lab hub copy the field evaluates on
(POPE, GQA, MME, TextVQA, ScienceQA-IMG, MMBench, RefCOCO/+/g, VizWiz) or from a local folder or parquet file
with the same columns. Prompts follow LLaVA-1.5's evaluation formats (Liu et al., CVPR 2024, arXiv 2310.03744):
the short-answer suffix for open questions, option letters for multiple choice. Nothing is downloaded at import;
`datasets` is imported only when a real benchmark is loaded.
"""

from __future__ import annotations

import difflib
import io
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BENCHMARKS", "MULTIPLE_CHOICE", "SHORT_ANSWER", "Benchmark", "Sample", "check_benchmark",
           "load_benchmark", "load_samples", "organism", "organism_record", "replace_input", "sample_picture"]

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
GROUNDING = "Please provide the bounding box coordinate of the region this sentence describes: {}"
MME_SUFFIX = " Please answer yes or no."


@dataclass
class Sample:
    """One question about one image (or several), with the ground truth that scores the answer.

    Attributes:
        id: unique within its benchmark (the dataset's question id, or task/split/index for the organism).
        image: a PIL image, a list of them, or None for a text-only question.
        question: the question as the dataset states it.
        prompt: the text the model is given, in the benchmark's answer format (no image placeholder).
        answers: reference answers (several human answers for VQA-style benchmarks; one letter for
            multiple choice; the referring expression's box for grounding lives in `metadata["box"]`).
        task: the sub-task (POPE negative type, MME subtask, organism task, ...).
        benchmark: the benchmark key in `BENCHMARKS`, or "organism".
        metadata: anything else the scorer or the plots need (boxes, options, image id, grid cell).
    """

    id: str
    image: Any
    question: str
    prompt: str
    answers: list[str]
    task: str
    benchmark: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The first reference answer."""
        return self.answers[0]


def sample_picture() -> Any:
    """A real photograph (Grace Hopper, 512×600) shipped with matplotlib, as an RGB PIL image."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def replace_input(sample: Sample, image: str | Path | Any = None, question: str | None = None) -> Sample:
    """`sample` with your own image and / or question, e.g. to explore pruning on a picture of yours.

    Args:
        sample: the sample to start from (its image or question is kept where you give none).
        image: a path to an image file or a PIL image; None keeps the sample's.
        question: the question, given to the model as written; None keeps the sample's.

    Returns:
        A new `Sample` (task "yours", no reference answers when anything was replaced), or `sample` itself when
        both are None.

    Raises:
        FileNotFoundError: for an image path that does not exist.
        ValueError: for an empty question.
    """
    if image is None and question is None:
        return sample
    if isinstance(image, str | Path):
        if not Path(image).expanduser().is_file():
            raise FileNotFoundError(f"image={str(image)!r} is not a file (looked in {Path(image).resolve()})")
        image = Path(image).expanduser()
    if question is not None and not str(question).strip():
        raise ValueError("question must not be empty")
    text = sample.question if question is None else str(question).strip()
    return Sample(id=f"{sample.id}/yours", image=sample.image if image is None else _image(image), question=text,
                  prompt=sample.prompt if question is None else text, answers=[], task="yours",
                  benchmark=sample.benchmark, metadata={})


# ---- the organism suite ---------------------------------------------------------------------------------

def organism(tasks: str | Sequence[str] | None = None, split: str = "test", n: int = 50, seed: int = 0,
             haystack: int | None = None) -> list[Sample]:
    """Samples of the organism's synthetic suite (`tpx.organism.suite`), task-major.

    The organism answers bare questions (it was trained without format suffixes), so `prompt == question`.

    Args:
        tasks: a task name, several, or None for all (`tpx.organism.tasks.TASKS`).
        split: "train", "val" or "test".
        n: samples per task, ≥ 1.
        seed: which block of suite indices: `seed * n .. seed * n + n - 1` (seed 0 gives the suite's
            canonical first `n`, as `suite.build` does); blocks of different seeds are disjoint.
        haystack: for the panel task `anchor` only: how many of its four panels hold objects (1-4), the
            haystack of the Visual Haystack analogue (Wen et al. 2025, arXiv 2502.11501, Q3); the named panel
            always holds some. None: the suite's own samples (4 gives the same ones, with
            `metadata["haystack"]` set and `/haystack4` in the id).

    Raises:
        ValueError: for an unknown task or split, `n` < 1, or a haystack outside 1..4 or with a task that has
            no panels.
    """
    from tpx.organism import draw, suite
    from tpx.organism import tasks as task_table

    names = list(task_table.TASKS) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in task_table.TASKS]
    if unknown:
        raise ValueError(f"unknown organism task(s) {unknown}{_did_you_mean(unknown[0], task_table.TASKS)} "
                         f"known: {', '.join(task_table.TASKS)}")
    if split not in suite.SPLITS:
        raise ValueError(f"split must be one of {list(suite.SPLITS)}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int ≥ 1, got {n!r}")
    if haystack is not None:
        draw.check_haystack(haystack)
        flat = [t for t in names if t not in task_table.PANEL_TASKS]
        if flat:
            raise ValueError(f"haystack applies to the panel tasks {list(task_table.PANEL_TASKS)} only, "
                             f"got tasks {flat}")
    suffix = "" if haystack is None else f"/haystack{haystack}"
    out = []
    for task in names:
        for index in range(seed * n, seed * n + n):
            s = suite.make_sample(task, split, index, haystack)
            out.append(Sample(id=f"{task}/{split}/{index}{suffix}", image=s.image, question=s.question, prompt=s.question,
                              answers=[s.answer], task=task, benchmark="organism",
                              metadata={**s.meta, "split": split}))
    return out


def organism_record(sample: Sample) -> Any:
    """The organism suite's own sample type for `sample` (what `suite.score` reads)."""
    from tpx.organism import suite

    return suite.Sample(sample.image, sample.question, sample.answer, sample.task,
                        sample.metadata.get("split", "test"), sample.metadata)


# ---- real benchmarks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how one of its rows becomes `Sample`s.

    Attributes:
        name: key in `BENCHMARKS`.
        hub: the hub dataset id (the lmms-lab copy).
        config: the hub config (subset), or None.
        split: default split.
        rows: maps one dataset row (a dict), the benchmark name and the row's index in the split to samples.
        category: keep only rows whose `category` column equals this (POPE's negative types), or None.
        images: for GQA, the config holding the images, joined on `imageId` = `id`.
    """

    name: str
    hub: str
    config: str | None
    split: str
    rows: Callable[[dict[str, Any], str, int], list[Sample]]
    category: str | None = None
    images: str | None = None


def _image(value: Any) -> Any:
    """A PIL RGB image from a decoded `datasets` Image, raw `{"bytes": ...}`, bytes or a file path."""
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, str | Path):
        value = Image.open(value)
    return value.convert("RGB")


def _pope(row: dict, name: str, index: int) -> list[Sample]:
    q = row["question"].strip()
    return [Sample(str(row["question_id"]), _image(row["image"]), q, f"{q}\n{SHORT_ANSWER}",
                   [row["answer"].strip().lower()], row.get("category") or "pope", name,
                   {"image_source": row.get("image_source")})]


def _gqa(row: dict, name: str, index: int) -> list[Sample]:
    q = row["question"]
    return [Sample(str(row["id"]), _image(row["image"]), q, f"{q}\n{SHORT_ANSWER}", [row["answer"]], "gqa", name,
                   {"image_id": row["imageId"]})]


def _mme(row: dict, name: str, index: int) -> list[Sample]:
    # LLaVA-1.5 replaces MME's own " Please answer yes or no." by the short-answer suffix; the two questions
    # of an image share its question_id (the image path), so the row index keeps them apart
    q = row["question"].strip()
    prompt = f"{q.replace(MME_SUFFIX, '')}\n{SHORT_ANSWER}"
    image_id = str(row["question_id"])
    return [Sample(f"{image_id}#{index}", _image(row["image"]), q, prompt,
                   [row["answer"].strip().lower()], row["category"], name, {"image_id": image_id})]


def _vqa(suffix: str, ocr: bool) -> Callable[[dict, str, int], list[Sample]]:
    def rows(row: dict, name: str, index: int) -> list[Sample]:
        q = row["question"].capitalize()
        ref = f"\nReference OCR token: {', '.join(row.get('ocr_tokens') or [])}" if ocr else ""
        return [Sample(str(row["question_id"]), _image(row["image"]), row["question"], f"{q}{ref}\n{suffix}",
                       list(row["answers"]), row.get("category") or name, name, {})]
    return rows


def _choices(question: str, options: list[str], hint: str | None) -> str:
    lines = [f"{hint}\n{question}" if hint else question]
    lines += [f"{letter}. {text}" for letter, text in zip(string.ascii_uppercase, options)]
    return "\n".join(lines + [MULTIPLE_CHOICE])


def _scienceqa(row: dict, name: str, index: int) -> list[Sample]:
    options = list(row["choices"])
    hint = f"Context: {row['hint']}" if row.get("hint") else None
    prompt = _choices(row["question"], options, hint)
    return [Sample(str(index), _image(row["image"]), row["question"], prompt, [string.ascii_uppercase[row["answer"]]],
                   row.get("subject") or "scienceqa", name, {"options": options})]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != "nan"


def _mmbench(row: dict, name: str, index: int) -> list[Sample]:
    options = [row[c] for c in "ABCDE" if c in row and _present(row[c])]
    hint = row["hint"] if _present(row.get("hint")) else None
    return [Sample(str(row["index"]), _image(row["image"]), row["question"], _choices(row["question"], options, hint),
                   [row["answer"]], row.get("category") or "mmbench", name, {"options": options})]


def _refcoco(row: dict, name: str, index: int) -> list[Sample]:
    # one sample per referring expression, as lmms-eval does; boxes go from (x, y, w, h) to (x1, y1, x2, y2) px
    image = _image(row["image"])
    x, y, w, h = (float(v) for v in row["bbox"])
    meta = {"box": [x, y, x + w, y + h], "width": image.width, "height": image.height}
    return [Sample(f"{row['question_id']}#{k}", image, expr, GROUNDING.format(expr), [expr], "grounding", name, meta)
            for k, expr in enumerate(row["answer"])]


def _entries() -> Iterator[Benchmark]:
    for kind in ("random", "popular", "adversarial"):
        yield Benchmark(f"pope_{kind}", "lmms-lab/POPE", None, "test", _pope, category=kind)
    yield Benchmark("pope", "lmms-lab/POPE", None, "test", _pope)
    yield Benchmark("gqa", "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", _gqa,
                    images="testdev_balanced_images")
    yield Benchmark("mme", "lmms-lab/MME", None, "test", _mme)
    # LLaVA-1.5's TextVQA prompts carry the dataset's OCR tokens (its llava_textvqa_val_v051_ocr.jsonl)
    yield Benchmark("textvqa", "lmms-lab/textvqa", None, "validation", _vqa(SHORT_ANSWER, ocr=True))
    yield Benchmark("scienceqa_img", "lmms-lab/ScienceQA", "ScienceQA-IMG", "test", _scienceqa)
    yield Benchmark("mmbench", "lmms-lab/MMBench", "en", "dev", _mmbench)
    for name, hub in (("refcoco", "RefCOCO"), ("refcoco+", "RefCOCOplus"), ("refcocog", "RefCOCOg")):
        yield Benchmark(name, f"lmms-lab/{hub}", None, "val", _refcoco)
    yield Benchmark("vizwiz", "lmms-lab/VizWiz-VQA", None, "val", _vqa(f"{UNANSWERABLE}\n{SHORT_ANSWER}", ocr=False))


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _entries()}


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ";"


def check_benchmark(name: str) -> str:
    """`name` if it is `"organism"` or a key of `BENCHMARKS`.

    Raises:
        ValueError: otherwise; the message suggests the closest name and lists the known ones.
    """
    known = ["organism", *BENCHMARKS]
    if name not in known:
        raise ValueError(f"unknown benchmark {name!r}{_did_you_mean(name, known)} known: {', '.join(known)}")
    return name


def _local_files(path: Path, config: str | None, split: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    patterns = [f"{config}/{split}-*.parquet", f"{config}/{split}.parquet"] if config else []
    patterns += [f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}.parquet"]
    for pattern in patterns:
        files = sorted(str(p) for p in path.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"no parquet files for split {split!r} in {path}; looked for "
                            f"{', '.join(str(path / p) for p in patterns)}")


def _table(spec: Benchmark, config: str | None, split: str, path: str | Path | None) -> Any:
    import datasets

    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{spec.name}: local path {path} does not exist")
        return datasets.load_dataset("parquet", data_files=_local_files(path, config, split), split="train")
    try:
        return datasets.load_dataset(spec.hub, config, split=split)
    except Exception as err:  # offline, missing, gated, renamed: all need the same advice
        where = f"{spec.hub}" + (f" (config {config!r})" if config else "") + f", split {split!r}"
        layout = f"<dir>/{config}/{split}-*.parquet" if config else f"<dir>/data/{split}-*.parquet"
        raise FileNotFoundError(
            f"could not load benchmark {spec.name!r}: looked for the hub dataset {where} and got "
            f"{type(err).__name__}: {err}. Provide it by logging in and running with the hub reachable "
            f"(unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or pass path= a local copy: a folder laid out like "
            f"the hub repo ({layout}) or one parquet file with the same columns") from err


def _subset(count: int, n: int | None, seed: int) -> list[int]:
    if n is None or n >= count:
        return list(range(count))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int ≥ 1 or None, got {n!r}")
    return sorted(np.random.default_rng(seed).choice(count, n, replace=False).tolist())


def load_benchmark(name: str, *, split: str | None = None, n: int | None = None, seed: int = 0,
                   path: str | Path | None = None) -> list[Sample]:
    """Samples of a real benchmark, from the hub or a local copy with the hub's columns.

    Args:
        name: a key of `BENCHMARKS` (`pope`, `pope_random`, `pope_popular`, `pope_adversarial`, `gqa`, `mme`,
            `textvqa`, `scienceqa_img`, `mmbench`, `refcoco`, `refcoco+`, `refcocog`, `vizwiz`).
        split: the dataset split; default: the one the field evaluates on (`Benchmark.split`).
        n: a seeded random subset of `n` dataset rows (in dataset order), or None for all. RefCOCO rows
            give one sample per referring expression, so they may give more than `n` samples.
        seed: seed of that subset.
        path: a local parquet file, or a folder laid out like the hub repo (`<config>/<split>-*.parquet`,
            `data/<split>-*.parquet` or `<split>.parquet`). GQA needs a folder with both configs.

    Raises:
        ValueError: for an unknown benchmark name.
        FileNotFoundError: when the data is neither on the hub (or reachable) nor at `path`; the message
            says where it looked and how to provide it.
    """
    if check_benchmark(name) == "organism":
        raise ValueError("the organism is not a hub benchmark: use load_samples('organism', ...)")
    spec = BENCHMARKS[name]
    split = spec.split if split is None else split
    table = _table(spec, spec.config, split, path)
    if spec.category is not None:
        table = table.filter(lambda c: c == spec.category, input_columns="category")
    rows = _subset(len(table), n, seed)
    table = table.select(rows)
    if spec.images is None:
        return [s for index, row in zip(rows, table) for s in spec.rows(row, name, index)]
    images = _table(spec, spec.images, split, path)
    where = {i: k for k, i in enumerate(images["id"])}
    missing = sorted(set(table["imageId"]) - set(where))
    if missing:
        raise FileNotFoundError(f"{name}: images {missing[:5]} are missing from config {spec.images!r}")
    decoded = {i: _image(images[where[i]]["image"]) for i in dict.fromkeys(table["imageId"])}
    rows_with_images = (dict(row, image=decoded[row["imageId"]]) for row in table)
    return [s for index, row in zip(rows, rows_with_images) for s in spec.rows(row, name, index)]


def load_samples(benchmark: str, *, split: str | None = None, n: int | None = None, seed: int = 0,
                 path: str | Path | None = None, tasks: str | Sequence[str] | None = None,
                 haystack: int | None = None) -> list[Sample]:
    """Samples of the organism suite (`benchmark="organism"`) or of a real benchmark (see `load_benchmark`).

    For the organism, `n` counts samples per task (default 50), `tasks` picks the tasks and `haystack` sizes
    the anchor task's haystack (see `organism`); for real benchmarks `tasks` and `haystack` must be None.

    Raises:
        ValueError: for an unknown benchmark (with the closest name), `path=` with the organism (its samples
            are drawn from a seed, never read from files), or `tasks` / `haystack` with a real benchmark.
    """
    if check_benchmark(benchmark) == "organism":
        if path is not None:
            raise ValueError(f"path= applies to hub benchmarks; the organism's samples are drawn from its seed, "
                             f"got path={str(path)!r} (use split=, n=, seed=, tasks=)")
        return organism(tasks, split or "test", 50 if n is None else n, seed, haystack)
    if tasks is not None:
        raise ValueError(f"tasks= applies to the organism only, got tasks={tasks!r} for {benchmark!r}")
    if haystack is not None:
        raise ValueError(f"haystack= applies to the organism's anchor task only, got haystack={haystack!r} "
                         f"for {benchmark!r}")
    return load_benchmark(benchmark, split=split, n=n, seed=seed, path=path)
