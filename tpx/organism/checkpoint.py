"""Full training state on disk: weights, auxiliary heads, optimizer, step, schedule, RNG, log.

One checkpoint per run (the latest), written to a temporary folder and swapped in, so that
an interrupted save never leaves a broken `ckpt/`. Model weights and optimizer state are
separate files, each well under 25 MB for the organism's sizes. Nothing is pickled: the optimizer's
tensors and the RNG state are safetensors (`optim.safetensors`), its hyper-parameters JSON (`optim.json`).
A checkpoint written before that (`optim.pt`) is converted once, on first load, by `convert_legacy`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from tpx.organism import model as M


def ckpt_dir(run_dir: Path) -> Path | None:
    """The run's committed checkpoint folder, or None if it has none yet."""
    for name in ("ckpt", "ckpt.tmp"):
        d = run_dir / name
        if (d / "state.json").exists():
            return d
    return None


def save(run_dir: Path, model, aux, optimizer, state: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = run_dir / "ckpt.tmp", run_dir / "ckpt"
    shutil.rmtree(tmp, ignore_errors=True)
    M.save(model, M.build_processor(), tmp)
    save_file({k: v.contiguous() for k, v in aux.state_dict().items()}, tmp / "aux.safetensors")
    save_optimizer(tmp, optimizer)
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_model(d: Path) -> LlavaForConditionalGeneration:
    model = LlavaForConditionalGeneration.from_pretrained(d)
    model.set_attn_implementation("sdpa")
    return model


def load_aux(d: Path, aux) -> None:
    aux.load_state_dict(load_file(d / "aux.safetensors"))


def load_state(d: Path) -> dict:
    return json.loads((d / "state.json").read_text())


def save_optimizer(d: Path, optimizer: torch.optim.Optimizer) -> None:
    """Write the optimizer and torch RNG state as `optim.safetensors` (tensors) + `optim.json` (the rest)."""
    tensors, meta = _flatten(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, d / "optim.safetensors")
    (d / "optim.json").write_text(json.dumps(meta, indent=1))


def read_optimizer(d: Path) -> tuple[dict, torch.Tensor]:
    """The saved optimizer state dict and torch RNG state (converting a legacy `optim.pt` first)."""
    if not (d / "optim.safetensors").exists():
        if not (d / "optim.pt").exists():
            raise FileNotFoundError(f"{d} holds no optimizer state (a finished stage: start a new run from it "
                                    "with init_from instead of resuming it)")
        convert_legacy(d)
    tensors = load_file(d / "optim.safetensors")
    meta = json.loads((d / "optim.json").read_text())
    return _unflatten(tensors, meta), tensors["rng.torch"]


def convert_legacy(d: Path) -> None:
    """Rewrite a pickled `optim.pt` (checkpoints before safetensors) as safetensors + JSON, then delete it.

    Read with `weights_only=True`: torch's restricted unpickler, which builds only tensors and containers.
    """
    blob = torch.load(d / "optim.pt", weights_only=True)
    tensors, meta = _flatten(blob["optimizer"])
    tensors["rng.torch"] = blob["torch_rng"]
    save_file(tensors, d / "optim.safetensors")
    (d / "optim.json").write_text(json.dumps(meta, indent=1))
    (d / "optim.pt").unlink()


def _flatten(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into named tensors and a JSON-able rest (scalars, param groups)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    tuples = sorted({k for g in sd["param_groups"] for k, v in g.items() if isinstance(v, tuple)})
    return tensors, {"param_groups": groups, "tuples": tuples, "scalars": scalars}


def _unflatten(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("state."):
            pid, k = name[len("state."):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [{k: tuple(v) if k in meta["tuples"] else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer(d: Path, optimizer) -> None:
    """Restore optimizer and RNG state; groups added since the save (e.g. an unfrozen tower) start fresh."""
    saved, rng = read_optimizer(d)
    cur = optimizer.state_dict()
    if len(saved["param_groups"]) != len(cur["param_groups"]):
        state = {}
        for gs, gc in zip(saved["param_groups"], cur["param_groups"]):
            if len(gs["params"]) != len(gc["params"]):
                raise ValueError("checkpoint optimizer groups do not match the model's trainable parameters")
            pairs = zip(gs["params"], gc["params"])
            state.update({pc: saved["state"][ps] for ps, pc in pairs if ps in saved["state"]})
            gc.update({k: v for k, v in gs.items() if k != "params"})
        saved = {"state": state, "param_groups": cur["param_groups"]}
    optimizer.load_state_dict(saved)
    torch.set_rng_state(rng)
