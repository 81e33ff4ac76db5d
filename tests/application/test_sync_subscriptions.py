"""Subscription sync in virtual time: the 300 s loop, source outages, event-driven triggers."""

from __future__ import annotations

import anyio

from adapters.clock import VirtualClock
from adapters.memory import (
    InMemoryEventBus,
    InMemoryPriceCache,
    ScriptedQuoteFeed,
    StaticPositionSource,
)
from application.service import MarketDataService, ServiceConfig
from ports.event_bus import POSITIONS_CHANGED_CHANNEL
from tests.application.helpers import eventually


def make(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    positions: StaticPositionSource,
    static: frozenset[str] = frozenset({"SPY"}),
    limit: int | None = None,
) -> MarketDataService:
    config = ServiceConfig(static_symbols=static, symbol_limit=limit, sync_interval_s=300.0)
    return MarketDataService(feed, cache, bus, clock, config, positions=positions)


async def test_every_300_s_positions_are_read_and_symbols_added_and_removed(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL", "MSFT"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(2_000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "MSFT", "SPY"})
            started = anyio.current_time()
            positions.symbols = {"MSFT", "NVDA"}
            await anyio.sleep(299)
            assert feed.subscribed() == {"AAPL", "MSFT", "SPY"}  # not before the interval
            await feed.wait_until(lambda: feed.subscribed() == {"MSFT", "NVDA", "SPY"})
            assert anyio.current_time() - started == 300
            actions = [(a, r.symbols()) for a, r in feed.current.requests]  # type: ignore[union-attr]
            assert ("unsubscribe", frozenset({"AAPL"})) in actions
            assert ("subscribe", frozenset({"NVDA"})) in actions
            assert service.status.desired == {"MSFT", "NVDA", "SPY"}
            tg.cancel_scope.cancel()


async def test_a_position_source_outage_keeps_the_current_subscriptions(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(5_000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "SPY"})
            positions.fail = True
            calls = positions.calls
            await anyio.sleep(3 * 300 + 1)
            assert positions.calls == calls + 3
            assert feed.subscribed() == {"AAPL", "SPY"}
            assert service.status.counters["position_sync_errors"] == 3
            assert "failing" in (service.status.last_sync_error or "")
            positions.fail = False
            positions.symbols = {"TSLA"}
            await feed.wait_until(lambda: feed.subscribed() == {"TSLA", "SPY"})
            assert service.status.last_sync_error is None
            tg.cancel_scope.cancel()


async def test_static_symbols_are_subscribed_even_when_positions_are_down_at_start(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL"})
    positions.fail = True
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"SPY"})
            tg.cancel_scope.cancel()


async def test_positions_changed_signal_syncs_within_a_second(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "SPY"})
            await eventually(lambda: bool(bus._listeners))
            positions.symbols = {"AAPL", "AMD"}
            signalled = anyio.current_time()
            await bus.notify(POSITIONS_CHANGED_CHANNEL, b"{}")
            await feed.wait_until(lambda: "AMD" in feed.subscribed())
            assert anyio.current_time() - signalled < 1.0
            tg.cancel_scope.cancel()


async def test_capacity_prefers_positions_over_the_static_list_and_reports_left_out(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"ZM", "XOM"})
    service = make(feed, cache, bus, clock, positions, static=frozenset({"AAPL", "SPY"}), limit=3)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: len(feed.subscribed()) == 3)
            assert feed.subscribed() == {"ZM", "XOM", "AAPL"}
            assert service.status.left_out == ("SPY",)
            tg.cancel_scope.cancel()


async def test_sync_while_disconnected_is_applied_in_full_on_reconnect(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(1_000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "SPY"})
            feed.fail_next_connect(times=1)
            feed.drop_connection()
            await feed.wait_until(lambda: feed.current is None)
            positions.symbols = {"GOOG"}
            await service.sync_now()
            await feed.wait_until(lambda: feed.subscribed() == {"GOOG", "SPY"})
            assert len(feed.sessions) == 2
            tg.cancel_scope.cancel()
