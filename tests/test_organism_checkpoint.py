"""Training state on disk without pickle: optimizer tensors as safetensors, the rest as JSON (issue 17 item 9)."""

import ast
from pathlib import Path

import pytest
import torch

from tpx.organism import checkpoint

PICKLERS = ("pickle", "dill", "cloudpickle", "joblib")
PACKAGE = Path(__file__).resolve().parent.parent / "tpx"


def _stepped_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    opt = torch.optim.AdamW([{"params": list(net[0].parameters()), "lr_mult": 1.0},
                             {"params": list(net[1].parameters()), "lr_mult": 0.1}], lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(7, 5)).square().mean().backward()
        opt.step()
    return net, opt


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        assert a["state"][pid].keys() == b["state"][pid].keys()
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k]), (pid, k)


def test_optimizer_round_trip_is_exact_and_pickle_free(tmp_path):
    net, opt = _stepped_optimizer()
    torch.manual_seed(123)
    checkpoint.save_optimizer(tmp_path, opt)
    expected_draw = torch.rand(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optim.json", "optim.safetensors"]
    _, fresh = _stepped_optimizer(seed=1)
    torch.manual_seed(999)
    checkpoint.load_optimizer(tmp_path, fresh)
    assert torch.equal(torch.rand(4), expected_draw)  # the RNG state came back too
    _assert_same_state(opt.state_dict(), fresh.state_dict())
    assert fresh.state_dict()["param_groups"][0]["betas"] == (0.8, 0.95)  # tuples stay tuples


def test_legacy_pickle_is_converted_once(tmp_path):
    _, opt = _stepped_optimizer()
    rng = torch.get_rng_state()
    torch.save({"optimizer": opt.state_dict(), "torch_rng": rng}, tmp_path / "optim.pt")
    saved, got_rng = checkpoint.read_optimizer(tmp_path)
    assert not (tmp_path / "optim.pt").exists() and (tmp_path / "optim.safetensors").exists()
    assert torch.equal(got_rng, rng)
    _assert_same_state(saved, opt.state_dict())
    saved_again, _ = checkpoint.read_optimizer(tmp_path)  # now read from safetensors
    _assert_same_state(saved_again, opt.state_dict())


def test_finished_stage_without_optimizer_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from"):
        checkpoint.read_optimizer(tmp_path)


def test_committed_checkpoints_hold_no_pickle():
    root = PACKAGE.parent / "data" / "organism"
    pickled = [p for ext in ("*.pt", "*.pth", "*.pkl", "*.bin") for p in root.rglob(ext)]
    assert not pickled, f"pickled files under data/organism: {pickled}"


def _unsafe_loads(source: str) -> list[int]:
    """Lines of `torch.load(...)` calls without a literal `weights_only=True`."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            kw = {k.arg: k.value for k in node.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                bad.append(node.lineno)
    return bad


def test_unsafe_load_detector_sees_both_cases():
    assert _unsafe_loads("import torch\ntorch.load('a')\ntorch.load('b', weights_only=False)\n") == [2, 3]
    assert _unsafe_loads("import torch\ntorch.load('a', weights_only=True)\n") == []


def test_package_never_unpickles_or_pickles():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        bad = _unsafe_loads(source)
        tree = ast.parse(source)
        imported = [(n.lineno, a.name) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [(n.lineno, n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        bad += [line for line, name in imported if name.split(".")[0] in PICKLERS]
        bad += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "save" and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]
        if bad:
            offenders[str(path.relative_to(PACKAGE.parent))] = bad
    assert not offenders, f"torch.load without weights_only=True, torch.save or pickle imports: {offenders}"
