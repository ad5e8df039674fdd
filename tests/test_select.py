"""Selectors on hand-made tensors where the right answer is known."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_sorted_unique, selection_inputs

from tpx import dedup, merge, scores, select


@pytest.mark.parametrize(("retention", "n_keep"), [(1 / 3, 192), (1 / 4, 144), (2 / 9, 128), (1 / 9, 64), (1.0, 576)])
def test_budget_matches_the_literature(retention, n_keep):
    assert select.budget(retention, 576) == n_keep


@pytest.mark.parametrize("retention", [0, -0.1, 1.01, float("nan"), "0.5", True, None])
def test_budget_rejects_bad_retention(retention):
    with pytest.raises(ValueError, match="retention"):
        select.budget(retention, 576)


def test_budget_that_rounds_to_zero_is_an_error():
    with pytest.raises(ValueError, match=r"keeps 0 of 144 visual tokens; the smallest retention that keeps one token is 0.003472"):
        select.budget(0.001, 144)


def test_topk_keeps_the_best_sorted():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert select.topk(scores, 2).tolist() == [[1, 3], [0, 1]]


def test_window_topk_keeps_the_best_token_of_every_window():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 16, generator=g)
    kept = select.window_topk(scores, 4, (4, 4), window=2)
    grid = scores.view(3, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(3, 4, 4)   # (B, window, member)
    member = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    best = member.expand(3, -1, -1).gather(2, grid.argmax(-1, keepdim=True))[..., 0]
    assert torch.equal(kept, best.sort(1).values)


def test_window_topk_gives_the_remainder_to_the_best_runners_up():
    # 2x4 grid, windows 2x2: window 0 = {0,1,4,5}, window 1 = {2,3,6,7}
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.0, 7.0, 6.0, 2.0, 3.0]])
    assert select.window_topk(scores, 3, (2, 4), window=2).tolist() == [[0, 1, 7]]
    # the global top-3 would be {0, 1, 4}: all from window 0
    assert select.topk(scores, 3).tolist() == [[0, 1, 4]]


def test_window_topk_handles_edge_windows_and_exact_budget():
    scores = torch.rand(2, 25, generator=torch.Generator().manual_seed(1))
    for n_keep in (1, 9, 10, 25):
        kept = select.window_topk(scores, n_keep, (5, 5), window=2)
        assert kept.shape == (2, n_keep)
        assert bool((kept[:, 1:] > kept[:, :-1]).all())
    # 9 windows (3x3 over a 5x5 grid) and 9 tokens: one per window
    kept = select.window_topk(scores, 9, (5, 5), window=2)
    win = (kept // 5 // 2) * 3 + (kept % 5) // 2
    assert torch.equal(win.sort(1).values, torch.arange(9).expand(2, -1))


def test_window_topk_validates_its_window():
    with pytest.raises(ValueError, match="window must be between 1 and the grid 4x4"):
        select.window_topk(torch.rand(1, 16), 4, (4, 4), window=5)


def test_pool2d_averages_windows_and_keeps_their_first_token():
    feats = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(2))
    merged = select.pool2d(feats, 4, (4, 4))
    assert merged.index.tolist() == [[0, 2, 8, 10]] * 2
    expected = torch.stack([feats[:, [0, 1, 4, 5]].mean(1), feats[:, [2, 3, 6, 7]].mean(1),
                            feats[:, [8, 9, 12, 13]].mean(1), feats[:, [10, 11, 14, 15]].mean(1)], dim=1)
    torch.testing.assert_close(merged.features, expected)


def test_pool2d_at_full_budget_is_the_identity():
    feats = torch.randn(1, 12, 5)
    merged = select.pool2d(feats, 12, (3, 4))
    assert torch.equal(merged.features, feats) and merged.index.tolist() == [list(range(12))]


def test_pool_grid_prefers_the_input_aspect_and_rejects_impossible_budgets():
    assert select.pool_grid(144, (24, 24)) == (12, 12)
    with pytest.raises(ValueError, match="every image grid keeps at least one"):  # a grid's zero share of a split
        select.pool_grid(0, (4, 4))
    assert select.pool_grid(64, (24, 24)) == (8, 8)
    assert select.pool_grid(48, (12, 12)) in {(6, 8), (8, 6)}
    with pytest.raises(ValueError, match="nearest feasible budgets"):
        select.pool_grid(37, (12, 12))


def test_grid_must_match_token_count():
    with pytest.raises(ValueError, match="grid 4x4 does not match the 15 visual tokens"):
        select.pool2d(torch.randn(1, 15, 2), 4, (4, 4))


def test_split_budget_is_proportional_exact_and_at_least_one():
    assert select.split_budget(320, [576] * 5) == [64] * 5
    assert select.split_budget(7, [3, 10, 1]) == [1, 5, 1]
    parts = select.split_budget(100, [576, 144, 2880, 1])
    assert sum(parts) == 100 and min(parts) >= 1 and parts[2] > parts[0] > parts[1]
    assert select.split_budget(2, [5, 5, 5]) in ([1, 1, 0], [1, 0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="n_keep must be in"):
        select.split_budget(11, [5, 5])
    with pytest.raises(ValueError, match="sizes"):
        select.split_budget(1, [])


def test_split_budget_never_exceeds_a_segment_on_random_splits():
    g = torch.Generator().manual_seed(9)
    for _ in range(200):
        sizes = torch.randint(1, 50, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        n_keep = int(torch.randint(1, sum(sizes) + 1, (1,), generator=g))
        parts = select.split_budget(n_keep, sizes)
        assert sum(parts) == n_keep and all(0 <= p <= s for p, s in zip(parts, sizes))
        if n_keep >= len(sizes):
            assert min(parts) >= 1
        assert all(abs(p - n_keep * s / sum(sizes)) < 2 for p, s in zip(parts, sizes))


def test_every_new_selector_gives_sorted_unique_exact_budgets_and_is_deterministic():
    for seed in range(2):
        x = selection_inputs(seed)
        imp = scores.last_token_attention(x["attn_last"])
        calls = [
            lambda: dedup.alpha_mix(imp, 11, **{k: v for k, v in x.items() if k != "attn_last"}),
            lambda: dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 11, x["normed_features"],
                                             x["normed_text"], x["text_mask"], x["text_keys"]),
            lambda: dedup.max_min_diversity(x["features"], 11),
            lambda: merge.dominant_contextual(imp, 11, x["visual_keys"], x["features"]).index,
            lambda: merge.topk_recycle(imp, 11, x["features"], recycle=True).index,
        ]
        for call in calls:
            first = call()
            assert_sorted_unique(first, 11)
            assert torch.equal(first, call())


def test_downsample_averages_the_vision_grid_and_is_the_identity_at_full_budget():
    # a 4x4 grid whose feature is (row, col): 2x2 windows average to their centres, indices at window starts
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    features = torch.stack([rows, cols], -1).reshape(1, 16, 2).expand(2, -1, -1)
    out = select.downsample(features, 4, (4, 4))
    assert out.index.tolist() == [[0, 2, 8, 10]] * 2
    assert out.features[0].tolist() == [[0.5, 0.5], [0.5, 2.5], [2.5, 0.5], [2.5, 2.5]]
    x = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(0))
    full = select.downsample(x, 12, (3, 4))
    assert torch.equal(full.features, x) and full.index.tolist() == [list(range(12))] * 2
    with pytest.raises(ValueError, match="cannot keep exactly n_keep=7"):
        select.downsample(x, 7, (3, 4))
