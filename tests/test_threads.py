"""tpx.threads: an explicit count wins, then OMP_NUM_THREADS, then one thread for a small model on the CPU,
else the usable cores shared among the processes."""

from __future__ import annotations

import pytest
import torch

from tpx import threads


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_small_cpu_model_gets_one_thread(no_env):
    model = torch.nn.Linear(192, 192)
    assert threads.choose(model) == 1
    assert threads.choose(model, processes=4) == 1


def test_large_model_shares_the_cores_among_processes(no_env, monkeypatch):
    monkeypatch.setattr(threads, "SMALL_MODEL_PARAMETERS", 100)  # a Linear(192, 192) then counts as large
    model = torch.nn.Linear(192, 192)
    assert threads.choose(model) == 8
    assert threads.choose(model, processes=2) == 4
    assert threads.choose(model, processes=16) == 1
    assert threads.choose(None, processes=3) == 2


def test_model_off_the_cpu_keeps_torchs_default(no_env):
    model = torch.nn.Linear(4, 4, device="meta")
    assert threads.choose(model) == torch.get_num_threads()


def test_explicit_count_and_environment_win(no_env, monkeypatch):
    model = torch.nn.Linear(4, 4)
    assert threads.choose(model, 3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose(model) == 5
    assert threads.choose(model, 2) == 2  # the argument beats the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive integer, got 'many'"):
        threads.choose(model)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_counts_are_errors(no_env, bad):
    with pytest.raises(ValueError, match="threads must be an int ≥ 1"):
        threads.choose(None, bad)
    with pytest.raises(ValueError, match="processes must be an int ≥ 1"):
        threads.choose(None, processes=bad)


def test_apply_sets_torch(no_env, restore_threads):
    assert threads.apply(torch.nn.Linear(4, 4)) == 1 and torch.get_num_threads() == 1
    assert threads.apply(None, 2) == 2 and torch.get_num_threads() == 2


def test_available_cores_is_the_affinity():
    import os

    assert threads.available_cores() == len(os.sched_getaffinity(0))
