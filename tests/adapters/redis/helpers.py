"""Builders shared by the Redis adapter tests."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from domain.price import Price

T0 = 1_700_000_000 * 1_000_000_000
_counter = itertools.count()


def unique(stem: str = "R") -> str:
    """A symbol no other test of the session uses (servers are shared)."""
    return f"{stem}{next(_counter)}"


def price(symbol: str, ts_ns: int, bid: float = 150.25, ask: float = 150.27) -> Price:
    return Price(symbol, bid, ask, (bid + ask) / 2, ts_ns, "V")


async def receive(prices: AsyncIterator[Price], n: int, timeout_s: float = 5.0) -> list[Price]:
    got: list[Price] = []
    with anyio.fail_after(timeout_s):
        async for p in prices:
            got.append(p)
            if len(got) == n:
                break
    return got


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0, step_s: float = 0.01
) -> None:
    """Poll ``predicate`` until true, failing after ``timeout_s`` (a condition, not a sleep)."""
    with anyio.fail_after(timeout_s):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(step_s)


async def in_thread(fn: Callable[[], object]) -> object:
    """Run a blocking redis-py call of the test (assertions on raw state) off the event loop."""
    return await anyio.to_thread.run_sync(fn)
