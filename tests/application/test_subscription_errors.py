"""Subscription changes that fail: refused by the venue (400/410) or cut by a drop.

These error paths only ran against the real adapter before; here the use cases meet them in
virtual time through the scripted feed.
"""

from __future__ import annotations

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import (
    InMemoryEventBus,
    InMemoryPriceCache,
    ScriptedQuoteFeed,
    StaticPositionSource,
)
from application.service import MarketDataService, ServiceConfig
from domain.connection import ConnectionState
from domain.errors import FeedDisconnected, SymbolsRejected


def make(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    positions: StaticPositionSource,
) -> MarketDataService:
    config = ServiceConfig(static_symbols=frozenset({"AAPL"}), symbol_limit=None)
    return MarketDataService(feed, cache, bus, clock, config, positions=positions, rng=lambda: 0.5)


@pytest.mark.parametrize("code", [400, 410])
async def test_symbols_the_venue_refuses_are_reported_and_the_rest_stay_subscribed(
    code: int,
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
) -> None:
    positions = StaticPositionSource()
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
            positions.symbols = {"BAD1", "MSFT"}
            feed.fail_next_subscribe(SymbolsRejected("refused", frozenset({"BAD1"}), code=code))
            await service.sync_now()
            assert service.status.rejected == {"BAD1"}
            assert service.status.counters["symbols_rejected"] == 1
            # The refusal ended neither the session nor the sync: the change goes on without
            # the refused symbol, which is not asked for again.
            assert service.status.state is ConnectionState.CONNECTED
            assert len(feed.sessions) == 1
            await service.sync_now()
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "MSFT"})
            asked = [
                r.symbols() for action, r in feed.sessions[0].requests if action == "subscribe"
            ]
            assert sum("BAD1" in a for a in asked) == 1  # never asked for again
            tg.cancel_scope.cancel()


async def test_a_subscription_change_cut_by_a_drop_is_completed_in_full_on_reconnect(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
) -> None:
    positions = StaticPositionSource()
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
            positions.symbols = {"MSFT", "NVDA"}
            # The subscribe is cut: the session ends while the change waits for its ack (the
            # adapter then raises FeedDisconnected to the change and to the reader).
            feed.fail_next_subscribe(FeedDisconnected("session ended during subscribe"))
            await service.sync_now()  # never raises for the cut: the reader's loop reconnects
            cut = feed.sessions[0].requests[-1]
            assert cut[0] == "subscribe" and cut[1].symbols() == {"MSFT", "NVDA"}
            assert service.connection.target == {"AAPL", "MSFT", "NVDA"}
            feed.drop_connection()
            await feed.wait_until(
                lambda: len(feed.sessions) == 2 and feed.subscribed() == {"AAPL", "MSFT", "NVDA"}
            )
            assert feed.connect_times == [0.0, 5.0]  # one reconnect, after the policy's delay
            # The new session got the whole target in one request, not the interrupted diff.
            assert feed.sessions[1].requests[0][1].symbols() == {"AAPL", "MSFT", "NVDA"}
            assert service.status.reconnects == 1
            assert service.status.confirmed == {"AAPL", "MSFT", "NVDA"}
            tg.cancel_scope.cancel()
