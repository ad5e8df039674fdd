"""`python -m tpx`: help that names what can be chosen, `--param`, the baseline always in the table, one-line
errors with exit status 2, any working directory; and the README's quickstart block, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import tpx
from tpx import __main__ as cli
from tpx import evaluate as ev
from tpx import evaluate_cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "tpx", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; assert exit status 2 and one stderr line; return that line."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_help_names_models_methods_and_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["evaluate", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in ("organism", "organism-deep", "tiny", "local folder", "hub id", "pope", "--param NAME=VALUE", "--threads",
                 "(default: organism)", "(default: 0.25)", "(default: 8)", "(default: 16)", "unpruned baseline"):
        assert word in text, word
    for name in tpx.list_methods():
        assert name in text, name
    options = re.findall(r"(--[a-z-]+) [A-Z_,{}a-z=]*\s", text)
    assert {"--batch-size", "--blind", "--cache-dir", "--max-new-tokens"} <= set(options)


@pytest.mark.parametrize(("argv", "message"), [
    (["--retention", "abc"], "argument --retention: 'abc' is not a number"),
    (["--seed", "0,x"], "argument --seed: 'x' is not an integer"),
    (["--threads", "0"], "argument --threads: '0' is not an integer ≥ 1"),
    (["--batch-size", "many"], "argument --batch-size: 'many' is not an integer ≥ 1"),
    (["--method", "fastvv"], "unknown method 'fastvv'; did you mean 'fastv'?"),
    (["--benchmark", "popee"], "unknown benchmark 'popee'; did you mean 'pope'?"),
    (["--param", "alpha"], "'alpha' is not NAME=VALUE"),
    (["--model", "organsim", "--n", "1"], "unknown model 'organsim'; did you mean 'organism'?"),
    (["--data-path", "somewhere", "--n", "1"], "path= applies to hub benchmarks"),
    (["--task", "exsit"], "did you mean 'exist'?"),
    (["--model", "tiny", "--n", "1", "--method", "alpha", "--param", "alpha=7"], "alpha must be"),
    (["--model", "tiny", "--n", "1", "--param", "alphaa=0.3"], "alphaa"),
    (["--model", "tiny", "--n", "1", "--layer", "2", "--param", "layer=1"], "give the layer once"),
])
def test_errors_are_one_line_with_status_2(capsys, argv, message):
    line = one_line_error(capsys, ["evaluate", *argv, "--no-progress"])
    assert line.startswith("python -m tpx evaluate: error: ") and message in line, line


def test_reproduce_errors_are_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["reproduce", "--notebooks-dir", str(tmp_path / "none")])
    assert "is not a folder" in line
    one_line_error(capsys, ["reproduce", "--fats"])


def test_traceback_on_request(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["reproduce", "--notebooks-dir", str(tmp_path / "none"), "--traceback"])


def test_param_values_are_literals(monkeypatch, capsys):
    seen = {}

    def fake(model, processor, samples, **kwargs):
        seen.update(kwargs)
        return pd.DataFrame()

    monkeypatch.setattr(evaluate_cli, "evaluate", fake)
    monkeypatch.setattr(evaluate_cli, "summarize", lambda df: pd.DataFrame(
        {"benchmark": ["organism"], "task": ["exist"], "method": ["unpruned"], "score": [1.0]}))
    cli.main(["evaluate", "--model", "tiny", "--n", "1", "--method", "pdrop,unpruned", "--no-progress", "--param",
              "ratios=(0.5, 0.25, 0.125)", "--param", "uniqueness=last", "--param", "alpha=0.3", "--layer", "1"])
    assert seen["methods"] == ["unpruned", "pdrop"]  # the baseline once, first
    assert seen["ratios"] == (0.5, 0.25, 0.125) and seen["uniqueness"] == "last" and seen["alpha"] == 0.3
    assert seen["layer"] == 1
    assert "relative" in capsys.readouterr().out


def test_evaluate_end_to_end_always_has_the_baseline(tmp_path, capsys):
    out = tmp_path / "rows.csv"
    status = cli.main(["evaluate", "--model", "tiny", "--n", "1", "--task", "exist,read", "--method", "random",
                       "--retention", "0.5", "--seed", "0,1", "--max-new-tokens", "2", "--threads", "1",
                       "--no-progress", "--out", str(out)])
    assert status == 0 and torch.get_num_threads() == 1
    rows = pd.read_csv(out)
    assert sorted(rows["method"].unique()) == ["random", "unpruned"]
    assert len(rows) == 2 * (1 + 2)  # two samples: unpruned once, random per seed
    captured = capsys.readouterr()
    assert "relative" in captured.out and "unpruned" in captured.out
    assert re.search(r"6 rows from 2 samples in [\d.]+ s on 1 process\(es\), 1 thread\(s\) each", captured.err)


def test_blind_no_image_runs_the_baseline_only(tmp_path):
    out = tmp_path / "rows.csv"
    assert cli.main(["evaluate", "--model", "tiny", "--n", "1", "--task", "blind", "--blind", "no_image",
                     "--max-new-tokens", "1", "--no-progress", "--out", str(out)]) == 0
    assert list(pd.read_csv(out)["method"]) == ["unpruned"]


def test_commands_work_from_any_directory(tmp_path):
    done = run_cli("evaluate", "--model", "tiny", "--n", "1", "--task", "exist", "--max-new-tokens", "1",
                   "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "unpruned" in done.stdout and "fastv" in done.stdout
    bad = run_cli("evaluate", "--retention", "abc", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    report = run_cli("organism", "report", "--run", "lm0", "--every", "100", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("| step |")
    args = cli._parser().parse_args(["reproduce"])
    assert Path(args.notebooks_dir) == ROOT / "notebooks" and Path(args.build_dir) == ROOT / "build" / "notebooks"


def test_evaluate_checks_its_samples(tiny):
    model, processor = tiny
    with pytest.raises(TypeError, match=r"got the string 'organism'; load them first"):
        ev.evaluate(model, processor, "organism")
    with pytest.raises(TypeError, match="samples must be tpx.data.Sample objects"):
        ev.evaluate(model, processor, [{"question": "?"}])


def test_load_lists_local_names_without_the_hub():
    with pytest.raises(ValueError, match=r"unknown model 'organsim'; did you mean 'organism'\? local names: "
                                         r"organism, organism-pool2, organism-deep, tiny"):
        tpx.load("organsim")


def test_readme_quickstart_runs_as_written(one_thread):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.strip().splitlines()
    assert re.fullmatch(r".+\? unpruned: '.+', fastv: '.+', reference: '.+'", first), first
    assert second.startswith("kept 36 of 144; first kept cells [[")


def test_default_threads_for_a_small_model_is_one(monkeypatch, capsys, one_thread):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert cli.main(["evaluate", "--model", "tiny", "--n", "1", "--task", "exist", "--max-new-tokens", "1",
                     "--no-progress"]) == 0
    assert torch.get_num_threads() == 1
    assert "1 thread(s) each" in capsys.readouterr().err
