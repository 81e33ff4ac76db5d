from __future__ import annotations

from typing import Protocol


class PositionSource(Protocol):
    """Where the platform's open positions come from (execution gateway, Alpaca, a fake)."""

    async def open_position_symbols(self) -> frozenset[str]:
        """Symbols with a non-zero position, long or short.

        Raises :class:`domain.errors.PositionSourceError` when the source cannot be read or
        answers something malformed: a failure is never returned as "no positions", so callers
        keep their current subscriptions. Applies its own timeout and bounded retries.
        """
        ...
