"""Spatial statistics of kept positions, on hand-made selections with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from tpx import probes
from tpx.analysis import spatial


def test_keep_frequency_counts_share_of_samples():
    kept = torch.tensor([[0, 3], [0, 1]])  # 2x2 grid
    assert spatial.keep_frequency(kept, (2, 2)).tolist() == [[1.0, 0.5], [0.0, 0.5]]


def test_bottom_rows_only_versus_uniform():
    grid = (4, 4)
    bottom = torch.tensor([[12, 13, 14, 15]])
    stats = spatial.spatial_stats(bottom, grid)
    assert stats["mean_row"] == 1.0 and stats["mean_col"] == 0.5
    assert stats["coverage_2x2"] == 0.5           # only the two bottom windows
    assert stats["entropy"] == pytest.approx(math.log(4) / math.log(16))
    spread = torch.tensor([[0, 3, 12, 15]])       # the four corners
    s2 = spatial.spatial_stats(spread, grid)
    assert s2["mean_row"] == 0.5 and s2["coverage_2x2"] == 1.0
    # 3x3 windows on a 4x4 grid: 4 windows (edge ones smaller); the corners hit all four
    assert s2["coverage_3x3"] == 1.0 and stats["coverage_3x3"] == 0.5


def test_uniform_random_selection_has_high_entropy():
    g = torch.Generator().manual_seed(0)
    kept = torch.stack([torch.randperm(144, generator=g)[:36] for _ in range(400)])
    stats = spatial.spatial_stats(kept, (12, 12))
    assert stats["entropy"] > 0.99 and abs(stats["mean_row"] - 0.5) < 0.02


def test_rope_decay_starts_at_one_and_decays():
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2).float() / 64))
    curve = spatial.rope_decay(inv_freq, torch.tensor([0, 1, 10, 100, 500]))
    assert curve[0] == pytest.approx(1.0)
    assert curve[1] < curve[0] and curve[3] < curve[2] < curve[1]


def test_attention_by_distance_bins_means():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    dist = torch.tensor([[0, 1, 2, 3]])
    centres, mean = spatial.attention_by_distance(scores, dist, n_bins=2)
    assert mean.tolist() == [1.5, 3.5] and centres.shape == (2,)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"kept indices must lie in \[0, 4\)"):
        spatial.keep_frequency(torch.tensor([[4]]), (2, 2))
    with pytest.raises(ValueError, match="same shape"):
        spatial.attention_by_distance(torch.ones(1, 3), torch.ones(1, 4))


def test_largest_distance_falls_in_the_last_bin():
    # float32 edges: max + 1e-6 rounds back to max at this magnitude; the last bin must still hold it
    scores = torch.ones(1, 4)
    centres, mean = spatial.attention_by_distance(scores, torch.tensor([[151, 100, 50, 10]]), n_bins=3)
    assert mean.tolist() == [1.0, 1.0, 1.0]


def test_kept_matrix_and_frequency_maps():
    import pandas as pd

    df = pd.DataFrame({"method": ["fastv", "fastv", "random", "unpruned"], "retention": [0.5, 0.5, 0.5, 1.0],
                       "kept": [[2, 3], [1, 3], [0, 1], None]})
    maps = spatial.frequency_maps(df, 0.5, (2, 2))
    assert list(maps) == ["fastv", "random"]
    assert maps["fastv"].tolist() == [[0.0, 0.5], [0.5, 1.0]]
    assert list(spatial.frequency_maps(df, 0.5, (2, 2), methods=["random"])) == ["random"]
    with pytest.raises(ValueError, match="no rows for"):
        spatial.frequency_maps(df, 0.25, (2, 2), methods=["fastv"])
    with pytest.raises(ValueError, match="same number"):
        spatial.kept_matrix([[0, 1], [2]])
    with pytest.raises(ValueError, match="unpruned rows"):
        spatial.kept_matrix([[0, 1], None])


def test_visual_distances_left_padded():
    ids = torch.tensor([[0, 0, 5, 9, 9, 7, 8], [0, 5, 9, 9, 7, 7, 8]])  # 9 = image token, 0 = padding
    positions = (ids == 9).nonzero()[:, 1].view(2, -1)
    assert probes.visual_distances(ids, positions).tolist() == [[3, 2], [4, 3]]
    with pytest.raises(ValueError, match=r"positions must be \(B, N\)"):
        probes.visual_distances(ids, positions[:1])


def test_normalised_frequency_equals_keep_frequency_on_one_grid():
    g = torch.Generator().manual_seed(0)
    kept = torch.stack([torch.randperm(12, generator=g)[:5] for _ in range(7)])
    mine = spatial.normalised_frequency(kept.tolist(), [((3, 4),)] * 7, (3, 4))
    assert torch.allclose(mine, spatial.keep_frequency(kept, (3, 4)))


def test_normalised_frequency_pools_segments_by_token_count():
    # base 2×2 then crops 4×4 (N = 20), both spanning the image: keep the base's top-left token and the crops'
    # top-left 2×2 block: the top-left quarter of the image is fully kept, the rest never
    kept = [[0, 4, 5, 8, 9]]
    freq = spatial.normalised_frequency(kept, [((2, 2), (4, 4))], (4, 4))
    assert torch.allclose(freq[:2, :2], torch.ones(2, 2)) and float(freq.sum() - freq[:2, :2].sum()) == 0.0
    # a position-blind rule (every token with the same probability) gives n_keep / N everywhere
    g = torch.Generator().manual_seed(1)
    many = [torch.randperm(20, generator=g)[:5].tolist() for _ in range(4000)]
    blind = spatial.normalised_frequency(many, [((2, 2), (4, 4))] * 4000, (4, 4))
    assert torch.allclose(blind, torch.full((4, 4), 0.25), atol=0.03)


def test_map_grid_and_row_profile():
    assert spatial.map_grid([((12, 12),), ((12, 12),)]) == ((12, 12), False)
    assert spatial.map_grid([((4, 4), (8, 6))]) == ((8, 6), True)
    assert spatial.map_grid([((3, 3),), ((3, 5),)]) == ((3, 5), True)
    scores = torch.arange(20.0)[None]  # base 2×2 (rows 0-1: 0,1 / 2,3) then crops 4×4 (rows 4-7, 8-11, ...)
    profile = spatial.row_profile(scores, [(2, 2), (4, 4)], 4)
    # top row: base row 0 (mean 0.5, 4 of 20 tokens over 2 rows each) and crop row 0 (mean 5.5)
    assert profile[0].item() == pytest.approx((4 * 0.5 + 16 * 5.5) / 20)
    assert torch.allclose(spatial.row_profile(scores[:, :4], [(2, 2)], 2), torch.tensor([0.5, 2.5]))
    with pytest.raises(ValueError, match="hold 4 tokens"):
        spatial.row_profile(scores, [(2, 2)], 2)


def test_last_token_attention_on_a_tiny_model():
    from tpx.data import load_samples
    from tpx.models import load

    model, processor = load("tiny")
    samples = load_samples("organism", n=1, tasks=["exist", "count", "read"])
    scores, dist = probes.last_token_attention(model, processor, samples, layer=1, batch_size=2, progress=False)
    assert scores.shape == dist.shape == (3, 144)
    assert bool((scores >= 0).all()) and bool((scores.sum(1) <= 1 + 1e-5).all())
    assert bool((dist[:, :-1] - dist[:, 1:] == 1).all())  # consecutive visual tokens, one position apart
    inv_freq = probes.rope_frequencies(model)
    assert inv_freq.ndim == 1 and inv_freq[0] == pytest.approx(1.0)
