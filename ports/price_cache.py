from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from domain.price import Price


class PartialWrite(ConnectionError):
    """Part of a batch was written, the rest could not be now (a store spanning nodes, one of
    them down or moving a slot). ``applied`` went to the cache, in batch order, and were
    published when the cache publishes (the bus knows); ``unwritten`` are to be retried: only
    their symbols are touched by the failure. Prices neither applied nor unwritten were refused
    as older."""

    def __init__(self, reason: str, applied: Sequence[Price], unwritten: Sequence[Price]) -> None:
        super().__init__(reason)
        self.applied = applied
        self.unwritten = list(unwritten)


class PriceCache(Protocol):
    """The latest price per symbol, shared with other services, each entry with a TTL."""

    @property
    def ttl_s(self) -> float:
        """How long an entry lives after its last write, in seconds."""
        ...

    async def put_many(self, prices: Sequence[Price]) -> Sequence[Price]:
        """Write the prices (at most one per symbol is expected) and return those applied.

        A price whose venue timestamp is older than the cached one for its symbol is not applied
        (atomically, where the store is shared). Each applied entry's TTL restarts. Raises
        ``ConnectionError`` (or a subclass) when the store cannot be reached; nothing is then
        known to be written and the caller keeps the prices to retry. :class:`PartialWrite`
        (a ``ConnectionError``) when only some could be written: it says which.
        """
        ...

    async def get(self, symbol: str) -> Price | None:
        """The cached price, or None when absent or expired."""
        ...

    async def get_many(self, symbols: Collection[str]) -> dict[str, Price]:
        """The cached prices of those symbols that have one; absent ones are left out."""
        ...
