"""Findings as data: one record per claim a notebook makes, written to `figures/findings.json`.

A record holds what a reviewer needs to check a claim: the question, the claim in words, the model, both
sides' configurations (method, hook, K, retention), the estimate with its confidence interval, samples per
task, the rule and the verdict it gives, and the study's number. Verdicts are computed here from the
interval (`tpx.analysis.stats.verdict`), never passed in. Each notebook replaces its own records in the file,
and `render` turns the file into the README's results table (between `MARKERS`), so the README quotes the
records and nothing is retyped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from tpx.analysis import stats

__all__ = ["MARKERS", "Finding", "compared", "frame", "replace_between", "config", "configs_of", "finding", "load", "render", "save", "update_readme"]

MARKERS = ("<!-- findings:start (generated from figures/findings.json by `python -m tpx reproduce`; do not edit) -->",
           "<!-- findings:end -->")
FILE = "findings.json"


@dataclass(frozen=True)
class Finding:
    """One claim with its evidence. `verdict` follows from `ci_low`, `ci_high` and `direction` by `rule`."""

    notebook: str
    key: str
    question: str
    claim: str
    model: str
    configs: dict[str, dict[str, Any]]
    estimate: float
    ci_low: float
    ci_high: float
    level: float
    p: float
    unit: str
    n_per_task: int
    direction: int
    verdict: str
    study: str
    rule: str = stats.RULE
    family: str = ""
    notes: str = ""
    headline: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def config(method: str, *, hook: str | None = None, layer: int | None = None, retention: float | None = None,
           label: str | None = None, **params: Any) -> dict[str, Any]:
    """One side of a comparison, as stored in a record: method, hook, K, retention, label and parameters."""
    out: dict[str, Any] = {"method": method, "hook": hook, "layer": layer, "retention": retention,
                           "label": label or method}
    return out | ({"params": dict(params)} if params else {})


def finding(notebook: str, key: str, question: str, claim: str, model: str, configs: Mapping[str, Mapping],
            estimate: stats.Estimate, *, direction: int, study: str, unit: str = "points", family: str = "",
            notes: str = "", headline: bool = True, **extra: Any) -> Finding:
    """A record from an `Estimate`; its verdict is computed by `stats.verdict` (the fixed rule).

    Args:
        notebook: the notebook that computes it (its file stem). key: unique within the notebook.
        question: "Q1" ... "Q5c". claim: the study's claim, tested as "effect has the sign of `direction`".
        model: the model's name. configs: the sides ("a", "b", "baseline", ...) as built by `config`.
        estimate: from `stats.compare` / `stats.score` (its level already adjusted for a family).
        direction: +1 if the study reports the effect positive, −1 if negative.
        study: the study's number(s) in words. unit: unit of the estimate. family: name of the family of
            comparisons the record belongs to (its CI level is then Bonferroni-adjusted). notes: caveats; a
            degenerate estimate's reason (`Estimate.note`, e.g. no relative score over a baseline that answers
            nothing right) comes first, and its verdict is "inconclusive".
    """
    n = min(estimate.n_per_task.values()) if estimate.n_per_task else 0
    notes = "; ".join(n for n in (estimate.note, notes) if n)
    return Finding(notebook, key, question, claim, model, {k: dict(v) for k, v in configs.items()},
                   _num(estimate.estimate), _num(estimate.ci_low), _num(estimate.ci_high), estimate.level,
                   _num(estimate.p), unit, n, direction, stats.verdict(estimate.ci_low, estimate.ci_high, direction),
                   study, stats.RULE, family, notes, headline, dict(extra))


def configs_of(rows: pd.DataFrame, label: str) -> dict[str, Any]:
    """The configuration behind a label, read off its rows: method, hook, K, retention, label."""
    part = rows[rows["label"] == label]
    if part.empty:
        raise ValueError(f"no rows labelled {label!r}")
    first = part.iloc[0]
    layer = first.get("layer")
    return {"method": str(first["method"]), "hook": (str(first.get("hook")) or None) if first.get("hook") else None,
            "layer": None if layer is None or pd.isna(layer) else int(layer),
            "retention": float(first["retention"]), "label": label}


def compared(rows: Any, notebook: str, key: str, question: str, claim: str, model: str, a: str, b: str, *,
             direction: int, study: str, baseline: str | None = None, value: str = "score", family: str = "",
             family_size: int = 1, unit: str | None = None, notes: str = "", n_boot: int = stats.N_BOOT,
             headline: bool = True, **extra: Any) -> Finding:
    """The record of "a − b has the sign the study reports", from result rows: paired bootstrap CI (relative
    to `baseline` when given), both sides' configurations read off the rows, the verdict by the fixed rule.

    Args:
        rows: result rows holding labels `a`, `b` (and `baseline`).
        family_size: number of comparisons in the record's family; its CI is then Bonferroni-adjusted.
        unit: default "points of relative score" with a baseline, else "points".
        Others: as for `finding`.
    """
    level = stats.bonferroni_level(family_size)
    est = stats.compare(rows, a, b, baseline=baseline, value=value, n_boot=n_boot, level=level)
    configs = {"a": configs_of(rows, a), "b": configs_of(rows, b)}
    if baseline is not None:
        configs["baseline"] = configs_of(rows, baseline)
    unit = unit or ("points of relative score (% of unpruned)" if baseline is not None else "points")
    return finding(notebook, key, question, claim, model, configs, est, direction=direction, study=study,
                   unit=unit, family=family, notes=notes, headline=headline, **extra)


def _num(x: float) -> float:
    return round(float(x), 4) if math.isfinite(x) else float("nan")


def frame(records: Sequence[Finding | Mapping[str, Any]]) -> pd.DataFrame:
    """Records as a table for figures (`tpx.viz.effects`): name (claim, key), estimate, CI, n, verdict."""
    rows = [asdict(r) if isinstance(r, Finding) else dict(r) for r in records]
    out = pd.DataFrame(rows)
    if out.empty:  # every column a notebook may select, so "no finding on this model" is a table, not a KeyError
        return pd.DataFrame(columns=["name", *(f.name for f in fields(Finding))])
    out.insert(0, "name", out["key"])
    return out


def load(path: str | Path) -> list[dict[str, Any]]:
    """The records of a findings file (an empty list if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return json.loads(path.read_text())["records"]


def save(records: Sequence[Finding], notebook: str, figures_dir: str | Path) -> Path:
    """Replace `notebook`'s records in `figures_dir/findings.json` (others are kept), sorted for stable diffs."""
    for r in records:
        if r.notebook != notebook:
            raise ValueError(f"record {r.key!r} belongs to notebook {r.notebook!r}, not {notebook!r}")
        if r.verdict != stats.verdict(r.ci_low, r.ci_high, r.direction):
            raise ValueError(f"record {r.key!r}: verdict {r.verdict!r} does not follow from its CI")
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate record keys in {notebook!r}: {sorted(k for k in keys if keys.count(k) > 1)}")
    path = Path(figures_dir) / FILE
    kept = [r for r in load(path) if r["notebook"] != notebook]
    allrec = sorted(kept + [asdict(r) for r in records], key=lambda r: (r["notebook"], r["key"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rule": stats.RULE, "records": allrec}, indent=1, sort_keys=True,
                               allow_nan=True) + "\n")
    return path


def _side(c: Mapping[str, Any]) -> str:
    where = c.get("hook") or "–"
    if c.get("layer") is not None:
        where += f", K={c['layer']}"
    r = c.get("retention")
    return f"{c.get('label') or c['method']} ({where}{'' if r is None else f', r={r:.3g}'})"


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """The README's results table: one line per record, grouped by notebook, verdicts quoted as computed."""
    lines = ["| question | claim | our comparison | estimate [CI] | n/task | study | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["notebook"], r["key"])):
        sides = " − ".join(_side(r["configs"][k]) for k in ("a", "b") if k in r["configs"])
        if "baseline" in r["configs"]:
            sides += f"; relative to {_side(r['configs']['baseline'])}"
        level = f" ({100 * r['level']:.1f} % CI)" if abs(r["level"] - stats.LEVEL) > 1e-9 else ""
        est = f"{r['estimate']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] {r['unit']}{level}"
        claim = r["claim"] + ("" if r.get("headline", True) else " *(control)*")
        lines.append(f"| {r['question']} | {claim} | {sides} | {est} | {r['n_per_task']} | {r['study']} | "
                     f"**{r['verdict']}** |")
    return "\n".join(lines)


def replace_between(path: str | Path, markers: tuple[str, str], content: str) -> bool:
    """Put `content` between the two `markers` of a text file (generated text in a hand-written one); True if
    the file changed.

    Raises:
        ValueError: the file lacks either marker.
    """
    path = Path(path)
    text = path.read_text()
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{path} has no markers {markers}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}{content}{end}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def update_readme(readme: str | Path, findings_path: str | Path) -> bool:
    """Rewrite the table between `MARKERS` in `readme` from `findings_path`; True if the file changed."""
    return replace_between(readme, MARKERS, f"\n{render(load(findings_path))}\n")


def readme_table(readme: str | Path) -> str:
    """The table currently between the README's markers."""
    text = Path(readme).read_text()
    start, end = MARKERS
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")
