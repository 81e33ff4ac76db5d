"""Spy adapters: they record every call and apply everything, with NO guarantee of their own.

The in-memory fakes in ``adapters/memory`` keep their port's contract (the cache refuses an older
price by itself), so a use-case test run on them sees the adapter's guard, not the use case's.
A spy does not re-implement any guard: whatever the use case hands it is what reaches the store.
Tests that pin a use case's own guarantee use these.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import anyio

from domain.price import Price


class SpyPriceCache:
    """A PriceCache that applies every price it is given, in order, even an older one.

    ``batches`` holds each successful ``put_many`` batch; ``values`` the last price written per
    symbol. ``gate`` (when set) makes the next write wait for it; ``fail_next`` makes that many
    next writes raise ``ConnectionError`` (after the gate).
    """

    def __init__(self, ttl_s: float = 300.0) -> None:
        self._ttl_s = ttl_s
        self.batches: list[list[Price]] = []
        self.values: dict[str, Price] = {}
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()  # set when a write is waiting at the gate
        self.fail_next = 0
        self.failed_batches: list[list[Price]] = []

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def written(self) -> list[Price]:
        """Every price written, in write order."""
        return [p for batch in self.batches for p in batch]

    async def put_many(self, prices: Sequence[Price]) -> Sequence[Price]:
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
