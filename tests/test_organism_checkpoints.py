"""The shipped organisms load offline through `tpx.load` and score what their cards say."""

import json

import pytest

from tpx.models import ORGANISM_DIR, ORGANISMS
from tpx.organism import card


@pytest.mark.parametrize("name", sorted(ORGANISMS))
def test_checkpoint_scores_its_card(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = ORGANISM_DIR / ORGANISMS[name]
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20  # the size budget of the issue
    report = json.loads((folder / "training.json").read_text())["test"]
    assert "question-only prior" in (folder / "README.md").read_text()
    pool = report.get("pool", 1)
    got = card.slice_accuracy(folder, pool, report["tpx_slice"]["n_per_task"])
    want = report["tpx_slice"]["acc"]
    assert set(got) == set(want) == set(card.TARGETS)
    off = {t: (got[t], want[t]) for t in want if abs(got[t] - want[t]) > 0.05}
    assert not off, f"{name}: slice accuracy differs from its card by more than 5 points: {off}"


def test_pooled_organism_runs_with_its_compression():
    import tpx
    import tpx.models

    model, _ = tpx.load("organism-pool2")
    assert model.config.tpx_compression == {"method": "pooling", "retention": 0.25, "hook": "E"}
    assert [s.method.name for s in tpx.models.native_plan(model).stages] == ["pooling"]
