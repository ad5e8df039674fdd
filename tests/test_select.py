"""Selectors on hand-made tensors where the right answer is known."""

from __future__ import annotations

import pytest
import torch

from tpx import dedup, merge, schedules, select


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
    assert select.pool_grid(64, (24, 24)) == (8, 8)
    assert select.pool_grid(48, (12, 12)) in {(6, 8), (8, 6)}
    with pytest.raises(ValueError, match="nearest feasible budgets"):
        select.pool_grid(37, (12, 12))


def test_grid_must_match_token_count():
    with pytest.raises(ValueError, match="grid 4x4 does not match the 15 visual tokens"):
        select.pool2d(torch.randn(1, 15, 2), 4, (4, 4))


# ---- methods of issue 4 ---------------------------------------------------------------------------------

import math  # noqa: E402

from tpx import scores  # noqa: E402


def _inputs(seed, b=2, n=40, t=6, d=8, dk=12, h=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[-1, t - 2:] = False                                                   # a padded instruction
    return dict(
        features=torch.randn(b, n, d, generator=g), normed_features=torch.randn(b, n, d, generator=g),
        normed_text=torch.randn(b, t, d, generator=g), text_mask=mask,
        visual_keys=torch.randn(b, n, dk, generator=g), text_keys=torch.randn(b, t, dk, generator=g),
        last_feature=torch.randn(b, d, generator=g), attn_last=torch.rand(b, h, n, generator=g),
    )


def _sorted_unique(index, n_keep):
    assert index.dtype == torch.int64 and index.shape[1] == n_keep
    assert bool((index[:, 1:] > index[:, :-1]).all())


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# -- split_budget --

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


# -- alpha --

@pytest.mark.parametrize("uniqueness", ["dup", "last"])
def test_alpha_one_selects_exactly_what_fastv_selects(uniqueness):
    for seed in range(3):
        x = _inputs(seed)
        importance = scores.last_token_attention(x.pop("attn_last"))
        kept = dedup.alpha_mix(importance, 12, **x, alpha=1.0, uniqueness=uniqueness)
        assert torch.equal(kept, select.topk(importance, 12))


def test_alpha_zero_on_exact_duplicates_keeps_one_of_each():
    g = torch.Generator().manual_seed(3)
    distinct = torch.randn(2, 10, 8, generator=g)
    perm = torch.randperm(30, generator=g)
    feats = distinct.repeat(1, 3, 1)[:, perm]                                  # every token 3 times, shuffled
    x = _inputs(3, n=30)
    x.update(normed_features=feats, features=feats)
    importance = torch.rand(2, 30, generator=g)
    kept = dedup.alpha_mix(importance, 10, **{k: v for k, v in x.items() if k != "attn_last"}, alpha=0.0, uniqueness="dup")
    _sorted_unique(kept, 10)
    groups = (perm % 10).expand(2, -1).gather(1, kept)
    assert torch.equal(groups.sort(1).values, torch.arange(10).expand(2, -1))


def test_alpha_dup_drops_a_duplicate_before_a_unique_token():
    # tokens 0 and 1 identical and most important; token 2 unique and least important; alpha = 0.5
    feats = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]]])
    importance = torch.tensor([[1.0, 0.99, 0.0, 0.5]])
    kw = dict(features=feats, last_feature=feats[:, 0], normed_features=feats, normed_text=torch.zeros(1, 0, 3),
              text_mask=torch.zeros(1, 0, dtype=torch.bool), visual_keys=torch.ones(1, 4, 2), text_keys=torch.zeros(1, 0, 2))
    assert dedup.alpha_mix(importance, 3, **kw, alpha=0.5, uniqueness="dup", n_visual_pivots=0).tolist() == [[0, 2, 3]]
    assert select.topk(importance, 3).tolist() == [[0, 1, 3]]                  # FastV keeps both copies


def test_alpha_last_mixes_normalised_scores():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    last = torch.tensor([[1.0, 0.0]])                                          # uniqueness 0, 1, 2 -> 0, .5, 1
    importance = torch.tensor([[3.0, 2.0, 1.0]])                               # -> 1, .5, 0
    kw = dict(features=feats, last_feature=last, normed_features=feats, normed_text=torch.zeros(1, 0, 2),
              text_mask=torch.zeros(1, 0, dtype=torch.bool), visual_keys=torch.ones(1, 3, 2), text_keys=torch.zeros(1, 0, 2))
    assert dedup.alpha_mix(importance, 1, **kw, alpha=0.8, uniqueness="last").tolist() == [[0]]
    assert dedup.alpha_mix(importance, 1, **kw, alpha=0.2, uniqueness="last").tolist() == [[2]]


@pytest.mark.parametrize(("param", "value"), [("alpha", 1.5), ("alpha", -0.1), ("alpha", "0.5"), ("uniqueness", "first")])
def test_alpha_rejects_bad_parameters(param, value):
    x = _inputs(0)
    importance = scores.last_token_attention(x.pop("attn_last"))
    with pytest.raises(ValueError, match=param):
        dedup.alpha_mix(importance, 4, **x, **{param: value})


# -- dart --

def _dart_reference(vkeys, feats, text, tmask, tkeys, n_keep, n_vp=4, n_tp=4):
    """DART from the paper's description, one row and one token at a time."""
    out = []
    for b in range(feats.shape[0]):
        n = feats.shape[1]
        vnorm = [float(vkeys[b, i].abs().sum()) for i in range(n)]
        vpiv = sorted(range(n), key=lambda i: -vnorm[i])[: min(n_vp, n_keep)]
        valid = [t for t in range(text.shape[1]) if tmask[b, t]]
        tpiv = sorted(valid, key=lambda t: -float(tkeys[b, t].abs().sum()))[:n_tp]
        pivots = [feats[b, i] for i in vpiv] + [text[b, t] for t in tpiv]
        rest = n_keep - len(vpiv)
        quota = [rest // len(pivots) + (j < rest % len(pivots)) for j in range(len(pivots))]
        kept = set(vpiv)
        for pivot, q in zip(pivots, quota):
            free = sorted((i for i in range(n) if i not in kept), key=lambda i: _cos(feats[b, i], pivot))
            kept |= set(free[:q])
        out.append(sorted(kept))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_keep", [3, 9, 16, 27])
def test_dart_matches_a_plain_reference(seed, n_keep):
    x = _inputs(seed)
    kept = dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), n_keep, x["normed_features"], x["normed_text"],
                                    x["text_mask"], x["text_keys"])
    _sorted_unique(kept, n_keep)
    assert kept.tolist() == _dart_reference(x["visual_keys"], x["normed_features"], x["normed_text"], x["text_mask"],
                                            x["text_keys"], n_keep)


def test_dart_official_count_puts_visual_pivots_on_top():
    x = _inputs(0, n=200)
    x["text_mask"][:] = True
    kept = dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 128, x["normed_features"], x["normed_text"],
                                    x["text_mask"], x["text_keys"], exact_budget=False)
    _sorted_unique(kept, 132)
    with pytest.raises(ValueError, match="n_text_pivots"):
        x["text_mask"][0, :3] = False                                          # 3 text tokens < 4 pivots
        dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 128, x["normed_features"], x["normed_text"],
                                 x["text_mask"], x["text_keys"], exact_budget=False)


def test_dart_drops_a_duplicate_of_a_pivot_first():
    # token 0 has the largest key (the only visual pivot); token 1 duplicates it; tokens 2, 3 differ
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]]])
    keys = torch.tensor([[[9.0], [1.0], [1.0], [1.0]]])
    kept = dedup.pivot_duplication(scores.key_norm(keys), 3, feats, torch.zeros(1, 0, 2),
                                    torch.zeros(1, 0, dtype=torch.bool), torch.zeros(1, 0, 1), n_visual_pivots=1)
    assert kept.tolist() == [[0, 2, 3]]


@pytest.mark.parametrize(("param", "value"), [("n_visual_pivots", 0), ("n_visual_pivots", 2.5), ("n_text_pivots", -1)])
def test_dart_rejects_bad_parameters(param, value):
    x = _inputs(0)
    with pytest.raises(ValueError, match=param):
        dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 8, x["normed_features"], x["normed_text"],
                                 x["text_mask"], x["text_keys"], **{param: value})


# -- divprune --

def _divprune_reference(feats, n_keep):
    """Greedy max–min diversity from the paper's description, one token at a time."""
    out = []
    for f in feats:
        n = f.shape[0]
        d = [[1 - _cos(f[i], f[j]) for j in range(n)] for i in range(n)]
        first = max(range(n), key=lambda i: min(d[i][j] for j in range(n) if j != i))
        kept = [first]
        while len(kept) < n_keep:
            kept.append(max((i for i in range(n) if i not in kept), key=lambda i: min(d[i][s] for s in kept)))
        out.append(sorted(kept))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_keep", [1, 7, 20])
def test_divprune_matches_a_plain_reference(seed, n_keep):
    feats = _inputs(seed, n=30)["features"]
    kept = dedup.max_min_diversity(feats, n_keep)
    _sorted_unique(kept, n_keep)
    assert kept.tolist() == _divprune_reference(feats, n_keep)


def test_divprune_never_repicks_and_keeps_one_of_each_duplicate():
    distinct = torch.randn(1, 6, 5, generator=torch.Generator().manual_seed(4))
    feats = distinct.repeat(1, 4, 1)                                           # every token 4 times
    kept = dedup.max_min_diversity(feats, 6)
    assert torch.equal((kept % 6).sort(1).values, torch.arange(6)[None])
    _sorted_unique(dedup.max_min_diversity(feats, 24), 24)                   # all duplicates left: still unique


# -- fastervlm / visionzip --

def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_by_key():
    # 8 patches; dominant = the 2 with most [CLS] attention (5, 2); the 6 others -> 2 contextual groups
    cls = torch.tensor([[0.0, 0.1, 0.9, 0.1, 0.0, 0.8, 0.0, 0.1]])
    keys = torch.tensor([[[1.0, 0], [0, 1], [1, 1], [1, 0.1], [0.1, 1], [1, 1], [0.9, 0.1], [0.2, 1]]])
    feats = torch.arange(8.0).view(1, 8, 1)
    m = merge.dominant_contextual(cls, 4, keys, feats, dominant_share=0.5)
    # remaining 0,1,3,4,6,7: step 3 -> targets 0 and 4; 1, 7 join 4 (key ~ y); 3, 6 join 0 (key ~ x)
    assert m.index.tolist() == [[0, 1, 2, 5]]
    torch.testing.assert_close(m.features[0, :, 0], torch.tensor([(0 + 3 + 6) / 3, (1 + 4 + 7) / 3, 2.0, 5.0]))


def test_visionzip_default_split_is_the_papers():
    g = torch.Generator().manual_seed(5)
    cls, keys, feats = torch.rand(2, 576, generator=g), torch.randn(2, 576, 16, generator=g), torch.randn(2, 576, 8, generator=g)
    for n_keep, n_dom in [(64, 54), (128, 108), (192, 162)]:
        m = merge.dominant_contextual(cls, n_keep, keys, feats)
        _sorted_unique(m.index, n_keep)
        assert m.features.shape == (2, n_keep, 8)
        assert torch.isin(cls.topk(n_dom, 1).indices[0], m.index[0]).all()
    four_d = merge.dominant_contextual(cls, 64, keys.view(2, 576, 2, 8).transpose(1, 2), feats)
    _sorted_unique(four_d.index, 64)
    with pytest.raises(ValueError, match="dominant_share"):
        merge.dominant_contextual(cls, 64, keys, feats, dominant_share=1.2)


# -- sparsevlm --

@pytest.mark.parametrize(("retention", "counts"), [(1 / 3, [300, 200, 110]), (2 / 9, [303, 110, 36]), (1 / 9, [66, 30, 17])])
def test_sparsevlm_schedule_reproduces_the_paper(retention, counts):
    assert schedules.sparsevlm_schedule(retention, 576, 3) == counts


def test_sparsevlm_schedule_other_budgets_are_monotone_and_reach_full():
    assert schedules.sparsevlm_schedule(1.0, 576, 3) == [576, 576, 576]
    for r in (0.01, 0.05, 0.15, 0.25, 0.5, 0.9):
        for n in (576, 2880, 64):
            c = schedules.sparsevlm_schedule(r, n, 3)
            assert c == sorted(c, reverse=True) and c[-1] >= 1 and c[0] <= n
    assert schedules.sparsevlm_schedule(2 / 9, 2880, 3) == [1515, 550, 180]
    with pytest.raises(ValueError, match="n_stages"):
        schedules.sparsevlm_schedule(0.5, 576, 2)


def test_sparsevlm_recycling_counts_inside_the_budget():
    g = torch.Generator().manual_seed(6)
    s, feats = torch.rand(2, 100, generator=g), torch.randn(2, 100, 4, generator=g)
    assert torch.equal(merge.topk_recycle(s, 30, feats), select.topk(s, 30))
    m = merge.topk_recycle(s, 30, feats, recycle=True)
    _sorted_unique(m.index, 30)
    k, n_rec, n_clu = merge._recycle_counts(100, 30)
    assert k + n_clu == 30 and n_rec == math.floor(0.3 * (100 - k)) + 1
    top = select.topk(s, k)
    sel = (m.index[..., None] == top[:, None, :]).any(-1)                     # (B, 30) per row
    assert int(sel.sum()) == 2 * k
    # selected tokens keep their features; recycled ones are averages of dropped tokens
    torch.testing.assert_close(m.features[sel], feats.gather(1, m.index[..., None].expand(-1, -1, 4))[sel])
    with pytest.raises(ValueError, match="recycle"):
        merge.topk_recycle(s, 30, feats, recycle="yes")


def test_dpc_knn_separates_two_blobs():
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(1, 10, 3, generator=g) * 0.01, torch.randn(1, 10, 3, generator=g) * 0.01 + 5], 1)
    group = merge._dpc_knn(x, 2)[0]
    assert len(set(group[:10].tolist())) == 1 and len(set(group[10:].tolist())) == 1 and group[0] != group[10]


# -- pdrop --

def test_pyramid_schedule_reproduces_the_paper_at_its_equivalent_budget():
    assert schedules.pyramid_schedule(0.46875, 576, 3) == [288, 144, 72]
    assert schedules.pyramid_schedule(1.0, 576, 3) == [576, 576, 576]
    c = schedules.pyramid_schedule(1 / 3, 576, 3)
    assert c == sorted(c, reverse=True)
    average = (8 * 576 + 8 * sum(c)) / 32
    assert abs(average - 192) <= 1
    c = schedules.pyramid_schedule(1 / 9, 576, 3, layers=(2, 6, 12), n_layers=32)
    assert abs((2 * 576 + 4 * c[0] + 6 * c[1] + 20 * c[2]) / 32 - 64) <= 1


def test_pyramid_schedule_refuses_budgets_its_layers_cannot_reach():
    with pytest.raises(ValueError, match=r"retention must be ≥ 0\.25"):
        schedules.pyramid_schedule(2 / 9, 576, 3)
    with pytest.raises(ValueError, match="ratios"):
        schedules.pyramid_schedule(0.5, 576, 3, ratios=(0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="layers"):
        schedules.pyramid_schedule(0.5, 576, 3, layers=(8, 16, 24))


# -- every selector: exact budget, sorted unique indices, determinism --

def test_every_new_selector_gives_sorted_unique_exact_budgets_and_is_deterministic():
    for seed in range(2):
        x = _inputs(seed)
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
            _sorted_unique(first, 11)
            assert torch.equal(first, call())
