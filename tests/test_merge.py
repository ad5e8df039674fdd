"""Merging selectors (VisionZip, SparseVLM recycling): known answers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_sorted_unique

from tpx import merge, select


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
        assert_sorted_unique(m.index, n_keep)
        assert m.features.shape == (2, n_keep, 8)
        assert torch.isin(cls.topk(n_dom, 1).indices[0], m.index[0]).all()
    four_d = merge.dominant_contextual(cls, 64, keys.view(2, 576, 2, 8).transpose(1, 2), feats)
    assert_sorted_unique(four_d.index, 64)
    with pytest.raises(ValueError, match="dominant_share"):
        merge.dominant_contextual(cls, 64, keys, feats, dominant_share=1.2)


def test_sparsevlm_recycling_counts_inside_the_budget():
    g = torch.Generator().manual_seed(6)
    s, feats = torch.rand(2, 100, generator=g), torch.randn(2, 100, 4, generator=g)
    assert torch.equal(merge.topk_recycle(s, 30, feats), select.topk(s, 30))
    m = merge.topk_recycle(s, 30, feats, recycle=True)
    assert_sorted_unique(m.index, 30)
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
