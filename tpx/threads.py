"""How many torch intra-op threads a process uses, chosen on purpose rather than left to torch's default.

torch starts one intra-op thread per visible core. For a small model on a CPU (the organism: 7.8 MB of
weights, matrices of 192 × 192) every operator is a few microseconds of work split across threads that must all
finish before the next operator starts; when the cores are shared (other processes, a training job, several
evaluation processes), one descheduled thread stalls every operator. `benchmarks/throughput.py` measures the
threads × processes table this rule is drawn from (see the README's "Threads" paragraph).

The rule, in order: an explicit `threads` argument; else `OMP_NUM_THREADS` when the user set it (torch already
reads it); else, for a model on an accelerator, torch's default (its threads only feed the host); else, for a
small model on the CPU, one thread; else the usable cores divided among the processes on this machine.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["SMALL_MODEL_PARAMETERS", "apply", "available_cores", "choose"]

# below this many parameters a model's operators are too small to share among threads (the organism has
# about 2 M; LLaVA-1.5-7B 7 B). Measured in benchmarks/throughput.py: see the README.
SMALL_MODEL_PARAMETERS = 100_000_000


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` restrict)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _check(threads: Any, name: str) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {threads!r}")
    return threads


def choose(model: Any = None, threads: int | None = None, *, processes: int = 1) -> int:
    """The intra-op thread count for one process running `model`; see the module docstring for the rule.

    Args:
        model: a loaded model (its parameter count and device decide), or None to decide by the cores alone.
        threads: an explicit count, ≥ 1, which always wins (`--threads` on the command line).
        processes: evaluation processes sharing this machine (`accelerate launch --num_processes`), ≥ 1.

    Raises:
        ValueError: for a `threads` or `processes` that is not an int ≥ 1, or an `OMP_NUM_THREADS` that is not
            a positive integer.
    """
    _check(processes, "processes")
    if threads is not None:
        return _check(threads, "threads")
    env = os.environ.get("OMP_NUM_THREADS")
    if env:
        try:
            return _check(int(env), "OMP_NUM_THREADS")
        except ValueError as err:
            raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {env!r}") from err
    if model is not None:
        first = next(iter(model.parameters()), None)
        if first is not None and first.device.type != "cpu":
            return torch.get_num_threads()
        if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
            return 1
    return max(1, available_cores() // processes)


def apply(model: Any = None, threads: int | None = None, *, processes: int = 1) -> int:
    """Set torch's intra-op threads to `choose(model, threads, processes=processes)`; returns the count."""
    n = choose(model, threads, processes=processes)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
