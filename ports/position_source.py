from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from domain.assets import AssetClass


class PositionSource(Protocol):
    """Where the platform's open positions come from (execution gateway, Alpaca, a fake)."""

    async def open_positions(self) -> Mapping[str, AssetClass]:
        """Symbols with a non-zero position, long or short, each with its asset class.

        Symbols are in the form the class's stream wants (crypto as ``BTC/USD``); the class is
        the one the source named, or the symbol's shape (:func:`domain.assets.classify`) when
        the source names none. Raises :class:`domain.errors.PositionSourceError` when the
        source cannot be read or answers something malformed: a failure is never returned as
        "no positions", so callers keep their current subscriptions. Applies its own timeout
        and bounded retries.
        """
        ...
