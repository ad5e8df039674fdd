"""Full training state on disk: weights, auxiliary heads, optimizer, step, schedule, RNG, log.

One checkpoint per run (the latest), written to a temporary folder and swapped in, so that
an interrupted save never leaves a broken `ckpt/`. Model weights and optimizer state are
separate files, each well under 25 MB for the organism's sizes.
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
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
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


def load_optimizer(d: Path, optimizer) -> None:
    """Restore optimizer and RNG state; groups added since the save (e.g. an unfrozen tower) start fresh."""
    blob = torch.load(d / "optim.pt", weights_only=False)
    saved, cur = blob["optimizer"], optimizer.state_dict()
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
    torch.set_rng_state(blob["torch_rng"])
