"""Builders shared by the Redis adapter tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio

from domain.price import Price

T0 = 1_700_000_000 * 1_000_000_000
_counter = itertools.count()


def unique(stem: str = "R") -> str:
    """A symbol no other test of the session uses (servers are shared)."""
    return f"{stem}{next(_counter)}"


def price(symbol: str, ts_ns: int, bid: float = 150.25, ask: float = 150.27) -> Price:
    return Price(symbol, bid, ask, (bid + ask) / 2, ts_ns, "IEX", "V", "V")


async def in_thread(fn: Callable[[], object]) -> object:
    """Run a blocking redis-py call of the test (assertions on raw state) off the event loop."""
    return await anyio.to_thread.run_sync(fn)
