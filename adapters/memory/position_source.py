"""A PositionSource whose answer tests set directly, and which can be made to fail."""

from __future__ import annotations

from collections.abc import Iterable

from domain.errors import PositionSourceError
from domain.symbols import validate_symbols


class StaticPositionSource:
    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.symbols: set[str] = set(validate_symbols(symbols))
        self.fail = False
        self.calls = 0

    async def open_position_symbols(self) -> frozenset[str]:
        self.calls += 1
        if self.fail:
            raise PositionSourceError("static position source: failing (simulated outage)")
        return frozenset(self.symbols)
