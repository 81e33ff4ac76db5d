from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from domain.connection import ConnectionState
from domain.market import MarketEvent, SubscriptionAck, Subscriptions
from domain.stats import FeedStats


class FeedSession(Protocol):
    """One open, authenticated session with a market-data venue.

    Errors are the domain's feed errors (``domain.errors``): :class:`RetryableFeedError` when the
    session is lost, :class:`FatalFeedError` when retrying cannot help, :class:`SymbolsRejected`
    when the venue refuses some symbols (the session goes on). Nothing else escapes, and never an
    ``ExceptionGroup``.
    """

    @property
    def confirmed(self) -> Subscriptions:
        """The set the venue last confirmed (it always sends its full set, never a diff)."""
        ...

    async def subscribe(self, request: Subscriptions) -> SubscriptionAck:
        """Add ``request`` to the session's set and wait for the venue's confirmation.

        Returns the confirmed set and the requested symbols it does not contain. Raises
        :class:`SymbolsRejected` (``limit_exceeded=True`` on a symbol-limit refusal, after which
        the venue's set is unchanged) or :class:`RetryableFeedError` if the session dies or no
        confirmation comes in time. Changes are sent one at a time, in order; cancellation
        leaves the venue's set as whatever it last confirmed.
        """
        ...

    async def unsubscribe(self, request: Subscriptions) -> SubscriptionAck:
        """Remove ``request`` from the session's set; as :meth:`subscribe` otherwise.

        Data for removed symbols may still arrive briefly; the session filters it out.
        """
        ...

    def events(self) -> AsyncIterator[Sequence[MarketEvent]]:
        """The session's market events, one batch per venue frame, in the venue's order.

        Only events for confirmed symbols and channels are yielded. The iterator ends by raising
        a feed error when the session ends (never by stopping silently). Iterate it from one
        task only, and keep up: the feed does not buffer without bound.
        """
        ...


class QuoteFeed(Protocol):
    """A source of market events: Alpaca, the simulator, a replay, or a scripted fake."""

    @property
    def stats(self) -> FeedStats:
        """Counters of frames, messages by type and malformed input, across sessions."""
        ...

    def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AbstractAsyncContextManager[FeedSession]:
        """Open a session: connect, authenticate, and yield it with nothing subscribed.

        ``on_state`` is told of each step (CONNECTING, AUTHENTICATING, CONNECTED). Raises
        :class:`RetryableFeedError` or :class:`FatalFeedError` if the session cannot be opened.
        Leaving the context closes the session cleanly (a close frame, so the venue frees the
        connection slot at once), also when cancelled.
        """
        ...
