"""A QuoteFeed driven by the test: push events, drop the connection, fail connects, refuse
symbols. Every connect attempt and subscription request is recorded for assertions."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio

from domain.connection import ConnectionState
from domain.errors import FeedDisconnected, FeedError, SymbolsRejected
from domain.market import Channel, MarketEvent, SubscriptionAck, Subscriptions
from domain.stats import FeedStats
from ports.clock import Clock

_Item = Sequence[MarketEvent] | BaseException


class ScriptedSession:
    def __init__(self, feed: ScriptedQuoteFeed) -> None:
        self._feed = feed
        self._confirmed = Subscriptions()
        self._send, self._receive = anyio.create_memory_object_stream[_Item](10_000)
        self.requests: list[tuple[str, Subscriptions]] = []
        self.closed = False

    @property
    def confirmed(self) -> Subscriptions:
        return self._confirmed

    def _apply(self, action: str, request: Subscriptions) -> SubscriptionAck:
        self.requests.append((action, request))
        self._feed._changed()
        if self._feed._subscribe_errors:
            raise self._feed._subscribe_errors.popleft()
        merged = dict(self._confirmed.by_channel)
        for channel, symbols in request.by_channel.items():
            old = merged.get(channel, frozenset())
            merged[channel] = old | symbols if action == "subscribe" else old - symbols
        if action == "subscribe":
            unknown = self._feed.unknown_symbols
            merged = {c: s - unknown for c, s in merged.items()}
        new = Subscriptions(merged)
        limit = self._feed.symbol_limit
        if limit is not None and len(new.all_symbols()) > limit:
            raise SymbolsRejected(
                "symbol limit exceeded", request.all_symbols(), code=405, limit_exceeded=True
            )
        self._confirmed = new
        self._feed._changed()
        missing = (
            request.all_symbols() - new.all_symbols() if action == "subscribe" else frozenset()
        )
        return SubscriptionAck(new, missing)

    async def subscribe(self, request: Subscriptions) -> SubscriptionAck:
        await anyio.lowlevel.checkpoint()
        return self._apply("subscribe", request)

    async def unsubscribe(self, request: Subscriptions) -> SubscriptionAck:
        await anyio.lowlevel.checkpoint()
        return self._apply("unsubscribe", request)

    async def events(self) -> AsyncIterator[Sequence[MarketEvent]]:
        async for item in self._receive:
            if isinstance(item, BaseException):
                raise item
            wanted = self._confirmed.all_symbols()
            batch = [e for e in item if e.symbol in wanted]
            if batch:
                yield batch
        raise FeedDisconnected("scripted session closed")


class ScriptedQuoteFeed:
    """The QuoteFeed the use-case tests drive.

    ``connect_times`` holds the clock's time of every connect attempt, so tests assert backoff
    timelines in virtual time; ``sessions`` every session opened (with its ``requests``).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        symbol_limit: int | None = None,
        unknown_symbols: Iterable[str] = (),
    ) -> None:
        self._clock = clock
        self.symbol_limit = symbol_limit
        self.unknown_symbols = frozenset(unknown_symbols)
        self.stats = FeedStats()
        self.connect_times: list[float] = []
        self.sessions: list[ScriptedSession] = []
        self.current: ScriptedSession | None = None
        self._connect_errors: deque[FeedError] = deque()
        self._subscribe_errors: deque[FeedError] = deque()
        self._event = anyio.Event()

    # -- scripting -------------------------------------------------------------------------
    def fail_next_connect(self, error: FeedError | None = None, times: int = 1) -> None:
        for _ in range(times):
            self._connect_errors.append(error or FeedDisconnected("scripted connect failure"))

    def fail_next_subscribe(self, error: FeedError) -> None:
        self._subscribe_errors.append(error)

    def push(self, *events: MarketEvent) -> None:
        """Deliver one frame holding ``events`` to the open session."""
        self._session()._send.send_nowait(list(events))
        self.stats.frames += 1
        for event in events:
            self.stats.messages[type(event).__name__.lower()] += 1

    def drop_connection(self, error: FeedError | None = None) -> None:
        """End the open session with ``error`` (default: FeedDisconnected)."""
        self._session()._send.send_nowait(error or FeedDisconnected("scripted drop"))

    def _session(self) -> ScriptedSession:
        if self.current is None:
            raise RuntimeError("no open session to script")
        return self.current

    def _changed(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every feed change."""
        while not predicate():
            await self._event.wait()

    def subscribed(self, channel: Channel = Channel.QUOTES) -> frozenset[str]:
        return frozenset() if self.current is None else self.current.confirmed.symbols(channel)

    # -- QuoteFeed -------------------------------------------------------------------------
    @asynccontextmanager
    async def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AsyncIterator[ScriptedSession]:
        self.connect_times.append(self._clock.monotonic())
        self._changed()
        await anyio.lowlevel.checkpoint()
        if self._connect_errors:
            raise self._connect_errors.popleft()
        if on_state is not None:
            on_state(ConnectionState.AUTHENTICATING)
        session = ScriptedSession(self)
        self.sessions.append(session)
        self.current = session
        self._changed()
        try:
            yield session
        finally:
            session.closed = True
            session._send.close()
            if self.current is session:
                self.current = None
            self._changed()
