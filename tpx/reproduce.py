"""Run every numbered notebook headless with papermill, report what it wrote, and render the README's results.

`python -m tpx reproduce` (and `make figures`) call `reproduce`. Sources stay in `notebooks/` with their
outputs stripped; executed copies go to a git-ignored build folder, the figures and `findings.json` to
`figures/`, and the README's results table is rewritten from `findings.json` (`tpx.analysis.findings`).

Notebooks run `jobs` at a time, each kernel with one torch thread (measured fastest per core on a small model;
see `benchmarks/throughput.py`). Notebooks 02, 03 and 07 evaluate the same samples under configurations that
notebook 01 also runs and read them from the evaluation cache (`build/cache`); each declares that in its
metadata (`"tpx": {"after": ["01_position_bias.ipynb"]}`) and starts only once 01 has finished, while
notebooks with nothing to share fill the other slot.
"""

import fnmatch
import logging
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import papermill
from tqdm.auto import tqdm

from tpx.widgets import STATIC_ENV

logger = logging.getLogger(__name__)

NOTEBOOK_NAME = re.compile(r"\d{2}_.+\.ipynb")
NOTEBOOK_PREFIX = re.compile(r"\d{2}_")
TIMING = "timing"  # subfolder of figures_dir for figures and records whose content is a measured time
COLUMNS = ["notebook", "seconds", "status", "figures", "error"]


def find_notebooks(notebooks_dir: str | os.PathLike, only: str | None = None) -> list[Path]:
    """The notebooks `NN_*.ipynb` of a folder, in sorted order.

    Args:
        notebooks_dir: folder holding the notebooks (not searched recursively).
        only: keep the notebooks whose file name matches this fnmatch pattern (e.g. `"0[0-2]_*"`);
            a pattern without wildcards matches as a substring (e.g. `"quickstart"`).

    Returns:
        Paths of the matching notebooks, sorted by name.

    Raises:
        FileNotFoundError: `notebooks_dir` is not a folder.
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks_dir={str(folder)!r} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and NOTEBOOK_NAME.fullmatch(p.name))
    if only is not None:
        pattern = only if any(c in only for c in "*?[") else f"*{only}*"
        paths = [p for p in paths if fnmatch.fnmatch(p.name, pattern)]
    return paths


def _snapshot(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _parameters(path: Path, notebooks_dir: Path, figures_dir: Path, fast: bool) -> dict:
    """Overrides for the parameters the notebook declares; papermill would inject undeclared ones too."""
    declared = papermill.inspect_notebook(str(path))
    parameters = {}
    if "figures_dir" in declared:  # relative to the notebook's working directory, so "../figures" by default
        parameters["figures_dir"] = os.path.relpath(figures_dir.resolve(), notebooks_dir.resolve())
    if "timing_dir" in declared:  # figures whose content is a timing live apart, in figures_dir/timing
        parameters["timing_dir"] = os.path.relpath((figures_dir / TIMING).resolve(), notebooks_dir.resolve())
    if fast and "fast" in declared:
        parameters["fast"] = True
    return parameters


def _run_one(path: Path, out: Path, notebooks_dir: Path, figures_dir: Path, fast: bool) -> str:
    """Execute one notebook; returns "" on success, else the error in one line."""
    try:
        parameters = _parameters(path, notebooks_dir, figures_dir, fast)
        timeout = nbformat.read(path, as_version=4).metadata.get("execution", {}).get("timeout")
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters=parameters,
            cwd=str(notebooks_dir),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
        )
    except Exception as err:  # a failed notebook is a row in the report, not the end of the run
        name, value = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
        message = f"{name}: {value}".splitlines()[0]
        logger.error("%s failed (%s); executed copy: %s", path.name, message, out)
        return message
    return ""


ARCH_MARKERS = ("<!-- architecture:start (generated from data/organism/llava-organism/config.json by "
                "`python -m tpx reproduce`) -->", "<!-- architecture:end -->")


def update_architecture(readme: str | os.PathLike, config_path: str | os.PathLike) -> bool:
    """Rewrite the line between `ARCH_MARKERS` in `readme` from `config_path`; True if the file changed."""
    import json

    from tpx.analysis.findings import replace_between
    from tpx.organism.card import architecture

    text = Path(readme).read_text()
    if ARCH_MARKERS[0] not in text or ARCH_MARKERS[1] not in text:
        return False
    return replace_between(readme, ARCH_MARKERS, architecture(json.loads(Path(config_path).read_text())))


def _after(path: Path) -> set[str]:
    """The notebooks (file names) `path` must wait for: its metadata `tpx.after`."""
    return set(nbformat.read(path, as_version=4).metadata.get("tpx", {}).get("after", []))


def _schedule(paths: list[Path], run: Any, jobs: int) -> list[tuple]:
    """Run `run(path)` for every path, `jobs` at a time, in order, each only after the notebooks it names in
    `tpx.after` (those not selected are not waited for); results in the order of `paths`."""
    names = {p.name for p in paths}
    after = {p.name: _after(p) & names for p in paths}
    results: dict[str, tuple] = {}
    pending, running, done = list(paths), {}, set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for p in [p for p in pending if after[p.name] <= done][: jobs - len(running)]:
                pending.remove(p)
                running[pool.submit(run, p)] = p
            if not running:
                raise ValueError(f"notebooks wait for each other: {[p.name for p in pending]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                p = running.pop(f)
                results[p.name] = f.result()
                done.add(p.name)
    return [results[p.name] for p in paths]


def reproduce(
    notebooks_dir: str | os.PathLike = "notebooks",
    build_dir: str | os.PathLike = "build/notebooks",
    figures_dir: str | os.PathLike = "figures",
    fast: bool = False,
    only: str | None = None,
    progress: bool = True,
    jobs: int | None = None,
    readme: str | os.PathLike | None = "README.md",
) -> pd.DataFrame:
    """Execute the notebooks `NN_*.ipynb` headless, `jobs` at a time, each after those it declares in `tpx.after`.

    Each notebook runs with its working directory set to `notebooks_dir`, as under nbmake. A notebook that
    declares `figures_dir` gets it pointed at `figures_dir` (relative to `notebooks_dir`, hence its default
    "../figures" in the normal layout); one that declares `fast` gets `fast=True` when `fast` is set. A
    failing notebook is reported and the run goes on with the others. After a full (not fast) run, the
    table between the findings markers of `readme` is rewritten from `figures_dir/findings.json`.

    Args:
        notebooks_dir: folder of the source notebooks.
        build_dir: where the executed copies are written, under the same file names.
        figures_dir: folder the notebooks write their figures to; watched for new or modified files.
        fast: pass `fast=True` to the notebooks whose parameters cell declares `fast`.
        only: run only the notebooks whose name matches (see `find_notebooks`).
        progress: show a progress bar over the notebooks.
        jobs: notebooks run at the same time (each a kernel process); default: the CPU count, at most 2.
            1 runs them one after another.
        readme: the README whose findings table is rendered (None: leave it alone; skipped in fast mode).

    Returns:
        One row per notebook with columns `notebook` (file name), `seconds` (wall time), `status`
        ("ok" or "failed"), `figures` (sorted list of paths under `figures_dir` that the notebook
        created or modified; with `jobs` > 1, figures written while two notebooks ran may be listed under
        both) and `error` ("" when ok). Empty if no notebook matched.

    Raises:
        FileNotFoundError: `notebooks_dir` is not a folder.
        ValueError: `jobs` is not a positive int.
    """
    notebooks_dir, build_dir, figures_dir = Path(notebooks_dir), Path(build_dir), Path(figures_dir)
    jobs = min(2, os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int ≥ 1, got {jobs!r}")
    paths = find_notebooks(notebooks_dir, only)
    if not paths:
        logger.warning("no notebooks NN_*.ipynb in %s (only=%r)", notebooks_dir, only)
        return pd.DataFrame([], columns=COLUMNS)
    build_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(STATIC_ENV)
    os.environ[STATIC_ENV] = "1"  # the kernels inherit it: no live widgets headless (see tpx.widgets)
    bar = tqdm(total=len(paths), desc="notebooks", unit="nb", disable=not progress)

    def one(path: Path) -> tuple:
        logger.info("running %s", path.name)
        before, start = _snapshot(figures_dir), time.perf_counter()
        error = _run_one(path, build_dir / path.name, notebooks_dir, figures_dir, fast)
        seconds = time.perf_counter() - start
        after = _snapshot(figures_dir)
        # figures are named after their notebook (`NN_name`), so one running beside it is not credited with them
        mine = lambda f: f.name.startswith(path.name[:3]) or not NOTEBOOK_PREFIX.match(f.name)  # noqa: E731
        written = sorted(str(p.relative_to(figures_dir)) for p, t in after.items() if before.get(p) != t and mine(p))
        bar.update()
        return (path.name, round(seconds, 1), "failed" if error else "ok", written, error)

    try:
        rows = _schedule(paths, one, jobs)
    finally:
        bar.close()
        if previous is None:
            os.environ.pop(STATIC_ENV, None)
        else:
            os.environ[STATIC_ENV] = previous
    findings_path = figures_dir / "findings.json"
    if readme is not None and not fast and Path(readme).exists() and findings_path.exists():
        from tpx.analysis.findings import update_readme

        update_readme(readme, findings_path)
        config = Path(readme).parent / "data" / "organism" / "llava-organism" / "config.json"
        if config.exists():
            update_architecture(readme, config)
    return pd.DataFrame(rows, columns=COLUMNS)
