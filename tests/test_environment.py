"""pyproject.toml and environment.yml must name the same packages, versions and Python.

The comparison lives here, not in tpx: it checks the repository, not the library.
"""

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _key(requirement: str) -> tuple[str, str]:
    """Canonical (name[extras]; marker, specifier) of one requirement string."""
    req = Requirement(requirement)
    name = canonicalize_name(req.name)
    if req.extras:
        name += "[" + ",".join(sorted(req.extras)) + "]"
    if req.marker:
        name += f"; {req.marker}"
    return name, str(req.specifier)  # SpecifierSet prints its clauses sorted


def _requirements(strings: list[str], source: str) -> dict[str, str]:
    keys = [_key(s) for s in strings]
    names = [name for name, _ in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source} lists {duplicates} more than once")
    return dict(keys)


def pyproject_requirements(pyproject: dict) -> dict[str, str]:
    project = pyproject["project"]
    strings = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        strings += extra
    return _requirements(strings, "pyproject.toml")


def conda_requirements(env: dict) -> dict[str, str]:
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    if len(pip) != 1:
        raise ValueError(f"environment.yml must have one pip: section, found {len(pip)}")
    return _requirements(pip[0], "environment.yml")


def pyproject_python(pyproject: dict) -> str:
    match = re.fullmatch(r">=\s*(\d+\.\d+)", pyproject["project"]["requires-python"].strip())
    if not match:
        raise ValueError(f"requires-python must be '>=X.Y', got {pyproject['project']['requires-python']!r}")
    return match.group(1)


def conda_python(env: dict) -> str:
    pins = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    if len(pins) != 1 or not re.fullmatch(r"python\s*=\s*\d+\.\d+", pins[0]):
        raise ValueError(f"environment.yml must pin 'python=X.Y' once, found {pins}")
    return pins[0].split("=")[1].strip()


def differences(pyproject: dict, env: dict) -> list[str]:
    """Every way in which the two files disagree, as readable lines; empty when they agree."""
    ours, theirs = pyproject_requirements(pyproject), conda_requirements(env)
    problems = [f"{n}: only in pyproject.toml" for n in sorted(ours.keys() - theirs.keys())]
    problems += [f"{n}: only in environment.yml" for n in sorted(theirs.keys() - ours.keys())]
    problems += [
        f"{n}: pyproject.toml has {ours[n]!r}, environment.yml has {theirs[n]!r}"
        for n in sorted(ours.keys() & theirs.keys())
        if ours[n] != theirs[n]
    ]
    if pyproject_python(pyproject) != conda_python(env):
        problems.append(f"python: pyproject.toml >={pyproject_python(pyproject)}, environment.yml ={conda_python(env)}")
    return problems


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_pyproject_and_environment_agree(pyproject, env):
    assert differences(pyproject, env) == []


def test_python_is_311(pyproject, env):
    assert pyproject_python(pyproject) == conda_python(env) == "3.11"


def test_pinned_requirements(pyproject):
    reqs = pyproject_requirements(pyproject)
    # the engine depends on transformers internals (DESIGN.md): the range CI tests, oldest and newest
    assert reqs["transformers"] == "<5.26,>=5.24"
    assert "torchvision" not in reqs and "scikit-image" not in reqs
    assert {"pytest", "nbmake", "nbformat"} <= reqs.keys()


def _edit_pip(env: dict, old: str, new: str | None) -> dict:
    env = copy.deepcopy(env)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    if new is None:
        pip.remove(old)
    else:
        pip[pip.index(old)] = new
    return env


def test_differences_detects_a_changed_version(pyproject, env):
    changed = _edit_pip(env, "transformers>=5.24,<5.26", "transformers>=5.24,<5.25")
    assert differences(pyproject, changed) == [
        "transformers: pyproject.toml has '<5.26,>=5.24', environment.yml has '<5.25,>=5.24'"
    ]


def test_differences_detects_missing_package_and_python(pyproject, env):
    changed = _edit_pip(env, "papermill>=2.7", None)
    changed["dependencies"] = ["python=3.12" if d == "python=3.11" else d for d in changed["dependencies"]]
    assert differences(pyproject, changed) == [
        "papermill: only in pyproject.toml",
        "python: pyproject.toml >=3.11, environment.yml =3.12",
    ]


def test_names_and_clause_order_are_normalised(pyproject, env):
    changed = _edit_pip(env, "transformers>=5.24,<5.26", "Transformers <5.26, >=5.24")
    changed = _edit_pip(changed, "pillow>=13.0", "Pillow>=13.0")
    assert differences(pyproject, changed) == []
