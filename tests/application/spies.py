"""Spy adapters: they record every call and apply everything, with NO guarantee of their own.

The in-memory fakes in ``adapters/memory`` keep their port's contract (the cache refuses an older
price by itself), so a use-case test run on them sees the adapter's guard, not the use case's.
A spy does not re-implement any guard: whatever the use case hands it is what reaches the store.
Tests that pin a use case's own guarantee use these.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import anyio

from domain.price import Price
from ports.lease import Acquired


class SpyPriceCache:
    """A PriceCache that applies every price it is given, in order, even an older one.

    ``batches`` holds each successful ``put_many`` batch; ``values`` the last price written per
    symbol. ``gate`` (when set) makes the next write wait for it; ``fail_next`` makes that many
    next writes raise ``ConnectionError`` (after the gate). ``latency_s`` makes every write take
    that long (virtual time, before the gate); ``attempts_at`` holds the loop time at which each
    write was asked for, failed or not.
    """

    def __init__(self, ttl_s: float = 300.0) -> None:
        self._ttl_s = ttl_s
        self.batches: list[list[Price]] = []
        self.values: dict[str, Price] = {}
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()  # set when a write is waiting at the gate
        self.fail_next = 0
        self.failed_batches: list[list[Price]] = []
        self.latency_s = 0.0
        self.attempts_at: list[float] = []

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def written(self) -> list[Price]:
        """Every price written, in write order."""
        return [p for batch in self.batches for p in batch]

    async def put_many(self, prices: Sequence[Price]) -> Sequence[Price]:
        self.attempts_at.append(anyio.current_time())
        if self.latency_s:
            await anyio.sleep(self.latency_s)
        gate = self.gate
        if gate is not None:
            self.entered.set()
            await gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            self.failed_batches.append(list(prices))
            raise ConnectionError("spy cache: write failing (scripted)")
        self.batches.append(list(prices))
        for price in prices:
            self.values[price.symbol] = price
        return list(prices)

    async def get(self, symbol: str) -> Price | None:
        return self.values.get(symbol)

    async def get_many(self, symbols: Collection[str]) -> dict[str, Price]:
        return {s: self.values[s] for s in symbols if s in self.values}


class SpyLease:
    """A Lease that answers as scripted and keeps no lease of its own: no expiry, no token
    check, so the fencing under test is the election's alone.

    ``calls`` holds ``(time, "acquire" | "renew" | "release" | "wait_released", token, ttl_s or
    timeout_s)`` in call order (a release is recorded once done: a cancelled caller never gets
    there). ``wait_released`` waits its whole timeout: no release ever wakes it; with
    ``fail_waits`` it raises ``ConnectionError`` (the other calls answer). ``grant``: acquire
    answers a new token (``spy:1``, ``spy:2``...) rather than None; ``unknown_history`` goes
    with it. ``acquire_delay_s``/``renew_delay_s``/``release_delay_s`` (``math.inf``: never
    answers) delay each answer; ``fail`` makes every call raise ``ConnectionError`` (after the
    delay); ``renew_answer`` is what a renewal answers.
    """

    ERROR = "spy lease: store unreachable (scripted)"

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str | None, float | None]] = []
        self.grant = True
        self.unknown_history = False
        self.renew_answer = True
        self.fail = False
        self.fail_waits = False
        self.acquire_delay_s = 0.0
        self.renew_delay_s = 0.0
        self.release_delay_s = 0.0
        self._terms = 0

    def times(self, what: str) -> list[float]:
        return [t for t, op, _, _ in self.calls if op == what]

    async def _answer_after(self, delay_s: float) -> None:
        await (anyio.sleep_forever() if delay_s == math.inf else anyio.sleep(delay_s))
        if self.fail:
            raise ConnectionError(self.ERROR)

    async def acquire(self, ttl_s: float) -> Acquired | None:
        self.calls.append((anyio.current_time(), "acquire", None, ttl_s))
        await self._answer_after(self.acquire_delay_s)
        if not self.grant:
            return None
        self._terms += 1
        return Acquired(f"spy:{self._terms}", unknown_history=self.unknown_history)

    async def renew(self, token: str, ttl_s: float) -> bool:
        self.calls.append((anyio.current_time(), "renew", token, ttl_s))
        await self._answer_after(self.renew_delay_s)
        return self.renew_answer

    async def release(self, token: str) -> None:
        await anyio.lowlevel.checkpoint()
        await self._answer_after(self.release_delay_s)
        self.calls.append((anyio.current_time(), "release", token, None))

    async def wait_released(self, timeout_s: float) -> None:
        self.calls.append((anyio.current_time(), "wait_released", None, timeout_s))
        await self._answer_after(0.0)
        if self.fail_waits:
            raise ConnectionError(self.ERROR)
        await anyio.sleep(timeout_s)
