"""A token bucket: at most ``burst`` calls at once, ``rate_per_s`` sustained. Pure: the caller
passes the time (monotonic seconds) and does the waiting."""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now if self._last is None else max(self._last, now)

    def wait_s(self, now: float) -> float:
        """Seconds until a call may be made (0: now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s

    def take(self, now: float) -> None:
        """Count one call made at ``now`` (after :meth:`wait_s` said 0)."""
        self._refill(now)
        self._tokens -= 1
