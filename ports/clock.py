from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Time, as the application sees it. Tests drive it with trio's MockClock."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (the event loop's: ``anyio.current_time()``).

        Drives timeouts, backoff and "time since". Never goes backwards; not wall time.
        """
        ...

    def now_ns(self) -> int:
        """Wall-clock time, nanoseconds since the Unix epoch, UTC.

        Stamps receive times and measures the age of prices against venue timestamps.
        """
        ...
