"""Timed laps on the CPU (perf_counter). The CUDA-event path needs a GPU, which the test machines lack."""

import time

import pytest
import torch

from tpx.stopwatch import Lap


def test_cpu_lap_covers_the_work_between_start_and_stop():
    lap = Lap("cpu").start()
    time.sleep(0.02)
    lap.stop()
    assert lap.ms >= 20.0  # a lower bound: sleep never returns early


def test_a_lap_not_stopped_is_an_error():
    with pytest.raises(RuntimeError, match="not started and stopped"):
        _ = Lap(torch.device("cpu")).start().ms

