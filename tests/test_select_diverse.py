"""Importance + diversity selectors (CDPruner, VisPruner, HiPrune, IDPruner): hand-made tensors with known answers
and differential tests against slow references written from the papers (loops over tokens, Python lists)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_sorted_unique

from tpx import scores, select
from tpx.select_diverse import anchor_buffer_register, conditional_dpp, important_diverse, marginal_relevance


def _random(seed, b=2, n=24, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g) + 0.05, torch.randn(b, n, d, generator=g)


# ---- CDPruner ------------------------------------------------------------------------------------------

def slow_dpp(relevance, features, n_keep):
    """Greedy MAP by definition: add the token that maximises det(L_Y) of L = diag(r)·S·diag(r) (float64)."""
    x = torch.nn.functional.normalize(features.double(), dim=-1)
    r = relevance.double()
    kernel = r[:, None] * (x @ x.T) * r[None, :]
    kept = []
    for _ in range(n_keep):
        best, pick = -math.inf, None
        for i in range(len(r)):
            if i in kept:
                continue
            idx = torch.tensor([*kept, i])
            det = float(torch.linalg.det(kernel[idx][:, idx]))
            if det > best:
                best, pick = det, i
        kept.append(pick)
    return sorted(kept)


def test_dpp_equals_the_greedy_determinant_maximiser():
    for seed in range(4):
        relevance, features = _random(seed)
        for n_keep in (1, 5, 12):
            got = conditional_dpp(relevance, n_keep, features)
            assert_sorted_unique(got, n_keep)
            assert got.tolist() == [slow_dpp(relevance[i], features[i], n_keep) for i in range(2)]


def test_dpp_keeps_one_of_two_duplicates_and_follows_relevance():
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    flat = torch.ones(1, 4)
    assert conditional_dpp(flat, 2, feats).tolist() == [[0, 2]]      # the orthogonal pair, not the duplicates
    # relevance decides between the equally diverse copies, and the first pick is the most relevant token
    assert conditional_dpp(torch.tensor([[0.5, 1.0, 0.9, 0.2]]), 2, feats).tolist() == [[1, 2]]
    assert conditional_dpp(torch.tensor([[0.5, 0.4, 0.3, 1.0]]), 1, feats).tolist() == [[3]]


def test_dpp_past_the_kernel_rank_keeps_distinct_tokens():
    relevance, features = _random(5, n=12, d=3)                      # rank 3: gains vanish after 3 picks
    got = conditional_dpp(relevance, 8, features)
    assert_sorted_unique(got, 8)
    assert [set(slow_dpp(relevance[i], features[i], 3)) <= set(got[i].tolist()) for i in range(2)] == [True, True]
    assert torch.equal(conditional_dpp(relevance, 12, features), torch.arange(12).expand(2, -1))


def test_relevance_is_the_negated_mean_cosine_min_max_normalised():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    text = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])                       # the third text slot is padding
    # mean cosine to the two real text tokens: 0.5, 0.5, -0.5 -> negated -0.5, -0.5, 0.5 -> (r - min + 1e-6) / 1
    want = torch.tensor([[1e-6, 1e-6, 1.0 + 1e-6]])
    torch.testing.assert_close(scores.instruction_relevance(feats, text, mask), want)
    none = scores.instruction_relevance(feats, text, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(none, torch.ones(1, 3))                       # no instruction: the plain DPP


# ---- VisPruner -----------------------------------------------------------------------------------------

def slow_vispruner(attn, features, n_keep, share):
    """VisPruner's important + diverse rule, step by step on Python lists."""
    n_imp = int(n_keep * share)
    order = sorted(range(len(attn)), key=lambda i: (-float(attn[i]), i))
    important, rest = order[:n_imp], order[n_imp:]
    n_div = n_keep - n_imp
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    while n_div > 0 and len(rest) - n_div > 0:
        drop = min(8, len(rest) - n_div)
        a, b = rest[::2], rest[1::2]
        best = [max(float(x[i] @ x[j]) for j in b) for i in a]
        by_similarity = sorted(range(len(a)), key=lambda k: (-best[k], k))
        rest = [a[k] for k in by_similarity[drop:]] + b
    return sorted(important + (rest if n_div > 0 else []))


@pytest.mark.parametrize("share", [0.5, 0.75, 0.0, 1.0])
def test_vispruner_equals_the_slow_rule(share):
    for seed in range(3):
        attn, features = _random(seed, n=40)
        for n_keep in (4, 10, 17):
            got = important_diverse(attn, n_keep, features, important_share=share)
            assert_sorted_unique(got, n_keep)
            assert got.tolist() == [slow_vispruner(attn[i], features[i], n_keep, share) for i in range(2)]


def test_vispruner_drops_duplicates_among_the_rest():
    # token 0 is the most important; 1..4 are two pairs of duplicates; 5 is unique; 2 diverse tokens wanted
    feats = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0], [0.6, 0.6, 0.5]]])
    attn = torch.tensor([[0.9, 0.5, 0.4, 0.3, 0.2, 0.1]])
    kept = important_diverse(attn, 3, feats, important_share=1 / 3).tolist()[0]
    assert 0 in kept and not {1, 2} <= set(kept) and not {3, 4} <= set(kept)
    assert important_diverse(attn, 3, feats, important_share=1.0).tolist() == [[0, 1, 2]]   # top-k only


# ---- HiPrune -------------------------------------------------------------------------------------------

def slow_hiprune(deep, obj, n_keep, cols, share):
    """HiPrune's rule as the official code writes it: anchors, flat ±1 / ±cols neighbours clamped, registers."""
    n = len(deep)
    n_anchor = round(n_keep * share / 5)
    anchors = sorted(range(n), key=lambda i: -float(obj[i]))[:n_anchor]
    chosen = {min(max(a + o, 0), n - 1) for a in anchors for o in (0, -1, 1, -cols, cols)}
    rest = sorted((i for i in range(n) if i not in chosen), key=lambda i: (-float(deep[i]), i))
    return sorted(chosen | set(rest[: n_keep - len(chosen)]))


@pytest.mark.parametrize("share", [0.1, 0.5, 1.0])
def test_hiprune_equals_the_slow_rule(share):
    g = torch.Generator().manual_seed(0)
    deep, obj = torch.rand(2, 48, generator=g), torch.rand(2, 3, 48, generator=g)
    for n_keep in (5, 12, 30):
        got = anchor_buffer_register(deep, n_keep, obj, (6, 8), anchor_share=share)
        assert_sorted_unique(got, n_keep)
        want = [slow_hiprune(deep[i], obj[i].mean(0), n_keep, 8, share) for i in range(2)]
        assert got.tolist() == want


def test_hiprune_keeps_the_anchor_its_neighbours_and_the_best_registers():
    deep = torch.arange(24, dtype=torch.float).flip(0)[None]            # registers: lowest indices first
    obj = torch.zeros(1, 1, 24)
    obj[0, 0, 14] = 1.0                                                 # anchor at row 2, col 2 of a 4x6 grid
    # 10 tokens at share 0.5: 1 anchor + 4 neighbours (8, 13, 15, 20), then the 5 best others: 0..4
    assert anchor_buffer_register(deep, 10, obj, (4, 6), anchor_share=0.5).tolist() == [[0, 1, 2, 3, 4, 8, 13, 14, 15, 20]]
    obj = torch.zeros(1, 1, 24)
    obj[0, 0, 0] = 1.0                                                  # a corner: -1 and -cols clamp onto 0
    assert anchor_buffer_register(deep, 5, obj, (4, 6), anchor_share=1.0).tolist() == [[0, 1, 2, 3, 6]]
    with pytest.raises(ValueError, match="anchor_share=1.0 gives 1 anchors"):
        anchor_buffer_register(deep, 3, obj, (4, 6), anchor_share=1.0)


# ---- IDPruner ------------------------------------------------------------------------------------------

def slow_mmr(importance, features, n_keep, lam):
    s = [float(v) for v in importance]
    lo, hi = min(s), max(s)
    imp = [(v - lo) / (hi - lo + 1e-6) for v in s]
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    kept = [max(range(len(s)), key=lambda i: (imp[i], -i))]
    while len(kept) < n_keep:
        def mmr(i):
            return lam * imp[i] - (1 - lam) * max(float(x[i] @ x[j]) for j in kept)
        kept.append(max((i for i in range(len(s)) if i not in kept), key=lambda i: (mmr(i), -i)))
    return sorted(kept)


@pytest.mark.parametrize("lam", [0.5, 0.0, 0.9])
def test_idpruner_equals_the_slow_rule(lam):
    for seed in range(3):
        importance, features = _random(seed, n=30)
        for n_keep in (1, 7, 15):
            got = marginal_relevance(importance, n_keep, features, importance_weight=lam)
            assert_sorted_unique(got, n_keep)
            assert got.tolist() == [slow_mmr(importance[i], features[i], n_keep, lam) for i in range(2)]


def test_idpruner_at_full_importance_is_topk_and_at_zero_spreads_out():
    importance, features = _random(7, n=30)
    assert torch.equal(marginal_relevance(importance, 9, features, importance_weight=1.0), select.topk(importance, 9))
    feats = torch.tensor([[[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]]])
    # after the most important token 0, pure diversity takes its opposite, not its near-duplicate
    assert marginal_relevance(torch.tensor([[1.0, 0.9, 0.1, 0.0]]), 2, feats, importance_weight=0.0).tolist() == [[0, 3]]


@pytest.mark.parametrize(("fn", "param"), [(important_diverse, "important_share"), (anchor_buffer_register, "anchor_share"),
                                           (marginal_relevance, "importance_weight")])
def test_shares_outside_the_unit_interval_are_refused(fn, param):
    attn, features = _random(0, b=1, n=16)
    extra = (torch.rand(1, 2, 16), (4, 4)) if fn is anchor_buffer_register else (features,)
    with pytest.raises(ValueError, match=rf"{param} must be a number in \[0, 1\], got 1.5"):
        fn(attn, 4, *extra, **{param: 1.5})
