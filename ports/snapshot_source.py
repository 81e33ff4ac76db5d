from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from domain.assets import AssetClass
from domain.market import Quote


class SnapshotSource(Protocol):
    """The latest quote of symbols on request (Alpaca's market-data REST API, a fake)."""

    async def latest_quotes(self, asset_class: AssetClass, symbols: Sequence[str]) -> list[Quote]:
        """The latest quote of each of ``symbols`` the source knows (one asset class).

        Never raises for an outage: a batch that fails (timeout, 5xx, refused credentials,
        rate limit) is logged, counted and skipped, and the quotes of the others are returned.
        Applies its own deadline and pacing. Cancellation propagates.
        """
        ...
