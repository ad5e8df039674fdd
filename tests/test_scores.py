"""Scorers on hand-made tensors where the right answer is known."""

from __future__ import annotations

import torch

from tpx import scores


def test_cls_attention_is_the_head_mean():
    att = torch.tensor([[[0.1, 0.6, 0.3], [0.3, 0.2, 0.5]]])                  # (B=1, H=2, N=3)
    torch.testing.assert_close(scores.cls_attention(att), torch.tensor([[0.2, 0.4, 0.4]]))


def test_text_raters_are_the_text_tokens_above_mean_relevance():
    # 3 text tokens over 2 visual tokens, one head; token 0 looks at the image most, token 1 least
    att = torch.tensor([[[[0.8, 0.0], [0.05, 0.05], [0.1, 0.3]]]])            # (1, 1, 3, 2)
    # relevance = row means 0.4, 0.05, 0.2; mean 0.2167 -> only token 0 rates
    torch.testing.assert_close(scores.text_rater_attention(att, torch.ones(1, 3, dtype=torch.bool)), torch.tensor([[0.8, 0.0]]))
    # padding is ignored: with token 0 masked out, relevance 0.05 and 0.2 -> token 2 rates
    mask = torch.tensor([[False, True, True]])
    torch.testing.assert_close(scores.text_rater_attention(att, mask), torch.tensor([[0.1, 0.3]]))


def test_text_raters_fall_back_to_all_tokens_when_relevance_is_flat():
    att = torch.full((2, 3, 4, 5), 0.1)
    out = scores.text_rater_attention(att, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(out, torch.full((2, 5), 0.1))


def test_key_norm_is_the_l1_norm():
    keys = torch.tensor([[[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0]]])
    torch.testing.assert_close(scores.key_norm(keys), torch.tensor([[3.0, 1.0, 3.0]]))


def test_minmax_maps_rows_to_unit_range_and_flat_rows_to_zero():
    x = torch.tensor([[2.0, 4.0, 3.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(scores.minmax(x), torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    mask = torch.tensor([[True, False, True], [True, True, True]])
    torch.testing.assert_close(scores.minmax(x, mask)[0, [0, 2]], torch.tensor([0.0, 1.0]))


def test_last_token_uniqueness_is_one_minus_cosine():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    last = torch.tensor([[5.0, 0.0]])
    torch.testing.assert_close(scores.last_token_uniqueness(feats, last), torch.tensor([[0.0, 1.0, 2.0]]))


def test_value_aware_attention_weights_attention_by_value_l1_norm():
    att = torch.tensor([[[0.5, 0.25, 0.25], [0.3, 0.3, 0.4]]])                 # (B=1, H=2, N=3): mean .4 .275 .325
    values = torch.tensor([[[1.0, -1.0], [0.0, 4.0], [0.0, 0.0]]])            # L1 norms 2, 4, 0
    torch.testing.assert_close(scores.value_aware_attention(att, values), torch.tensor([[0.8, 1.1, 0.0]]))
