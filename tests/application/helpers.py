"""Builders shared by the use-case tests."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from domain.market import Quote

T0 = 1_700_000_000 * 1_000_000_000


def quote(symbol: str, bid: float, ask: float, ts_ns: int = T0, exchange: str = "V") -> Quote:
    return Quote(symbol, bid, 100, ask, 200, exchange, exchange, ("R",), "C", ts_ns, ts_ns)


async def eventually(predicate: Callable[[], bool], step_s: float = 0.01) -> None:
    """Wait until ``predicate()`` holds, re-checking every ``step_s`` of VIRTUAL time (the
    MockClock jumps when all tasks wait, so this costs no real time); the caller's fail_after
    bounds it."""
    while not predicate():  # noqa: ASYNC110 - polling costs nothing in virtual time
        await anyio.sleep(step_s)
