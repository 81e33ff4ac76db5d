"""A PositionSource whose answer tests set directly, and which can be made to fail or be slow."""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from domain.errors import PositionSourceError
from domain.symbols import validate_symbols


class StaticPositionSource:
    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.symbols: set[str] = set(validate_symbols(symbols))
        self.fail = False
        self.error: Exception | None = None  # raised as is: a source with a bug
        self.delay_s = 0.0  # each read takes this long
        self.calls = 0

    async def open_position_symbols(self) -> frozenset[str]:
        self.calls += 1
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if self.fail:
            raise PositionSourceError("static position source: failing (simulated outage)")
        return frozenset(self.symbols)
