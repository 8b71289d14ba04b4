"""Seconds per phase of a run, without stalling the GPU queue."""

from __future__ import annotations

import contextlib
import time

import torch


class PhaseTimer:
    """Seconds per phase. On CUDA, events recorded around each phase are read once at the end.

    Synchronising at the end of every phase would stall the GPU queue at every step; CUDA events
    time the GPU work without waiting for it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._seconds: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        """Seconds per phase; on CUDA this waits once for the recorded work to finish."""
        if self._events:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._events:
                self._seconds[name] = self._seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
            self._events.clear()
        return dict(self._seconds)
