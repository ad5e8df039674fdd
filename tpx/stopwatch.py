"""Laps of device work timed without stalling the device: CUDA events on a GPU, `time.perf_counter` on the CPU.

The engine can time what each pruning stage spends choosing its tokens (ingredients, scorer, selector) inside an
ordinary forward or `generate` call (`tpx.pruning(..., timing=True)`). On a GPU, a `perf_counter` pair would
need a synchronisation on each side, which changes the very prefill it measures; CUDA events are recorded on the
stream instead and read (one synchronisation) only when the time is asked for. On the CPU, work is synchronous and
`perf_counter` is exact. Other accelerators synchronise around the lap (`torch.accelerator`), which is correct
but not free; none is measured here.
"""

from __future__ import annotations

import time

import torch

__all__ = ["Lap"]


class Lap:
    """One timed interval of work on `device`: `start()`, the work, `stop()`; then `ms` (milliseconds).

    Args:
        device: where the work runs (its type picks the clock).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
        self._t0 = self._t1 = None

    def start(self) -> Lap:
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record(torch.cuda.current_stream(self.device))
        else:
            self._sync()
            self._t0 = time.perf_counter()
        return self

    def stop(self) -> Lap:
        if self._events is not None:
            self._events[1].record(torch.cuda.current_stream(self.device))
        else:
            self._sync()
            self._t1 = time.perf_counter()
        return self

    @property
    def ms(self) -> float:
        """Milliseconds between `start` and `stop` (on a GPU this waits for the work to finish).

        Raises:
            RuntimeError: if the lap was not started and stopped.
        """
        if self._events is not None:
            self._events[1].synchronize()
            return float(self._events[0].elapsed_time(self._events[1]))
        if self._t0 is None or self._t1 is None:
            raise RuntimeError("the lap was not started and stopped")
        return 1e3 * (self._t1 - self._t0)

    def _sync(self) -> None:
        if self.device.type not in ("cpu", "cuda") and hasattr(torch, "accelerator"):
            torch.accelerator.synchronize(self.device)
