"""Notebook sources follow the rules of STYLE.md (Notebooks): stripped, parametrised, runnable headless.

nbmake executes them with their defaults (see pyproject.toml); this file checks the committed files themselves
and runs every notebook, unchanged, in fast mode on every model family's tiny model (`tpx.reproduce.FAMILIES`).
"""

import ast
from pathlib import Path

import nbformat
import pytest

from tpx.reproduce import FAMILIES, GEOMETRY, reproduce

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return _code_cells(nb)[0]


def literal_assignments(source: str) -> dict[str, object]:
    """The names and values of a cell that holds only `name = <literal>` lines.

    Raises:
        ValueError: a statement is anything else (a call, an expression, an import, a derived value).
    """
    values = {}
    for stmt in ast.parse(source).body:
        if not (isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets)):
            raise ValueError(f"line {stmt.lineno}: only `name = literal` is allowed, got {ast.unparse(stmt)!r}")
        try:
            value = ast.literal_eval(stmt.value)
        except ValueError as err:
            raise ValueError(f"line {stmt.lineno}: {ast.unparse(stmt.value)!r} is not a literal") from err
        values.update({t.id: value for t in stmt.targets})
    return values


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request) -> nbformat.NotebookNode:
    return nbformat.read(request.param, as_version=4)


def test_quickstart_exists():
    assert (NOTEBOOKS_DIR / "00_quickstart.ipynb").is_file()


def test_names_are_numbered():
    assert [p.name for p in NOTEBOOKS if not p.name[:2].isdigit() or p.name[2] != "_"] == []


def test_outputs_are_stripped(nb):
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert dirty == [], f"cells {dirty} have outputs or an execution_count: strip them before committing"


def test_first_cell_is_markdown(nb):
    assert nb.cells and nb.cells[0].cell_type == "markdown"


def test_first_code_cell_is_literal_parameters(nb):
    cell = _parameters_cell(nb)
    assert "parameters" in cell.metadata.get("tags", [])
    assert "figures_dir" in literal_assignments(cell.source)


def test_papermill_sees_every_parameter(nb):
    """`papermill --help-notebook` lists every parameter (its line parser drops lines it cannot read)."""
    from papermill.translators import PythonTranslator

    source = _parameters_cell(nb).source
    assert [p.name for p in PythonTranslator.inspect({"source": source})] == list(literal_assignments(source))


def test_fast_mode_for_make_test(nb):
    """nbmake (make test) runs every notebook in its fast mode, writing figures outside figures/."""
    cell = _parameters_cell(nb)
    assert literal_assignments(cell.source).get("fast") is False, "declare `fast = False` (the full run)"
    mock = cell.metadata.get("nbmake", {}).get("mock", {})
    assert mock.get("fast") is True, 'set the parameters cell metadata nbmake.mock = {"fast": true, ...}'
    assert mock.get("figures_dir") not in (None, "../figures"), "nbmake.mock.figures_dir must not be ../figures"


def test_execution_timeout_and_kernel(nb):
    timeout = nb.metadata.get("execution", {}).get("timeout")
    assert isinstance(timeout, int) and timeout > 0, "set metadata.execution.timeout (seconds per cell)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"  # papermill and nbmake use it


def test_no_shell_or_pip_magics(nb):
    lines = [ln.strip() for c in _code_cells(nb) for ln in c.source.splitlines()]
    assert [ln for ln in lines if ln.startswith(("!", "%pip", "%conda"))] == []


@pytest.mark.parametrize(
    "source, ok",
    [
        ('model = "tiny"\nretentions = [0.5, 0.25]\nalpha = -0.5\nfigures_dir = "../figures"', True),
        ("grid = (3, 4)\nopts = {'a': 1}\nseed = None  # comment", True),
        ("n_samples = 2 * 8", False),
        ("import math", False),
        ("retention = 0.5\nn_keep = round(retention * 576)", False),
        ("print(1)", False),
        ("x: int = 1", False),
    ],
)
def test_literal_assignments_rule(source, ok):
    if ok:
        literal_assignments(source)
    else:
        with pytest.raises(ValueError, match="line"):
            literal_assignments(source)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_on_every_family(path, family, tmp_path):
    """As a user would: papermill with only `model` (and `fast`) changed, figures into a temporary folder.
    Budgets a family cannot reach are skipped with their reason and degenerate results reported, not raised."""
    table = reproduce(NOTEBOOKS_DIR, tmp_path / "notebooks", tmp_path / "figures", fast=True, only=path.name,
                      progress=False, jobs=1, readme=None, parameters={"model": family})
    assert table["notebook"].tolist() == [path.name]
    row = table.iloc[0]
    assert row.status == "ok", f"{path.name} on {family!r}: {row.error}"


@pytest.mark.parametrize("family", GEOMETRY)
def test_language_guidance_runs_at_every_published_geometry(family, tmp_path):
    """Notebook 03 (hook-V, -E and -L methods, guided and not) on each family's published geometry
    (`tpx.models.geometry`): it found the square-image AnyRes ambiguity of LLaVA-NeXT's vision records. The whole
    notebook × geometry table is `python -m tpx reproduce --families geometry` (about an hour on one core)."""
    path = NOTEBOOKS_DIR / "03_language_guidance.ipynb"
    table = reproduce(NOTEBOOKS_DIR, tmp_path / "notebooks", tmp_path / "figures", fast=True, only=path.name,
                      progress=False, jobs=1, readme=None, parameters={"model": family})
    row = table.iloc[0]
    assert row.status == "ok", f"{path.name} on {family!r}: {row.error}"
