"""The import graph of tpx, read from the source: imports point down the floors of the design (DESIGN.md,
docs/architecture.md) and there is no cycle. Imports inside functions count: a lazy import is a dependency too.

Floors: 1 pure tensor functions; 2 registry and plan; 3 engine and model adapters (and the `tpx` package
itself, which exposes floors 2–3); 4 running models over data; 5 analysis of result rows; 6 presentation.
"""

from __future__ import annotations

import ast
from pathlib import Path

TPX = Path(__file__).resolve().parents[1] / "tpx"
FLOORS = {
    "tpx.scores": 1, "tpx.select": 1, "tpx.dedup": 1, "tpx.merge": 1, "tpx.schedules": 1, "tpx.metrics": 1,
    "tpx.layout": 1, "tpx.select_diverse": 1,
    "tpx.methods": 2, "tpx.ingredients": 2, "tpx.plan": 2,
    "tpx.engine": 3, "tpx.models": 3, "tpx.stopwatch": 3, "tpx": 3,
    "tpx.evaluate": 4, "tpx.latency": 4, "tpx.data": 4, "tpx.organism": 4, "tpx.grid": 4, "tpx.ask": 4,
    "tpx.threads": 4, "tpx.probes": 4, "tpx.scoring": 4, "tpx.timing": 4, "tpx.lmms_eval": 4, "tpx.memory": 4,
    "tpx.analysis": 5,
    "tpx.viz": 6, "tpx.widgets": 6, "tpx.reproduce": 6, "tpx.__main__": 6, "tpx.evaluate_cli": 6,
}
# upward edges that exist today, each with why and whose it is; the test fails once one disappears, so the
# list can only shrink
KNOWN_UPWARD = {
    ("tpx.models", "tpx.organism.deep_card"):
        "tpx.load('organism-deep') assembles the deep organism with the organism's code (issue 14); a folder that "
        "from_pretrained loads, or load on floor 4, would remove it",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in TPX.rglob("*.py"):
        parts = ("tpx", *path.relative_to(TPX).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _graph() -> set[tuple[str, str]]:
    """(importer, imported) between tpx modules; `from tpx import x` depends on `tpx.x` when x is a module."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = set()
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods] or [base]
            else:
                continue
            for name in names:
                target = owner(name) if name.split(".")[0] == "tpx" else None
                if target and target != mod:
                    edges.add((mod, target))
    return edges


def _floor(mod: str) -> int:
    while mod not in FLOORS:
        mod = mod.rpartition(".")[0]
    return FLOORS[mod]


def test_every_module_sits_on_a_floor():
    unplaced = [m for m in _modules() if not any(m == k or m.startswith(k + ".") for k in FLOORS)]
    assert not unplaced, f"place these modules on a floor in FLOORS (and docs/architecture.md): {unplaced}"


def test_imports_point_down_the_floors():
    upward = {(a, b) for a, b in _graph() if _floor(a) < _floor(b)}
    new = sorted(upward - set(KNOWN_UPWARD))
    assert not new, "imports from a lower floor to a higher one: " + ", ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(set(KNOWN_UPWARD) - upward)
    assert not gone, f"fixed, remove from KNOWN_UPWARD: {gone}"
    assert not [(a, b) for a, b in upward if _floor(a) <= 2]  # the pure and plan floors have no exception at all


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for a, b in _graph() - set(KNOWN_UPWARD):
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_engine_and_models_do_not_import_each_other_both_ways():
    edges = _graph()
    assert ("tpx.engine", "tpx.models") in edges
    assert not any(a.startswith("tpx.models") and b == "tpx.engine" for a, b in edges)
