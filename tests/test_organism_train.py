"""Smoke tests of the organism trainer: loss falls, checkpoints resume exactly where they stopped."""

import torch

from tpx.organism import train as T
from tpx.organism.cli import main

MICRO = dict(vision_hidden=32, vision_mlp=64, vision_layers=2, vision_heads=4,
             text_hidden=32, text_mlp=64, text_layers=4, text_heads=4)


def _cfg(tmp_path, **kw):
    base = dict(root=str(tmp_path), batch_size=8, lr=3e-3, warmup=1, eval_minutes=1e9, n_eval=4,
                model=MICRO, threads=1, prior_draws=50)
    return T.TrainConfig(**{**base, **kw})


def test_vision_loss_falls(tmp_path):
    tr = T.Trainer(_cfg(tmp_path, run="v", stage="vision", max_steps=30))
    losses = [tr.step()["aux"] for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_resume_continues_exactly(tmp_path):
    T.train(_cfg(tmp_path, run="a", stage="vision", max_steps=6), progress=False)
    T.train(_cfg(tmp_path, run="a", stage="vision", max_steps=10), resume=True, progress=False)
    T.train(_cfg(tmp_path, run="b", stage="vision", max_steps=10), progress=False)
    a = T.Trainer(_cfg(tmp_path, run="a", stage="vision"), resume=True)
    b = T.Trainer(_cfg(tmp_path, run="b", stage="vision"), resume=True)
    assert a.state["step"] == b.state["step"] == 10
    for (n, p), q in zip(a.vision.named_parameters(), b.vision.parameters()):
        assert torch.equal(p, q), n
    assert (tmp_path / "a" / "log.jsonl").read_text().count("\n") == 2


def test_lm_stage_from_vision_and_cli_resume(tmp_path):
    T.train(_cfg(tmp_path, run="v", stage="vision", max_steps=2), progress=False)
    tr = T.Trainer(_cfg(tmp_path, run="lm", stage="lm", init_from=str(tmp_path / "v"), max_steps=40, n_questions=4))
    frozen = [p.clone() for p in tr.vision.parameters()]
    losses = [tr.step()["lm"] for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    assert all(torch.equal(p, q) for p, q in zip(frozen, tr.vision.parameters()))
    tr.save()
    assert main(["train", "--resume", "--run", "lm", "--root", str(tmp_path), "--max-steps", "42"]) == 0
    again = T.Trainer(_cfg(tmp_path, run="lm", stage="lm"), resume=True)
    assert again.state["step"] == 42
