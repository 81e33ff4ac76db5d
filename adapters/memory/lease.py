"""A Lease in memory, expiring against the injected clock; shared by instances in one process."""

from __future__ import annotations

import anyio

from ports.clock import Clock


class InMemoryLease:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.holder: int | None = None
        self.expires_at = 0.0
        self.last_token = 0
        self.fail = False  # simulate losing the store
        self.history: list[tuple[float, int]] = []  # (time, token) of every acquisition

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("in-memory lease: store unreachable (simulated)")

    def _expire(self) -> None:
        if self.holder is not None and self._clock.monotonic() >= self.expires_at:
            self.holder = None

    async def acquire(self, ttl_s: float) -> int | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        self._expire()
        if self.holder is not None:
            return None
        self.last_token += 1
        self.holder = self.last_token
        self.expires_at = self._clock.monotonic() + ttl_s
        self.history.append((self._clock.monotonic(), self.holder))
        return self.holder

    async def renew(self, token: int, ttl_s: float) -> bool:
        await anyio.lowlevel.checkpoint()
        self._check()
        self._expire()
        if self.holder != token:
            return False
        self.expires_at = self._clock.monotonic() + ttl_s
        return True

    async def release(self, token: int) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        if self.holder == token:
            self.holder = None
