"""A PositionSource whose answer tests set directly, and which can be made to fail or be slow."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import anyio

from domain.assets import AssetClass, classify
from domain.errors import PositionSourceError
from domain.symbols import validate_symbols


class StaticPositionSource:
    """``symbols`` are classified by shape unless ``classes`` names their class."""

    def __init__(
        self, symbols: Iterable[str] = (), classes: Mapping[str, AssetClass] | None = None
    ) -> None:
        self.symbols: set[str] = set(validate_symbols(symbols))
        self.classes: dict[str, AssetClass] = dict(classes or {})
        self.fail = False
        self.error: Exception | None = None  # raised as is: a source with a bug
        self.delay_s = 0.0  # each read takes this long
        self.calls = 0

    async def open_positions(self) -> Mapping[str, AssetClass]:
        self.calls += 1
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if self.fail:
            raise PositionSourceError("static position source: failing (simulated outage)")
        return {s: self.classes.get(s) or classify(s) for s in self.symbols}

    async def open_position_symbols(self) -> frozenset[str]:
        return frozenset(await self.open_positions())
