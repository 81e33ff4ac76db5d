from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from domain.price import Price

PRICE_CHANNEL_PREFIX = "price.updated."
POSITIONS_CHANGED_CHANNEL = "positions.changed"


class EventBus(Protocol):
    """Fan-out of price updates (``price.updated.{SYMBOL}``) and small control signals."""

    async def publish_many(self, prices: Sequence[Price]) -> None:
        """Publish each price on ``price.updated.{SYMBOL}``, in the given order.

        Per symbol, subscribers see updates in publish order. Raises ``ConnectionError`` when
        the bus cannot be reached.
        """
        ...

    def subscribe(
        self, symbols: Collection[str] = (), pattern: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Price]]:
        """Receive price updates for ``symbols`` and/or a glob ``pattern`` over symbols
        (``"*"`` for all). Subscribed once the context is entered; updates published after
        that arrive in order per symbol. Malformed messages are skipped, not raised.
        """
        ...

    async def notify(self, channel: str, payload: bytes = b"") -> None:
        """Publish a control signal (for example on ``positions.changed``)."""
        ...

    def listen(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Receive the payloads of control signals on ``channel`` from entry on."""
        ...


class SubscriptionGap(ConnectionError):
    """Updates of ``symbols`` may have been missed (in a cluster: their shard's connection was
    lost, or their channel's slot moved), and they are subscribed again.

    Raised by a subscription's iterator at the point in the stream where the gap is known;
    the subscription itself goes on: re-read ``symbols`` from the cache, then keep iterating
    the same iterator (other symbols were not interrupted). A ``ConnectionError``, so a
    consumer that treats any ``ConnectionError`` as "re-subscribe and re-read everything" stays
    correct, only slower.
    """

    def __init__(self, symbols: frozenset[str], reason: str) -> None:
        super().__init__(f"updates of {len(symbols)} symbols may have been missed: {reason}")
        self.symbols = symbols
        self.reason = reason
