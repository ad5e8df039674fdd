"""Duplication and agreement of kept sets: known answers on hand-made tensors, a plain reference, the run loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cosine

from tpx import probes
from tpx.analysis import redundancy
from tpx.data import load_samples


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- kept_duplication ------------------------------------------------------------------------------------

def test_exact_duplicates_give_one_and_orthogonal_features_zero():
    eye = torch.eye(6)[None]                                                   # 6 orthogonal tokens
    copies = torch.tensor([[[1.0, 2.0], [2.0, 4.0], [-2.0, 1.0], [-6.0, 3.0]]])  # two pairs, equal up to scale
    assert redundancy.kept_duplication(eye, torch.tensor([[0, 2, 5]])).tolist() == [0.0]
    assert redundancy.kept_duplication(copies, torch.tensor([[0, 1, 2, 3]])).tolist() == pytest.approx([1.0])
    # keep one of each pair: the two kept are orthogonal
    assert redundancy.kept_duplication(copies, torch.tensor([[1, 3]])).tolist() == pytest.approx([0.0])


def test_duplication_is_the_mean_of_each_tokens_best_match():
    # token 0 ~ token 1 (cos 0.6), token 2 orthogonal to 0, cos(1, 2) = 0.8
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    dup = redundancy.kept_duplication(feats, torch.tensor([[0, 1, 2]]))
    assert dup.tolist() == pytest.approx([(0.6 + 0.8 + 0.8) / 3])


def test_duplication_matches_a_plain_reference_and_is_batched():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 20, 5, generator=g)
    kept = torch.stack([torch.randperm(20, generator=g)[:7] for _ in range(3)])
    ref = [sum(max(cosine(feats[b, i], feats[b, j]) for j in kept[b] if j != i) for i in kept[b]) / 7 for b in range(3)]
    assert redundancy.kept_duplication(feats, kept).tolist() == pytest.approx(ref, abs=1e-6)
    half = redundancy.kept_duplication(feats.half(), kept)
    assert half.dtype == torch.float32 and half.tolist() == pytest.approx(ref, abs=2e-3)


@pytest.mark.parametrize(("kept", "match"), [([[0]], "at least 2"), ([[0, 0]], "distinct"), ([[0, 9]], r"\[0, 4\)"),
                                              ([[0, 1], [1, 2]], "same B")])
def test_duplication_rejects_bad_kept_sets(kept, match):
    with pytest.raises(ValueError, match=match):
        redundancy.kept_duplication(torch.randn(1, 4, 3), torch.tensor(kept))


# ---- kept_overlap ----------------------------------------------------------------------------------------

def test_identical_sets_overlap_one_disjoint_zero_partial_known():
    a = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]])
    b = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3], [2, 3, 8, 9]])               # same (reordered), disjoint, half
    assert redundancy.kept_overlap(a, b, 10).tolist() == pytest.approx([1.0, 0.0, 2 / 6])
    assert redundancy.kept_overlap(a, b, 10, kind="share").tolist() == pytest.approx([1.0, 0.0, 0.5])


def test_overlap_ignores_padding_and_compares_sets_of_different_sizes():
    a = torch.tensor([[0, 1, 2, -1]])                                          # 3 tokens, padded
    b = torch.tensor([[1, 2, 5, 6]])
    assert redundancy.kept_overlap(a, b, 8).tolist() == pytest.approx([2 / 5])
    assert redundancy.kept_overlap(a, b, 8, kind="share").tolist() == pytest.approx([2 / 3])


def test_overlap_rejects_bad_arguments():
    a = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="kind"):
        redundancy.kept_overlap(a, a, 4, kind="dice")
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        redundancy.kept_overlap(a, torch.tensor([[0, 4]]), 4)


def test_chance_overlap_matches_independent_random_sets():
    g = torch.Generator().manual_seed(1)
    n, k = 144, 36
    a = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(3000)])
    b = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(3000)])
    measured = float(redundancy.kept_overlap(a, b, n).mean())
    assert measured == pytest.approx(redundancy.chance_overlap(k / n), abs=0.005)
    with pytest.raises(ValueError, match="retention"):
        redundancy.chance_overlap(0.0)


# ---- labels and seeds ------------------------------------------------------------------------------------

def test_pivot_variants_and_which_methods_need_seeds():
    assert redundancy.pivot_variants(["max", "random"]) == {
        "dart": {"method": "dart", "pivot": "max"}, "dart:random": {"method": "dart", "pivot": "random"}}
    with pytest.raises(ValueError, match="pivots"):
        redundancy.pivot_variants(["median"])
    from tpx.grid import seeded

    assert seeded("random") and seeded("dart", {"pivot": "random"})
    assert not any(seeded(m) for m in ("fastv", "dart", "pooling", "divprune"))


# ---- the loop on the tiny model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def table():
    from tpx.models import load

    model, processor = load("tiny")
    samples = load_samples("organism", n=2, tasks=["exist", "count", "locate"])
    entries = {"fastv": {"method": "fastv"}, "random": {"method": "random"}} | redundancy.pivot_variants(["max", "random"])
    from tpx.evaluate import evaluate
    from tpx.grid import grid

    cells = grid(entries, [0.25, 0.5], hooks=["L"], layers=[1], seeds=[0, 1])
    df = evaluate(model, processor, samples, configs=cells, batch_size=4, max_new_tokens=2, progress=False)
    df = df.assign(method=df["label"])
    feats = probes.visual_features(model, processor, samples, 1, batch_size=4, progress=False)
    return df, feats, samples, model, processor


def test_grid_labels_entries_and_runs_seeds_only_where_they_matter(table):
    df, _, samples, _, _ = table
    counts = df.groupby("method")["seed"].nunique().to_dict()
    assert counts == {"unpruned": 1, "fastv": 1, "random": 2, "dart": 1, "dart:random": 2}
    assert len(df) == len(samples) * (1 + 2 * (1 + 2 + 1 + 2))
    assert set(df.loc[df["method"] == "fastv", "n_keep"]) == {36, 72}           # 144 tokens at 0.25 and 0.5


def test_visual_features_are_the_hidden_states_entering_the_layer(table):
    _, feats, samples, model, processor = table
    from tpx.evaluate import model_inputs

    inputs = model_inputs(processor, samples[:1], model)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[1]    # entering decoder layer 1
    positions = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
    assert torch.allclose(feats[samples[0].id], hidden[0, positions], atol=1e-5)
    with pytest.raises(ValueError, match="layer=9"):
        probes.visual_features(model, processor, samples, 9)


def test_duplication_column_summary_and_overlap_matrix(table):
    df, feats, _, _, _ = table
    dup = redundancy.add_duplication(df, feats)
    assert dup["duplication"].between(-1, 1).all()
    full = dup[dup["method"] == "unpruned"]["duplication"]
    assert (dup.groupby("method")["duplication"].max() <= full.max() + 1e-6).all()  # subsets are never closer
    summary = redundancy.summarize_redundancy(dup)
    row = summary[(summary["method"] == "random") & (summary["retention"] == 0.25)].iloc[0]
    assert row["seeds"] == 2 and row["duplication_min"] <= row["duplication"] <= row["duplication_max"]
    m = redundancy.overlap_matrix(df, 0.25, ["fastv", "dart", "dart:random"])
    assert list(m.index) == ["fastv", "dart", "dart:random"] and (m.values.diagonal() == 1).all()
    assert torch.allclose(torch.tensor(m.values), torch.tensor(m.values).T)
    with pytest.raises(ValueError, match="no kept sets"):
        redundancy.overlap_matrix(df, 0.25, ["pooling"])
    assert not math.isnan(float(m.loc["fastv", "dart"]))
