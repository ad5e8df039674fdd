"""Duplication-aware selectors (alpha, DART, DivPrune): known answers and plain slow references."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_sorted_unique, cosine, selection_inputs

from tpx import dedup, scores, select


@pytest.mark.parametrize("uniqueness", ["dup", "last"])
def test_alpha_one_selects_exactly_what_fastv_selects(uniqueness):
    for seed in range(3):
        x = selection_inputs(seed)
        importance = scores.last_token_attention(x.pop("attn_last"))
        kept = dedup.alpha_mix(importance, 12, **x, alpha=1.0, uniqueness=uniqueness)
        assert torch.equal(kept, select.topk(importance, 12))


def test_alpha_zero_on_exact_duplicates_keeps_one_of_each():
    g = torch.Generator().manual_seed(3)
    distinct = torch.randn(2, 10, 8, generator=g)
    perm = torch.randperm(30, generator=g)
    feats = distinct.repeat(1, 3, 1)[:, perm]                                  # every token 3 times, shuffled
    x = selection_inputs(3, n=30)
    x.update(normed_features=feats, features=feats)
    importance = torch.rand(2, 30, generator=g)
    kept = dedup.alpha_mix(importance, 10, **{k: v for k, v in x.items() if k != "attn_last"}, alpha=0.0, uniqueness="dup")
    assert_sorted_unique(kept, 10)
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
    x = selection_inputs(0)
    importance = scores.last_token_attention(x.pop("attn_last"))
    with pytest.raises(ValueError, match=param):
        dedup.alpha_mix(importance, 4, **x, **{param: value})


def _dart_reference(vkeys, feats, text, tmask, tkeys, n_keep, n_vp=4, n_tp=4, vrank=None, trank=None):
    """DART from the paper's description, one row and one token at a time; pivots have the largest key norm,
    or the largest `vrank` / `trank` when given (another pivot rule)."""
    out = []
    for b in range(feats.shape[0]):
        n = feats.shape[1]
        vnorm = [float(vkeys[b, i].abs().sum() if vrank is None else vrank[b, i]) for i in range(n)]
        vpiv = sorted(range(n), key=lambda i: -vnorm[i])[: min(n_vp, n_keep)]
        valid = [t for t in range(text.shape[1]) if tmask[b, t]]
        tnorm = [float(tkeys[b, t].abs().sum() if trank is None else trank[b, t]) for t in range(text.shape[1])]
        tpiv = sorted(valid, key=lambda t: -tnorm[t])[:n_tp]
        pivots = [feats[b, i] for i in vpiv] + [text[b, t] for t in tpiv]
        rest = n_keep - len(vpiv)
        quota = [rest // len(pivots) + (j < rest % len(pivots)) for j in range(len(pivots))]
        kept = set(vpiv)
        for pivot, q in zip(pivots, quota):
            free = sorted((i for i in range(n) if i not in kept), key=lambda i: cosine(feats[b, i], pivot))
            kept |= set(free[:q])
        out.append(sorted(kept))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_keep", [3, 9, 16, 27])
def test_dart_matches_a_plain_reference(seed, n_keep):
    x = selection_inputs(seed)
    kept = dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), n_keep, x["normed_features"], x["normed_text"],
                                    x["text_mask"], x["text_keys"])
    assert_sorted_unique(kept, n_keep)
    assert kept.tolist() == _dart_reference(x["visual_keys"], x["normed_features"], x["normed_text"], x["text_mask"],
                                            x["text_keys"], n_keep)


def test_dart_official_count_puts_visual_pivots_on_top():
    x = selection_inputs(0, n=200)
    x["text_mask"][:] = True
    kept = dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 128, x["normed_features"], x["normed_text"],
                                    x["text_mask"], x["text_keys"], exact_budget=False)
    assert_sorted_unique(kept, 132)
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


def _dart(x, n_keep, **kw):
    return dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), n_keep, x["normed_features"], x["normed_text"],
                                    x["text_mask"], x["text_keys"], **kw)


@pytest.mark.parametrize("seed", range(3))
def test_dart_pivot_rules_match_the_reference_with_their_ranking(seed):
    x = selection_inputs(seed)
    ref = dict(vkeys=x["visual_keys"], feats=x["normed_features"], text=x["normed_text"], tmask=x["text_mask"],
               tkeys=x["text_keys"], n_keep=13)
    assert torch.equal(_dart(x, 13, pivot="max"), _dart(x, 13))                # the default is DART's rule
    vnorm, tnorm = x["visual_keys"].abs().sum(-1), x["text_keys"].abs().sum(-1)
    assert _dart(x, 13, pivot="min").tolist() == _dart_reference(**ref, vrank=-vnorm, trank=-tnorm)
    g = torch.Generator().manual_seed(seed)
    vrank, trank = torch.rand(vnorm.shape, generator=g), torch.rand(tnorm.shape, generator=g)  # the selector's draws
    kept = _dart(x, 13, pivot="random", generator=torch.Generator().manual_seed(seed))
    assert_sorted_unique(kept, 13)
    assert kept.tolist() == _dart_reference(**ref, vrank=vrank, trank=trank)


def test_dart_min_pivot_takes_the_smallest_key_and_random_pivots_follow_the_seed():
    # token 0 has the largest key, token 3 the smallest; one visual pivot, no text: the pivot is always kept
    feats = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]]])
    keys = torch.tensor([[[9.0], [3.0], [2.0], [1.0]]])
    kw = dict(normed_features=feats, normed_text=torch.zeros(1, 0, 2), text_mask=torch.zeros(1, 0, dtype=torch.bool),
              text_keys=torch.zeros(1, 0, 1), n_visual_pivots=1)
    assert dedup.pivot_duplication(scores.key_norm(keys), 1, **kw).tolist() == [[0]]
    assert dedup.pivot_duplication(scores.key_norm(keys), 1, **kw, pivot="min").tolist() == [[3]]
    x = selection_inputs(0, n=200)
    draws = {tuple(_dart(x, 4, n_text_pivots=0, pivot="random", generator=torch.Generator().manual_seed(s))[0].tolist())
             for s in range(5)}
    assert len(draws) > 1                                                      # seeds choose different pivots
    again = _dart(x, 4, n_text_pivots=0, pivot="random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, _dart(x, 4, n_text_pivots=0, pivot="random", generator=torch.Generator().manual_seed(0)))


def test_dart_rejects_an_unknown_pivot_rule_and_random_without_generator():
    x = selection_inputs(0)
    with pytest.raises(ValueError, match="pivot must be one of"):
        _dart(x, 8, pivot="median")
    with pytest.raises(ValueError, match="needs a generator"):
        _dart(x, 8, pivot="random")


@pytest.mark.parametrize(("param", "value"), [("n_visual_pivots", 0), ("n_visual_pivots", 2.5), ("n_text_pivots", -1)])
def test_dart_rejects_bad_parameters(param, value):
    x = selection_inputs(0)
    with pytest.raises(ValueError, match=param):
        dedup.pivot_duplication(scores.key_norm(x["visual_keys"]), 8, x["normed_features"], x["normed_text"],
                                 x["text_mask"], x["text_keys"], **{param: value})


# ---- DART's official pivot order: a Python set of absolute positions ----------------------------------

def official_dart(vkeys, feats, text, tmask, tkeys, n_keep, start, text_pos, n_vp=4, n_tp=4):
    """The official DART rule (get_retained_image_token), one row at a time, written from its description:
    pivots' absolute positions go into a Python set (visual, then text, each by decreasing key L1 norm); a copy
    of the set is iterated, each pivot taking the n_keep // (n_vp + n_tp) free visual tokens least
    cosine-similar to it; text pivots are dropped at the end. Visual token i sits at `start + i`, text slot t at
    `text_pos[b][t]`. Returns the kept visual indices."""
    out = []
    for b in range(feats.shape[0]):
        n = feats.shape[1]
        top = n_keep // (n_vp + n_tp)
        state = {start + i: feats[b, i] for i in range(n)}
        real = [t for t in range(text.shape[1]) if tmask[b, t]]
        state.update({text_pos[b][t]: text[b, t] for t in real})
        image_idx = [start + i for i in sorted(range(n), key=lambda i: -float(vkeys[b, i].abs().sum()))[:n_vp]]
        query_idx = [text_pos[b][t] for t in sorted(real, key=lambda t: -float(tkeys[b, t].abs().sum()))[:n_tp]]
        indices = set(image_idx + query_idx)
        valid = set(range(start, start + n)) - set(image_idx)
        for item in list(indices.copy()):
            free = list(valid)
            sims = [cosine(state[item], state[v]) for v in free]
            chosen = [free[k] for k in sorted(range(len(free)), key=lambda k: sims[k])[:top]]
            indices.update(chosen)
            valid.difference_update(chosen)
        indices.difference_update(query_idx)
        out.append(sorted(i - start for i in indices))
    return out


def test_python_set_order_is_cpythons():
    # visual pivots at 610, 35, 600 and text pivots at 611, 40, ...: the set interleaves them by position mod 32
    positions = torch.tensor([[610, 35, 600, 611, 40, 45, 67, 99], [36, 4, 68, 100, 0, 0, 0, 0]])
    valid = torch.tensor([[True] * 8, [True] * 4 + [False] * 4])
    order = dedup.python_set_order(positions, valid)
    assert order[0].tolist() == [0, 3, 1, 6, 7, 4, 5, 2]          # 610, 611, 35, 67, 99, 40, 45, 600
    assert order[1].tolist() == [3, 0, 1, 2, 4, 5, 6, 7]          # 100, 36, 4, 68, then the missing text pivots
    assert [positions[0, j].item() for j in order[0]] == list(set(positions[0].tolist()).copy())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_keep", [8, 16, 24])
def test_dart_python_set_order_keeps_what_the_official_code_keeps(seed, n_keep):
    x = selection_inputs(seed)                                     # 40 visual, 6 text slots, the last row padded
    start = 35
    vpos = (start + torch.arange(40)).expand(2, -1)
    tpos = (start + 40 + torch.arange(6)).expand(2, -1)
    kept = _dart(x, n_keep, exact_budget=False, pivot_order="python_set", visual_positions=vpos, text_positions=tpos)
    want = official_dart(x["visual_keys"], x["normed_features"], x["normed_text"], x["text_mask"], x["text_keys"],
                         n_keep, start, tpos.tolist())
    assert_sorted_unique(kept, 4 + 8 * (n_keep // 8))
    assert kept.tolist() == want


def test_dart_visiting_order_changes_the_kept_set():
    differs = 0
    for seed in range(6):
        x = selection_inputs(seed)
        vpos, tpos = (35 + torch.arange(40)).expand(2, -1), (75 + torch.arange(6)).expand(2, -1)
        official = _dart(x, 16, exact_budget=False, pivot_order="python_set", visual_positions=vpos, text_positions=tpos)
        differs += not torch.equal(official, _dart(x, 16, exact_budget=False))
    assert differs                                                  # the order is not a detail
    with pytest.raises(ValueError, match="needs visual_positions and text_positions"):
        _dart(selection_inputs(0), 16, pivot_order="python_set")
    with pytest.raises(ValueError, match="pivot_order must be one of"):
        _dart(selection_inputs(0), 16, pivot_order="sorted")


def test_dart_official_order_in_the_model_keeps_the_official_set(tiny_models):
    """On tiny LLaVA: the engine's kept set equals the official rule run on the model's own layer-1 keys and
    normed layer-2 inputs; and it passes the mask-reference oracle."""
    from conftest import make_inputs
    from reference import check_mask_reference

    import tpx
    from tpx.methods import variant
    from tpx.models import adapter_for, layout
    from tpx.models.attention import attention_keys

    model, processor = tiny_models["sdpa"]
    official = variant("dart", "dart_official", defaults={"exact_budget": False, "pivot_order": "python_set"})
    inputs = make_inputs(processor, 1, seed=12)
    with torch.no_grad():
        with tpx.pruning(model, "dart", retention=0.25, exact_budget=False, pivot_order="python_set") as run:
            model(**inputs)
        out = model(**inputs, output_hidden_states=True)
        decoder = adapter_for(model).decoder
        hidden = out.hidden_states
        pe = decoder.rotary(hidden[1], torch.arange(hidden[1].shape[1])[None])
        keys = attention_keys(decoder.layers[1], hidden[1], pe)[0]
        normed = decoder.final_norm(hidden[2])[0]
    visual = layout(model, inputs).positions[0]
    text = torch.arange(int(visual[-1]) + 1, inputs["input_ids"].shape[1])
    want = official_dart(keys[visual][None], normed[visual][None], normed[text][None],
                         torch.ones(1, len(text), dtype=torch.bool), keys[text][None], 36, int(visual[0]),
                         [text.tolist()])
    assert run.trace[0].kept.tolist() == want and run.trace[0].n_keep == 36
    check_mask_reference(model, make_inputs(processor, 2, seed=13), official, "L", 0.25, 3)


def _divprune_reference(feats, n_keep):
    """Greedy max–min diversity from the paper's description, one token at a time."""
    out = []
    for f in feats:
        n = f.shape[0]
        d = [[1 - cosine(f[i], f[j]) for j in range(n)] for i in range(n)]
        first = max(range(n), key=lambda i: min(d[i][j] for j in range(n) if j != i))
        kept = [first]
        while len(kept) < n_keep:
            kept.append(max((i for i in range(n) if i not in kept), key=lambda i: min(d[i][s] for s in kept)))
        out.append(sorted(kept))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_keep", [1, 7, 20])
def test_divprune_matches_a_plain_reference(seed, n_keep):
    feats = selection_inputs(seed, n=30)["features"]
    kept = dedup.max_min_diversity(feats, n_keep)
    assert_sorted_unique(kept, n_keep)
    assert kept.tolist() == _divprune_reference(feats, n_keep)


def test_divprune_never_repicks_and_keeps_one_of_each_duplicate():
    distinct = torch.randn(1, 6, 5, generator=torch.Generator().manual_seed(4))
    feats = distinct.repeat(1, 4, 1)                                           # every token 4 times
    kept = dedup.max_min_diversity(feats, 6)
    assert torch.equal((kept % 6).sort(1).values, torch.arange(6)[None])
    assert_sorted_unique(dedup.max_min_diversity(feats, 24), 24)                   # all duplicates left: still unique
