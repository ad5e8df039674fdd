"""Findings as data: records whose verdicts follow from their CIs, the README table rendered from them."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tpx.analysis import findings, stats

ROOT = Path(__file__).resolve().parents[1]


def _rows():
    rng = np.random.default_rng(0)
    out = []
    for label, p, hook, layer in (("fastv @L2", 0.6, "L", 2), ("random @L2", 0.8, "L", 2), ("unpruned", 0.9, "", None)):
        for task in ("a", "b"):
            out.append(pd.DataFrame({"benchmark": "organism", "task": task, "id": [f"{task}/{i}" for i in range(200)],
                                     "label": label, "method": label.split()[0], "hook": hook, "layer": layer,
                                     "retention": 1.0 if label == "unpruned" else 0.25, "seed": 0,
                                     "score": (rng.random(200) < p).astype(float)}))
    return pd.concat(out, ignore_index=True)


def test_compared_reads_both_sides_and_computes_the_verdict():
    rec = findings.compared(_rows(), "01_x", "k", "Q1", "random beats FastV", "toy", "random @L2", "fastv @L2",
                            baseline="unpruned", direction=1, study="95.0 vs 89.8")
    assert rec.configs["a"] == {"method": "random", "hook": "L", "layer": 2, "retention": 0.25, "label": "random @L2"}
    assert rec.configs["baseline"]["method"] == "unpruned" and rec.n_per_task == 200
    assert rec.ci_low > 0 and rec.verdict == "agrees"
    flipped = findings.compared(_rows(), "01_x", "k2", "Q1", "FastV beats random", "toy", "fastv @L2", "random @L2",
                                baseline="unpruned", direction=1, study="")
    assert flipped.verdict == "disagrees"
    wide = findings.compared(_rows(), "01_x", "k3", "Q1", "x", "toy", "random @L2", "fastv @L2", direction=1,
                             study="", family_size=10)
    assert wide.level == pytest.approx(0.995) and wide.ci_high - wide.ci_low > rec.ci_high - rec.ci_low - 1e-9


def test_save_replaces_one_notebooks_records_and_refuses_a_hand_verdict(tmp_path):
    rows = _rows()
    a = findings.compared(rows, "01_x", "k", "Q1", "c", "toy", "random @L2", "fastv @L2", direction=1, study="s")
    b = findings.compared(rows, "02_y", "k", "Q2", "c", "toy", "random @L2", "fastv @L2", direction=-1, study="s")
    findings.save([a], "01_x", tmp_path)
    findings.save([b], "02_y", tmp_path)
    findings.save([a], "01_x", tmp_path)
    keys = [(r["notebook"], r["key"]) for r in findings.load(tmp_path / "findings.json")]
    assert keys == [("01_x", "k"), ("02_y", "k")]
    typed = dataclasses.replace(a, verdict="disagrees")
    with pytest.raises(ValueError, match="does not follow from its CI"):
        findings.save([typed], "01_x", tmp_path)
    with pytest.raises(ValueError, match="belongs to notebook"):
        findings.save([b], "01_x", tmp_path)


def test_render_and_update_readme(tmp_path):
    rec = findings.compared(_rows(), "01_x", "k", "Q1", "random beats FastV", "toy", "random @L2", "fastv @L2",
                            baseline="unpruned", direction=1, study="95.0 vs 89.8")
    findings.save([rec], "01_x", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n{findings.MARKERS[0]}\nold\n{findings.MARKERS[1]}\n\nafter\n")
    assert findings.update_readme(readme, tmp_path / "findings.json")
    text = readme.read_text()
    assert "old" not in text and "after" in text and "**agrees**" in text
    assert "random @L2 (L, K=2, r=0.25) − fastv @L2 (L, K=2, r=0.25)" in text
    assert not findings.update_readme(readme, tmp_path / "findings.json")  # idempotent


# ---- the committed findings and README -------------------------------------------------------------------

def test_committed_findings_verdicts_follow_from_their_cis():
    records = findings.load(ROOT / "figures" / "findings.json")
    assert records, "figures/findings.json is missing or empty: run `make figures`"
    for r in records:
        assert r["verdict"] == stats.verdict(r["ci_low"], r["ci_high"], r["direction"]), r["key"]
        assert r["rule"] == stats.RULE
        for side in ("a", "b"):
            if side in r["configs"]:
                assert "hook" in r["configs"][side] and "layer" in r["configs"][side], r["key"]
        if r["headline"]:
            assert r["n_per_task"] >= 200, f"{r['notebook']}:{r['key']} is a headline claim on {r['n_per_task']} per task"


def test_readme_table_is_the_rendered_findings():
    records = findings.load(ROOT / "figures" / "findings.json")
    assert findings.readme_table(ROOT / "README.md") == findings.render(records)


def test_every_question_has_findings():
    questions = {r["question"] for r in findings.load(ROOT / "figures" / "findings.json")}
    assert {"Q1", "Q2", "Q3", "Q4", "Q5b", "Q5c"} <= questions
    # timings change with every run: their records live apart, in figures/timing/ (see tpx.reproduce.TIMING)
    timing = findings.load(ROOT / "figures" / "timing" / "findings.json")
    assert {r["question"] for r in timing} == {"Q5a"}
    for r in timing:
        assert r["verdict"] == stats.verdict(r["ci_low"], r["ci_high"], r["direction"]), r["key"]


def test_no_records_is_a_table_and_a_figure():
    """A model on which no comparison is defined (e.g. FastV† across families) gets an empty table with every
    column a notebook selects, and a findings figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    from tpx import viz

    empty = findings.frame([])
    assert empty.empty and {"name", "estimate", "ci_low", "ci_high", "level", "n_per_task", "verdict"} <= set(empty.columns)
    fig = viz.effects(empty, title="none")
    assert any("no estimate" in t.get_text() for t in fig.axes[0].texts)
