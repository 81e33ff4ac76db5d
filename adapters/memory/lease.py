"""A Lease in memory, expiring against the injected clock; shared by instances in one process."""

from __future__ import annotations

import itertools

import anyio

from ports.clock import Clock
from ports.lease import Acquired


class InMemoryLease:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.holder: str | None = None
        self.expires_at = 0.0
        self.last_holder: str | None = None  # survives expiry; lost by ``lose_data``
        self.fail = False  # simulate losing the store
        self.history: list[tuple[float, str]] = []  # (time, token) of every acquisition
        self._terms = itertools.count(1)
        self._released = anyio.Event()

    def _check(self) -> None:
        if self.fail:
            raise ConnectionError("in-memory lease: store unreachable (simulated)")

    def _expire(self) -> None:
        if self.holder is not None and self._clock.monotonic() >= self.expires_at:
            self.holder = None

    def lose_data(self) -> None:
        """Simulate FLUSHALL or an empty restart of the store: the lease and its history go."""
        self.holder = None
        self.last_holder = None

    async def acquire(self, ttl_s: float) -> Acquired | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        self._expire()
        if self.holder is not None:
            return None
        unknown = self.last_holder is None
        # Unique per term; a store that loses its data never repeats one.
        self.holder = self.last_holder = f"memory:{id(self):x}:{next(self._terms)}"
        self.expires_at = self._clock.monotonic() + ttl_s
        self.history.append((self._clock.monotonic(), self.holder))
        return Acquired(self.holder, unknown_history=unknown)

    async def renew(self, token: str, ttl_s: float) -> bool:
        await anyio.lowlevel.checkpoint()
        self._check()
        self._expire()
        if self.holder != token:
            return False
        self.expires_at = self._clock.monotonic() + ttl_s
        return True

    async def release(self, token: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._check()
        if self.holder == token:
            self.holder = None
            self._released.set()

    async def wait_released(self, timeout_s: float) -> None:
        self._check()
        with anyio.move_on_after(timeout_s):
            await self._released.wait()
        if self._released.is_set():
            self._released = anyio.Event()  # consumed: one release wakes one waiter
