"""Command line: `python -m tpx reproduce | evaluate | organism ...`.

`reproduce` runs every notebook headless and prints what each one wrote; `evaluate` and `organism` hand
their arguments to `tpx.evaluate_cli.main` and `tpx.organism.cli.main`, imported only when called. Every command
works from any directory: defaults point into the repository this package sits in. Bad input ends the
command with one line on stderr and exit status 2; `--traceback` (anywhere on the line) shows the traceback.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PASS_THROUGH = {
    "evaluate": ("tpx.evaluate_cli", "evaluate methods x retentions on a dataset (see `tpx evaluate --help`)"),
    "organism": ("tpx.organism.cli", "build or train the tiny model organism (see `tpx organism --help`)"),
}
# the checkout this package sits in (an editable install); notebooks/, figures/ and build/ live there
ROOT = Path(__file__).resolve().parents[1]
# what a user can get wrong: a value, a name, a path, a missing optional package, an unreachable hub
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (argparse's own status), without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _in_root(name: str) -> str:
    """`ROOT/name` when this package sits in a checkout that has it, else `name` (relative to the cwd)."""
    return str(ROOT / name) if (ROOT / "notebooks").is_dir() else name


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m tpx", description=__doc__.splitlines()[0],
                     epilog="--traceback anywhere on the line shows the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    rep = commands.add_parser("reproduce", help="run every notebooks/NN_*.ipynb headless with papermill")
    rep.add_argument("--fast", action="store_true", help="pass fast=True to notebooks that declare `fast`")
    rep.add_argument("--notebooks-dir", default=_in_root("notebooks"), help="source notebooks (default: %(default)s)")
    rep.add_argument("--build-dir", default=_in_root("build/notebooks"), help="executed copies (default: %(default)s)")
    rep.add_argument("--figures-dir", default=None,
                     help="figures folder (default: figures, or build/figures-fast with --fast, so that a quick "
                          "run never overwrites the committed figures; both in the checkout)")
    rep.add_argument("--only", metavar="PATTERN", help="only notebooks whose name matches, e.g. '00_*'")
    rep.add_argument("--jobs", type=int, default=None,
                     help="notebooks run at the same time after the first, which fills the shared evaluation cache "
                          "(default: the CPU count, at most 2)")
    rep.add_argument("--readme", default=_in_root("README.md"),
                     help="README whose results table is rendered from figures/findings.json after a full run "
                          "(default: %(default)s)")
    rep.add_argument("--families", nargs="?", const="all", metavar="NAMES",
                     help="instead: every notebook in fast mode on each family's tiny model (comma-separated names; "
                          "default: tpx.reproduce.FAMILIES; `geometry`: tpx.reproduce.GEOMETRY, the published "
                          "checkpoints' geometry), outputs in build/families/; prints the pass table and writes it "
                          "into --readme between its families (geometry) markers")
    rep.add_argument("--executed", action="store_true",
                     help="with --families: rebuild the pass table from the executed copies in build/families/ "
                          "(after an interrupted or piecewise run), running nothing")
    for name, (_, help_text) in PASS_THROUGH.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _pass_through(command: str, argv: list[str]) -> int:
    module_name = PASS_THROUGH[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        parts = module_name.split(".")
        if err.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise  # a dependency of the module is missing: show the real error
        print(f"tpx {command}: {module_name} is not available in this installation ({err})", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


def _reproduce(args: argparse.Namespace) -> int:
    from tpx.reproduce import reproduce  # papermill and pandas only for this command

    if args.families:
        return _families(args)
    figures_dir = args.figures_dir or _in_root("build/figures-fast" if args.fast else "figures")
    table = reproduce(args.notebooks_dir, args.build_dir, figures_dir, fast=args.fast, only=args.only, jobs=args.jobs,
                      readme=args.readme)
    if table.empty:
        where = f"{args.notebooks_dir!r}" + (f" matching --only {args.only!r}" if args.only else "")
        print(f"no notebooks NN_*.ipynb in {where}", file=sys.stderr)
        return 1
    shown = table.assign(figures=table["figures"].map(lambda f: ", ".join(f) or "-"))
    print(shown.drop(columns="error").to_string(index=False))
    failed = table[table["status"] != "ok"]
    for row in failed.itertuples():
        print(f"FAILED {row.notebook}: {row.error} (executed copy in {args.build_dir})", file=sys.stderr)
    return 1 if len(failed) else 0


def _families(args: argparse.Namespace) -> int:
    from tpx.reproduce import (FAMILIES, FAMILY_MARKERS, GEOMETRY, GEOMETRY_MARKERS, executed, families,
                               family_table, update_family_table)

    named = {"all": FAMILIES, "geometry": GEOMETRY}
    names = named.get(args.families) or tuple(n.strip() for n in args.families.split(",") if n.strip())
    markers = GEOMETRY_MARKERS if all(n in GEOMETRY for n in names) else FAMILY_MARKERS
    if args.executed:
        matrix = executed(names, _in_root("build/families"), args.notebooks_dir)
    else:
        matrix = families(names, args.notebooks_dir, _in_root("build/families"), only=args.only, jobs=args.jobs)
    print(family_table(matrix))
    if args.readme and Path(args.readme).exists() and markers[0] in Path(args.readme).read_text():
        update_family_table(args.readme, matrix, markers)
    return 1 if (matrix["status"] != "ok").any() else 0


def one_line_errors(prog: str, run: Callable[[], int], traceback: bool = False) -> int:
    """`run()`, with a user error (`USER_ERRORS`) printed as `prog: error: message` on one line, status 2.

    A message of several lines (a hub error) keeps its first line. Any other exception is a bug and propagates
    with its traceback, as do user errors when `traceback` is set.
    """
    try:
        return run()
    except USER_ERRORS as err:
        if traceback:
            raise
        lines = str(err).strip().splitlines() or [type(err).__name__]
        more = " (--traceback for details)" if len(lines) > 1 else ""
        print(f"{prog}: error: {lines[0]}{more}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tpx").setLevel(logging.INFO)
    if argv and argv[0] in PASS_THROUGH:  # before argparse, so `organism --help` reaches organism's own parser
        return one_line_errors(f"python -m tpx {argv[0]}", lambda: _pass_through(argv[0], argv[1:]), traceback)
    args = _parser().parse_args(argv)
    return one_line_errors(f"python -m tpx {args.command}", lambda: _reproduce(args), traceback)


if __name__ == "__main__":
    sys.exit(main())
