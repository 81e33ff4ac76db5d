"""An in-process QuoteFeed of random-walk quotes for whatever is subscribed: the embedded
default (no keys, no network). Prices move in whole cents, so they are exact decimals."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio

from domain.connection import ConnectionState
from domain.errors import SymbolsRejected
from domain.market import Channel, MarketEvent, Quote, SubscriptionAck, Subscriptions
from domain.stats import FeedStats
from ports.clock import Clock

_TICK_S = 0.05  # one frame per tick at most; the rate is spread over ticks


class SimulatedSession:
    def __init__(self, feed: SimulatedQuoteFeed) -> None:
        self._feed = feed
        self._confirmed = Subscriptions()

    @property
    def confirmed(self) -> Subscriptions:
        return self._confirmed

    async def subscribe(self, request: Subscriptions) -> SubscriptionAck:
        await anyio.lowlevel.checkpoint()
        merged = dict(self._confirmed.by_channel)
        for channel, symbols in request.by_channel.items():
            merged[channel] = merged.get(channel, frozenset()) | symbols
        new = Subscriptions(merged)
        limit = self._feed.symbol_limit
        if limit is not None and len(new.all_symbols()) > limit:
            raise SymbolsRejected(
                "symbol limit exceeded", request.all_symbols(), code=405, limit_exceeded=True
            )
        self._confirmed = new
        return SubscriptionAck(new)

    async def unsubscribe(self, request: Subscriptions) -> SubscriptionAck:
        await anyio.lowlevel.checkpoint()
        merged = {c: s - request.symbols(c) for c, s in self._confirmed.by_channel.items()}
        self._confirmed = Subscriptions(merged)
        return SubscriptionAck(self._confirmed)

    async def events(self) -> AsyncIterator[Sequence[MarketEvent]]:
        feed = self._feed
        carry = 0.0
        turn = 0
        while True:
            await anyio.sleep(_TICK_S)
            symbols = sorted(self._confirmed.symbols(Channel.QUOTES))
            if not symbols:
                continue
            carry += feed.rate_per_s * _TICK_S
            count, carry = int(carry), carry - int(carry)
            if count == 0:
                continue
            now = feed._clock.now_ns()
            batch: list[MarketEvent] = []
            for _ in range(count):
                batch.append(feed._next_quote(symbols[turn % len(symbols)], now))
                turn += 1
            feed.stats.frames += 1
            feed.stats.messages["quote"] += len(batch)
            yield batch


class SimulatedQuoteFeed:
    """Random-walk quotes at ``rate_per_s`` in total, round-robin over the subscribed symbols.

    Deterministic for a given ``seed``. Spreads are 1 to 5 cents; prices never reach zero.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        rate_per_s: float = 10.0,
        seed: int | None = None,
        symbol_limit: int | None = None,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self._clock = clock
        self._random = random.Random(seed)
        self.rate_per_s = rate_per_s
        self.symbol_limit = symbol_limit
        self.stats = FeedStats()
        self._mid_cents: dict[str, int] = {}

    def _next_quote(self, symbol: str, now_ns: int) -> Quote:
        r = self._random
        mid = self._mid_cents.get(symbol)
        if mid is None:
            mid = r.randint(2_000, 50_000)
        mid = max(100, mid + r.randint(-3, 3))
        self._mid_cents[symbol] = mid
        half = r.randint(1, 5)
        bid, ask = mid - half, mid + half
        return Quote(
            symbol,
            bid / 100,
            r.randint(1, 10) * 100,
            ask / 100,
            r.randint(1, 10) * 100,
            "V",
            "V",
            ("R",),
            "C",
            now_ns,
            now_ns,
        )

    @asynccontextmanager
    async def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AsyncIterator[SimulatedSession]:
        await anyio.lowlevel.checkpoint()
        if on_state is not None:
            on_state(ConnectionState.AUTHENTICATING)
        yield SimulatedSession(self)
