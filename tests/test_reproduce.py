"""`tpx.reproduce` and the `python -m tpx` command line, on tiny notebooks made here."""

import sys
import types
from pathlib import Path

import nbformat
import pytest

from tpx.__main__ import main
from tpx.reproduce import find_notebooks, reproduce

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _write(path: Path, parameters: str | None, *code: str) -> None:
    cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}")]
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells += [nbformat.v4.new_code_cell(c) for c in code]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNEL}), path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """notebooks/ with a parametrised notebook, a plain one, a failing one and a non-numbered one."""
    root = tmp_path_factory.mktemp("lab")
    nbs = root / "notebooks"
    nbs.mkdir()
    write_fast = "from pathlib import Path\nPath(figures_dir, '01_fast.txt').write_text(str(fast))"
    _write(nbs / "01_params.ipynb", 'fast = False\nfigures_dir = "../figures"', write_fast)
    _write(nbs / "02_plain.ipynb", None, "open('cwd.txt', 'w').write('here')")
    _write(nbs / "03_fails.ipynb", "seed = 0", "raise RuntimeError('boom')")
    _write(nbs / "scratch.ipynb", None, "raise AssertionError('never run')")
    return root


@pytest.fixture(scope="module")
def report(lab):
    return reproduce(lab / "notebooks", lab / "build" / "notebooks", lab / "figures", fast=True, progress=False)


def test_runs_numbered_notebooks_in_order(report):
    assert report["notebook"].tolist() == ["01_params.ipynb", "02_plain.ipynb", "03_fails.ipynb"]
    assert report["status"].tolist() == ["ok", "ok", "failed"]
    assert (report["seconds"] >= 0).all()


def test_executed_copies_in_build_dir_and_sources_untouched(lab, report):
    built = sorted(p.name for p in (lab / "build" / "notebooks").iterdir())
    assert built == ["01_params.ipynb", "02_plain.ipynb", "03_fails.ipynb"]
    source = nbformat.read(lab / "notebooks" / "01_params.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code")


def test_fast_and_figures_dir_injected_only_where_declared(lab, report):
    executed = nbformat.read(lab / "build" / "notebooks" / "01_params.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "fast = True" in injected[0].source
    assert executed.metadata.papermill.parameters == {"fast": True, "figures_dir": "../figures"}
    assert (lab / "figures" / "01_fast.txt").read_text() == "True"
    assert report["figures"].tolist() == [["01_fast.txt"], [], []]
    failed = nbformat.read(lab / "build" / "notebooks" / "03_fails.ipynb", as_version=4)
    assert failed.metadata.papermill.parameters == {}  # declares seed only: no fast, no figures_dir


def test_working_directory_is_the_notebooks_folder(lab, report):
    assert (lab / "notebooks" / "cwd.txt").read_text() == "here"


def test_failure_is_reported_not_raised(report):
    failed = report.set_index("notebook").loc["03_fails.ipynb"]
    assert failed["status"] == "failed"
    assert "RuntimeError" in failed["error"] and "boom" in failed["error"]


def test_find_notebooks_only(lab):
    names = lambda only: [p.name for p in find_notebooks(lab / "notebooks", only)]  # noqa: E731
    assert names(None) == ["01_params.ipynb", "02_plain.ipynb", "03_fails.ipynb"]
    assert names("0[23]_*") == ["02_plain.ipynb", "03_fails.ipynb"]
    assert names("plain") == ["02_plain.ipynb"]
    assert names("nothing") == []
    with pytest.raises(FileNotFoundError, match="notebooks_dir"):
        find_notebooks(lab / "missing")


def test_cli_reproduce_exit_status_and_table(lab, capsys):
    common = ["reproduce", "--notebooks-dir", str(lab / "notebooks"), "--build-dir", str(lab / "cli"),
              "--figures-dir", str(lab / "figures")]
    assert main(common + ["--only", "03_*"]) == 1
    out, err = capsys.readouterr()
    assert "03_fails.ipynb" in out and "failed" in out
    assert "FAILED 03_fails.ipynb: RuntimeError: boom" in err
    assert main(common + ["--only", "nothing"]) == 1
    assert "no notebooks" in capsys.readouterr().err


@pytest.mark.parametrize("command, module", [("evaluate", "tpx.evaluate_cli"), ("organism", "tpx.organism.cli")])
def test_cli_passes_arguments_through(monkeypatch, command, module):
    seen = []
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=lambda argv: seen.append(argv) or 3))
    assert main([command, "train", "--resume"]) == 3
    assert seen == [["train", "--resume"]]


def test_cli_missing_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tpx.evaluate_cli", None)  # makes the import fail as if the file were absent
    assert main(["evaluate"]) == 2
    assert "tpx.evaluate_cli is not available" in capsys.readouterr().err


def test_readme_states_the_organism_architecture_from_its_config():
    import json
    from pathlib import Path

    from tpx.organism.card import architecture
    from tpx.reproduce import ARCH_MARKERS

    root = Path(__file__).resolve().parents[1]
    config = json.loads((root / "data/organism/llava-organism/config.json").read_text())
    text = (root / "README.md").read_text()
    line = text.split(ARCH_MARKERS[0], 1)[1].split(ARCH_MARKERS[1], 1)[0]
    assert line == architecture(config)
    assert f"hidden {config['text_config']['hidden_size']}" in line


def test_schedule_waits_for_declared_notebooks(tmp_path):
    import threading
    import time

    import nbformat

    from tpx.reproduce import _schedule

    paths = []
    for name, after in (("01_a.ipynb", []), ("02_b.ipynb", ["01_a.ipynb"]), ("03_c.ipynb", []), ("04_d.ipynb", ["01_a.ipynb"])):
        nb = nbformat.v4.new_notebook()
        if after:
            nb.metadata["tpx"] = {"after": after}
        nbformat.write(nb, tmp_path / name)
        paths.append(tmp_path / name)
    events, lock = [], threading.Lock()

    def run(path):
        with lock:
            events.append(("start", path.name))
        time.sleep(0.2 if path.name == "01_a.ipynb" else 0.05)
        with lock:
            events.append(("end", path.name))
        return (path.name,)

    assert _schedule(paths, run, 2) == [(p.name,) for p in paths]
    first_end = events.index(("end", "01_a.ipynb"))
    assert events.index(("start", "02_b.ipynb")) > first_end and events.index(("start", "04_d.ipynb")) > first_end
    assert events.index(("start", "03_c.ipynb")) < first_end  # the free slot is used meanwhile


def test_families_pass_model_and_render_the_pass_table(tmp_path):
    """`families` runs each notebook with only `model` changed (where declared) and `family_table` renders the
    notebook × family table that the README shows between its markers."""
    from tpx.reproduce import FAMILY_MARKERS, families, family_table, update_family_table

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write(nbs / "01_model.ipynb", 'model = "organism"\nfast = False\nfigures_dir = "../figures"',
           "assert fast and model in ('a', 'b'), (fast, model)\nassert model != 'b', 'no b here'")
    _write(nbs / "02_plain.ipynb", None, "x = 1")
    matrix = families(["a", "b"], nbs, tmp_path / "build", progress=False, jobs=1)
    assert matrix[["notebook", "family", "status"]].values.tolist() == [
        ["01_model.ipynb", "a", "ok"], ["02_plain.ipynb", "a", "ok"],
        ["01_model.ipynb", "b", "failed"], ["02_plain.ipynb", "b", "ok"]]
    assert (tmp_path / "build" / "b" / "notebooks" / "01_model.ipynb").exists()  # executed copies per family
    table = family_table(matrix)
    lines = table.splitlines()
    assert lines[0] == "| notebook | `a` | `b` |" and lines[2].startswith("| 01_model | ok (")
    assert "**failed**: AssertionError: no b here" in lines[2]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{FAMILY_MARKERS[0]}\nold\n{FAMILY_MARKERS[1]}\nrest\n")
    assert update_family_table(readme, matrix) and f"{FAMILY_MARKERS[0]}\n{table}\n{FAMILY_MARKERS[1]}" in readme.read_text()


def test_cli_families_prints_and_writes_the_table(tmp_path, monkeypatch, capsys):
    import pandas as pd

    import tpx.reproduce as rep

    seen = {}

    def fake(names, notebooks_dir, build_dir, **kw):
        seen["names"] = names
        return pd.DataFrame([("01_x.ipynb", 3.0, "ok", [], "", n) for n in names], columns=[*rep.COLUMNS, "family"])

    monkeypatch.setattr(rep, "families", fake)
    readme = tmp_path / "README.md"
    readme.write_text(f"{rep.FAMILY_MARKERS[0]}\n{rep.FAMILY_MARKERS[1]}\n")
    assert main(["reproduce", "--families", "a, b", "--readme", str(readme)]) == 0
    assert seen["names"] == ("a", "b") and "| 01_x | ok (3 s) | ok (3 s) |" in capsys.readouterr().out
    assert "| 01_x | ok (3 s) | ok (3 s) |" in readme.read_text()
    main(["reproduce", "--families", "--readme", str(readme)])
    assert seen["names"] == rep.FAMILIES
    readme.write_text(f"{rep.GEOMETRY_MARKERS[0]}\n{rep.GEOMETRY_MARKERS[1]}\n")
    main(["reproduce", "--families", "geometry", "--readme", str(readme)])
    assert seen["names"] == rep.GEOMETRY and f"| `{rep.GEOMETRY[0]}` |" in readme.read_text()


def test_executed_reads_the_pass_table_back_from_executed_copies(tmp_path):
    import nbformat

    from tpx.reproduce import executed, family_table

    def copy(family, name, papermill, outputs=()):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x = 1")
        cell.outputs = [nbformat.v4.new_output("error", ename=e, evalue=v, traceback=[]) for e, v in outputs]
        nb.cells = [cell]
        nb.metadata["papermill"] = papermill
        folder = tmp_path / family / "notebooks"
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / name)

    done = {"duration": 12.34, "end_time": "2026-12-05T01:00:00", "exception": None}
    copy("a", "00_x.ipynb", done)
    copy("a", "01_y.ipynb", {**done, "exception": True}, [("ValueError", "cannot match the 63 crops")])
    copy("b", "00_x.ipynb", {"duration": None, "end_time": None, "exception": None})  # killed mid-run
    matrix = executed(["a", "b"], tmp_path, notebooks_dir=None)
    assert matrix[["notebook", "family", "status"]].values.tolist() == [
        ["00_x.ipynb", "a", "ok"], ["01_y.ipynb", "a", "failed"], ["00_x.ipynb", "b", "failed"]]
    assert matrix["seconds"].iloc[0] == 12.3 and "cannot match the 63 crops" in matrix["error"].iloc[1]
    assert "did not finish" in matrix["error"].iloc[2]
    assert "| 00_x | ok (12 s) | **failed**: did not finish" in family_table(matrix)
    with pytest.raises(FileNotFoundError, match="no executed notebooks for 'c'"):
        executed(["c"], tmp_path)


def test_executed_marks_copies_of_an_older_notebook_stale(tmp_path):
    import nbformat

    from tpx.reproduce import executed, family_table

    source = nbformat.v4.new_notebook()
    source.cells = [nbformat.v4.new_code_cell("model = 'tiny'", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell("x = 1")]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(source, tmp_path / "notebooks" / "00_x.ipynb")
    copy = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("model = 'b'", metadata={"tags": ["injected-parameters"]})
    copy.cells = [source.cells[0], injected, nbformat.v4.new_code_cell("x = 1")]
    copy.metadata["papermill"] = {"duration": 3.0, "end_time": "2026-12-05T01:00:00", "exception": None}
    (tmp_path / "b" / "notebooks").mkdir(parents=True)
    nbformat.write(copy, tmp_path / "b" / "notebooks" / "00_x.ipynb")
    assert executed(["b"], tmp_path, tmp_path / "notebooks")["status"].tolist() == ["ok"]
    source.cells[1].source = "x = 2"  # the notebook changed after the copy ran
    nbformat.write(source, tmp_path / "notebooks" / "00_x.ipynb")
    matrix = executed(["b"], tmp_path, tmp_path / "notebooks")
    assert matrix["status"].tolist() == ["stale"] and "| 00_x | **stale**: the notebook changed" in family_table(matrix)
    (tmp_path / "notebooks" / "00_x.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match="notebooks_dir: no source"):
        executed(["b"], tmp_path, tmp_path / "notebooks")
