"""Clocks implementing ports.clock.Clock on anyio's event-loop clock."""

from __future__ import annotations

import time

import anyio


class SystemClock:
    """Production: the event loop's monotonic clock and the system's wall clock."""

    def monotonic(self) -> float:
        return anyio.current_time()

    def now_ns(self) -> int:
        return time.time_ns()


class VirtualClock:
    """Tests: wall time that advances with the event loop's clock (so trio's MockClock drives
    both), anchored at ``epoch_ns`` when the loop's clock reads 0."""

    def __init__(self, epoch_ns: int = 1_700_000_000 * 1_000_000_000) -> None:
        self.epoch_ns = epoch_ns

    def monotonic(self) -> float:
        return anyio.current_time()

    def now_ns(self) -> int:
        return self.epoch_ns + int(anyio.current_time() * 1_000_000_000)
