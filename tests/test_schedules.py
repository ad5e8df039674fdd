"""Multi-stage schedules (SparseVLM, PyramidDrop) against the papers' counts."""

from __future__ import annotations

import pytest

from tpx import schedules


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
