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
    assert (tmp_path / "a" / "log.jsonl").read_text().count("\n") == 4  # a start row and a measurement per call


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


def test_bf16_autocast_steps(tmp_path):
    tr = T.Trainer(_cfg(tmp_path, run="v", stage="vision", bf16=True, max_steps=3))
    assert all(torch.isfinite(torch.tensor(tr.step()["aux"])) for _ in range(3))
    tr.save()
    lm = T.Trainer(_cfg(tmp_path, run="l", stage="lm", bf16=True, init_from=str(tmp_path / "v"), n_questions=3))
    assert all(torch.isfinite(torch.tensor(lm.step()["lm"])) for _ in range(3))


def test_packed_turns_equal_single_turn_prompts():
    from tpx.organism import batch as B, model as M, tasks

    tok = M.build_tokenizer()
    vocab = tok.get_vocab()
    m = M.build_model(tok, M.OrganismConfig(**MICRO)).eval()
    b = B.train_batch(vocab, 0, 3, 2, 4, {t: 1.0 for t in tasks.TASKS})
    with torch.no_grad():
        packed = m(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                   pixel_values=b.pixel_values).logits
        n_prefix = 3 + B.N_VISUAL
        for r in range(2):
            ids = b.input_ids[r].tolist()
            for t in (b.weights[r] == 1).nonzero()[:, 0].tolist():
                start = t - (int(b.position_ids[r, t]) - n_prefix)
                single = m(input_ids=torch.tensor([ids[:n_prefix] + ids[start:t + 1]]),
                           pixel_values=b.pixel_values[r:r + 1]).logits[0, -1]
                assert torch.allclose(single, packed[r, t], atol=1e-5)


def test_resume_unfreezing_the_tower_keeps_lm_optimizer_state(tmp_path):
    T.train(_cfg(tmp_path, run="v", stage="vision", max_steps=2), progress=False)
    T.train(_cfg(tmp_path, run="l", stage="lm", init_from=str(tmp_path / "v"), max_steps=3, n_questions=2),
            progress=False)
    tr = T.Trainer(_cfg(tmp_path, run="l", stage="lm", init_from=str(tmp_path / "v"), n_questions=2,
                        vision_lr_mult=0.1), resume=True)
    assert len(tr.opt.param_groups) == 2 and tr.opt.param_groups[1]["lr_mult"] == 0.1
    assert int(tr.opt.state[tr.opt.param_groups[0]["params"][0]]["step"]) == 3
    before = [p.clone() for p in tr.vision.parameters()]
    out = tr.step()
    assert "aux" in out and any(not torch.equal(a, b) for a, b in zip(before, tr.vision.parameters()))


def test_pooled_training_forward_equals_tpx_pooling_at_hook_e():
    """Training-aware checkpoint (Q5b): what it is trained on is exactly tpx's `pooling` at hook E."""
    import tpx
    from tpx.organism import batch as B, model as M, suite

    tok = M.build_tokenizer()
    vocab = tok.get_vocab()
    m = M.build_model(tok, M.OrganismConfig(**MICRO), seed=3).eval()
    samples = suite.build("val", 2)[:3]
    assert len(B.pooled_index(2)) == B.N_VISUAL // 4 and B.pooled_index(2)[:2] == [0, 2]
    with torch.no_grad():
        for s in samples:
            px = B.pixels([s.image])
            ids, pos = B.prompt_ids(vocab, s.question, 2), B.prompt_positions(vocab, s.question, 2)
            assert len(ids) == len(pos) == len(B.prompt_ids(vocab, s.question)) - 3 * B.N_VISUAL // 4
            with M.pooled(m, 2):
                pooled = m(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), pixel_values=px).logits
            full = torch.tensor([B.prompt_ids(vocab, s.question)])
            with tpx.pruning(m, "pooling", retention=0.25, hook="E"):
                ref = m(input_ids=full, pixel_values=px).logits
            assert torch.allclose(pooled[0, -1], ref[0, -1], atol=1e-5)
            plain = m(input_ids=full, pixel_values=px).logits  # the hook is gone after the block
            assert not torch.allclose(plain[0, -1], ref[0, -1], atol=1e-3)


def test_pooled_packed_rows_equal_pooled_single_prompts():
    from tpx.organism import batch as B, model as M, tasks

    tok = M.build_tokenizer()
    vocab = tok.get_vocab()
    m = M.build_model(tok, M.OrganismConfig(**MICRO)).eval()
    b = B.train_batch(vocab, 0, 5, 2, 3, {t: 1.0 for t in tasks.TASKS}, pool=2)
    n_prefix = 3 + B.N_VISUAL // 4
    assert (b.input_ids == vocab["<image>"]).sum(1).tolist() == [B.N_VISUAL // 4] * 2
    with torch.no_grad(), M.pooled(m, 2):
        packed = m(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                   pixel_values=b.pixel_values).logits
        for r in range(2):
            ids, pos = b.input_ids[r].tolist(), b.position_ids[r].tolist()
            for t in (b.weights[r] == 1).nonzero()[:, 0].tolist():
                start = t - (pos[t] - (3 + B.N_VISUAL))
                single = m(input_ids=torch.tensor([ids[:n_prefix] + ids[start:t + 1]]),
                           position_ids=torch.tensor([pos[:n_prefix] + pos[start:t + 1]]),
                           pixel_values=b.pixel_values[r:r + 1]).logits[0, -1]
                assert torch.allclose(single, packed[r, t], atol=1e-5)


def test_pool_rejects_bad_values():
    import pytest
    from tpx.organism import batch as B, model as M

    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="pool"):
            B.pooled_index(bad)
    m = M.build_model(M.build_tokenizer(), M.OrganismConfig(**MICRO))
    with pytest.raises(ValueError, match="pool"):
        with M.pooled(m, 5):
            pass


def test_pooled_fine_tune_from_lm_checkpoint_keeps_projector(tmp_path):
    T.train(_cfg(tmp_path, run="v", stage="vision", max_steps=2), progress=False)
    T.train(_cfg(tmp_path, run="l", stage="lm", init_from=str(tmp_path / "v"), max_steps=2, n_questions=2),
            progress=False)
    base = T.Trainer(_cfg(tmp_path, run="l", stage="lm"), resume=True)
    tr = T.Trainer(_cfg(tmp_path, run="p", stage="lm", init_from=str(tmp_path / "l"), pool=2, n_questions=2,
                        max_steps=3))
    proj = "multi_modal_projector.linear_1.weight"
    assert torch.equal(dict(base.model.model.named_parameters())[proj], dict(tr.model.model.named_parameters())[proj])
    assert torch.isfinite(torch.tensor(tr.step()["lm"]))
    rep = tr.measure()
    assert set(rep["acc"]) and all(0 <= v <= 1 for v in rep["acc"].values())
