"""Exporting a checkpoint: weights + processor reload offline, and the card reports accuracy beside the prior."""

import json

import pytest

from tpx.organism import card, train as T
from tpx.organism.cli import main

MICRO = dict(vision_hidden=32, vision_mlp=64, vision_layers=2, vision_heads=4,
             text_hidden=32, text_mlp=64, text_layers=4, text_heads=4)


def test_export_writes_card_and_reloads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = dict(root=str(tmp_path), batch_size=4, warmup=1, eval_minutes=1e9, n_eval=3, model=MICRO,
                threads=1, prior_draws=30)
    T.train(T.TrainConfig(run="v", stage="vision", max_steps=2, **base), progress=False)
    T.train(T.TrainConfig(run="l", stage="lm", init_from=str(tmp_path / "v"), max_steps=2, **base), progress=False)
    report = card.export([str(tmp_path / "v"), str(tmp_path / "l")], str(tmp_path / "out"), 3, prior_draws=30)
    assert set(report["acc"]) == set(report["prior"]) == set(card.TARGETS)
    text = (tmp_path / "out" / "README.md").read_text()
    assert "question-only prior" in text and "Targets met" in text
    assert json.loads((tmp_path / "out" / "training.json").read_text())["stages"][1]["steps"] == 2
    from transformers import AutoModelForImageTextToText, AutoProcessor
    AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    AutoProcessor.from_pretrained(tmp_path / "out")
    assert main(["report", "--run", "l", "--root", str(tmp_path)]) == 0
    assert "prior" in capsys.readouterr().out


def test_pooled_export_loads_with_its_compression(tmp_path, monkeypatch):
    """The training-aware checkpoint pools at inference exactly as in training (its compression is the first
    stage of every tpx run), and a pruning method acts on what it leaves."""
    import torch

    import tpx
    from tpx.organism import batch as B, model as M, suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = dict(root=str(tmp_path), batch_size=4, warmup=1, eval_minutes=1e9, n_eval=3, model=MICRO,
                threads=1, prior_draws=30)
    T.train(T.TrainConfig(run="v", stage="vision", max_steps=2, **base), progress=False)
    T.train(T.TrainConfig(run="l", stage="lm", init_from=str(tmp_path / "v"), max_steps=2, **base), progress=False)
    T.train(T.TrainConfig(run="p", stage="lm", init_from=str(tmp_path / "l"), max_steps=2, pool=2, **base),
            progress=False)
    T.train(T.TrainConfig(run="l", stage="lm", max_steps=5, **base), resume=True, progress=False)  # l goes on
    report = card.export([str(tmp_path / d) for d in "vlp"], str(tmp_path / "out"), 3, prior_draws=30, pool=2)
    assert report["pool"] == 2 and set(report["tpx_slice"]["acc"]) == set(card.TARGETS)
    stages = json.loads((tmp_path / "out" / "training.json").read_text())["stages"]
    assert [s["steps"] for s in stages] == [2, 2, 2]  # l as p saw it: at the branch point, not at step 5
    assert "Training-aware checkpoint" in (tmp_path / "out" / "README.md").read_text()
    model, _ = tpx.load(str(tmp_path / "out"))
    trained = T.checkpoint.load_model(T.checkpoint.ckpt_dir(tmp_path / "p")).eval()
    vocab = M.build_tokenizer().get_vocab()
    s = suite.build("val", 1)[0]
    px = B.pixels([s.image])
    with torch.no_grad():
        with M.pooled(trained, 2):
            want = trained(input_ids=torch.tensor([B.prompt_ids(vocab, s.question, 2)]),
                           position_ids=torch.tensor([B.prompt_positions(vocab, s.question, 2)]), pixel_values=px)
        full = torch.tensor([B.prompt_ids(vocab, s.question)])
        with tpx.pruning(model):  # no method: the checkpoint's own compression only
            got = model(input_ids=full, pixel_values=px)
        torch.testing.assert_close(got.logits[0, -1], want.logits[0, -1], atol=1e-5, rtol=0)
        with tpx.pruning(model, "fastv", retention=16 / 144, layer=2) as run:
            model(input_ids=full, pixel_values=px)
    assert [e.method for e in run.native_trace] == ["pooling"] and [e.method for e in run.trace] == ["fastv"]
    assert run.trace[0].n_keep == 16


@pytest.mark.parametrize("name", ["llava-organism", "llava-organism-pool2"])
def test_shipped_cards_state_the_architecture_from_config(name):
    import json
    from pathlib import Path

    from tpx.organism.card import architecture

    folder = Path(__file__).resolve().parents[1] / "data" / "organism" / name
    config = json.loads((folder / "config.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"Architecture (from `config.json`): {architecture(config)}." in card
    assert f"hidden {config['text_config']['hidden_size']}," in card
