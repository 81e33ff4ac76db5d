"""EventBus in process: records what was published and fans it out to in-process subscribers."""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from adapters.inbox import Inbox, SubscriptionStats
from domain.price import Price
from ports.event_bus import SubscriptionGap


@dataclass(eq=False)
class _Subscriber:
    symbols: frozenset[str]
    pattern: str | None
    inbox: Inbox[Price]

    def wants(self, symbol: str) -> bool:
        return symbol in self.symbols or (
            self.pattern is not None and fnmatch.fnmatchcase(symbol, self.pattern)
        )


@dataclass(eq=False)
class _Listener:
    channel: str
    send: MemoryObjectSendStream[bytes]


@dataclass(eq=False)
class InMemoryEventBus:
    """``published`` keeps the last ``keep`` prices published (all of them in tests), ``signals``
    the control signals. A subscriber that falls ``buffer`` messages behind loses the OLDEST ones
    (as on Redis: it keeps the latest prices), counted in its iterator's ``stats.dropped`` and in
    ``dropped``. Set ``fail_publishes`` to simulate an outage."""

    keep: int | None = None
    buffer: int = 10_000
    published: deque[Price] = field(init=False)
    signals: list[tuple[str, bytes]] = field(default_factory=list)
    fail_publishes: bool = False
    dropped: int = 0
    _subscribers: list[_Subscriber] = field(default_factory=list)
    _listeners: list[_Listener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.published = deque(maxlen=self.keep)

    async def publish_many(self, prices: Sequence[Price]) -> None:
        if self.fail_publishes:
            raise ConnectionError("in-memory bus: publishing failing (simulated outage)")
        self.published.extend(prices)
        for sub in self._subscribers:
            wanted = [price for price in prices if sub.wants(price.symbol)]
            if wanted:
                before = sub.inbox.stats.dropped
                sub.inbox.deliver(wanted)
                self.dropped += sub.inbox.stats.dropped - before

    @asynccontextmanager
    async def subscribe(
        self, symbols: Collection[str] = (), pattern: str | None = None
    ) -> AsyncIterator[AsyncIterator[Price]]:
        inbox = Inbox[Price](self.buffer, SubscriptionStats(), "in-memory price subscription")
        sub = _Subscriber(frozenset(symbols), pattern, inbox)
        self._subscribers.append(sub)
        try:
            yield inbox
        finally:
            self._subscribers.remove(sub)
            inbox.close()

    def gap(self, symbols: Collection[str], reason: str = "simulated shard loss") -> None:
        """As a cluster shard's re-subscription does: every subscriber of one of ``symbols``
        gets a :class:`SubscriptionGap` for the ones it follows, after what it already has."""
        for sub in self._subscribers:
            mine = frozenset(s for s in symbols if sub.wants(s))
            if mine:
                sub.inbox.gap(SubscriptionGap(mine, reason))

    async def notify(self, channel: str, payload: bytes = b"") -> None:
        if self.fail_publishes:
            raise ConnectionError("in-memory bus: publishing failing (simulated outage)")
        self.signals.append((channel, payload))
        for listener in self._listeners:
            if listener.channel == channel:
                try:
                    listener.send.send_nowait(payload)
                except anyio.WouldBlock:
                    self.dropped += 1

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        send, receive = anyio.create_memory_object_stream[bytes](100)
        listener = _Listener(channel, send)
        self._listeners.append(listener)
        try:
            async with receive:
                yield receive
        finally:
            self._listeners.remove(listener)
            send.close()


RecordingEventBus = InMemoryEventBus
