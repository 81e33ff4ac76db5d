"""Subscription sync in virtual time: the 300 s loop, source outages, event-driven triggers."""

from __future__ import annotations

import logging

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
from application.sync_subscriptions import SyncSubscriptions, _some
from domain.assets import AssetClass
from domain.errors import PositionSourceError
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


# -- edges the mutation run found unpinned (issue 16) ------------------------------------------

OPTION = "AAPL250117C00150000"


def sync_of(
    service: MarketDataService, positions: StaticPositionSource | None, interval_s: float = 300.0
) -> SyncSubscriptions:
    return SyncSubscriptions(
        positions, frozenset(), service.streams, service.status,
        interval_s=interval_s,
    )  # fmt: skip


def test_a_log_line_names_at_most_20_symbols_and_counts_the_rest() -> None:
    """Capacity and unrouted warnings can name thousands of symbols: a line stays bounded."""
    names = [f"S{i:02d}" for i in range(25)]
    first_20 = ", ".join(names[:20])
    assert _some(reversed(names)) == f"{first_20} … and 5 more"  # sorted, the first 20
    assert _some(names[:21]) == f"{first_20} … and 1 more"
    assert _some(names[:20]) == first_20  # exactly 20: no "and 0 more"
    assert _some(["B", "A"]) == "A, B"


async def test_the_interval_must_be_positive_and_a_stream_is_needed(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make(feed, cache, bus, clock, StaticPositionSource())
    with pytest.raises(ValueError, match=r"^interval_s must be > 0, got 0$"):
        sync_of(service, None, interval_s=0)
    sync_of(service, None, interval_s=0.5)  # any positive interval, not only whole seconds
    with pytest.raises(ValueError, match=r"^at least one stream is needed$"):
        SyncSubscriptions(None, frozenset(), [], service.status, interval_s=300.0)


async def test_without_the_loop_a_request_syncs_at_once(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(10):
        plan = await service.sync.request()
    assert plan.target == {"AAPL", "SPY"} and positions.calls == 1


async def test_a_request_after_several_syncs_reads_the_positions_again(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Each request waits for a sync that starts after it: never the result of an earlier one."""
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            for symbols in ({"AAPL", "MSFT"}, {"AAPL", "MSFT", "NVDA"}, {"AMD"}):
                positions.symbols = set(symbols)
                calls = positions.calls
                plan = await service.sync.request()
                assert plan.target == symbols | {"SPY"}
                assert positions.calls == calls + 1
            tg.cancel_scope.cancel()


async def test_a_request_whose_sync_cannot_read_positions_gets_the_error(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Not the plan of an earlier, successful sync (POST /subscriptions/sync answers 503)."""
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            assert await service.sync.request() is not None
            positions.fail = True
            with pytest.raises(PositionSourceError, match="simulated outage"):
                await service.sync.request()
            assert await service.sync_now() is None
            positions.fail = False
            assert await service.sync_now() is not None
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("running", [False, True], ids=["pending", "running"])
async def test_a_request_whose_sync_is_cut_by_the_loop_stopping_is_told_so(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    running: bool,
) -> None:
    """Leadership lost (or shutdown) while a request waits: it raises, whether its sync was
    still pending or had started; it never returns the plan of an earlier sync as its own."""
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    errors: list[PositionSourceError] = []
    results: list[object] = []

    async def request() -> None:
        try:
            results.append(await service.sync.request())
        except PositionSourceError as e:
            errors.append(e)

    with anyio.fail_after(100):
        async with anyio.create_task_group() as outer:
            with anyio.CancelScope() as loop:
                async with anyio.create_task_group() as tg:
                    await tg.start(service.sync.run)
                    positions.delay_s = 10.0  # every read from now on takes 10 s
                    if not running:  # a sync is running: the request waits for the next one
                        service.sync.trigger()
                        await eventually(lambda: positions.calls == 2)
                    outer.start_soon(request)
                    await anyio.sleep(1)  # the request's sync (or the one before it) reads
                    assert errors == results == []
                    loop.cancel()
            await eventually(lambda: bool(errors or results))
    assert results == []
    assert [str(e) for e in errors] == [
        "subscription sync stopped before it could run"
        if not running
        else "subscription sync stopped before it could finish"
    ]


async def test_one_feed_for_every_class_subscribes_the_symbols_of_each_class(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """The simulator's single feed serves stocks, crypto and options alike: positions and the
    static list of several classes all reach it."""
    positions = StaticPositionSource({"AAPL", "BTC/USD", OPTION})
    static = frozenset({"SPY", "ETH/USD"})
    service = make(feed, cache, bus, clock, positions, static=static)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            everything = {"AAPL", "BTC/USD", OPTION, "SPY", "ETH/USD"}
            await feed.wait_until(lambda: feed.subscribed() == everything)
            assert service.status.desired == everything
            tg.cancel_scope.cancel()


async def test_symbols_of_every_class_without_a_stream_are_reported_unrouted(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    """Two classes without a stream, one known only from positions, one only from the static
    list: every such symbol is reported, none subscribed."""
    stocks = ScriptedQuoteFeed(clock)
    config = ServiceConfig(static_symbols=frozenset({"SPY", "ETH/USD"}), symbol_limit=None)
    positions = StaticPositionSource({"AAPL", OPTION})
    service = MarketDataService(
        {AssetClass.US_EQUITY: stocks}, cache, bus, clock, config, positions=positions
    )
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await stocks.wait_until(lambda: stocks.subscribed() == {"AAPL", "SPY"})
            assert service.status.unrouted == {OPTION, "ETH/USD"}
            assert service.status.desired == {"AAPL", "SPY"}
            tg.cancel_scope.cancel()


async def test_the_service_wants_the_symbols_of_every_stream(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    """``desired`` (``/subscriptions``) is the union over the streams, not the last one's."""
    stocks, crypto = ScriptedQuoteFeed(clock), ScriptedQuoteFeed(clock)
    config = ServiceConfig(static_symbols=frozenset({"ETH/USD"}), symbol_limit=None)
    positions = StaticPositionSource({"AAPL", "BTC/USD"})
    feeds = {AssetClass.US_EQUITY: stocks, AssetClass.CRYPTO: crypto}
    service = MarketDataService(feeds, cache, bus, clock, config, positions=positions)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await crypto.wait_until(lambda: crypto.subscribed() == {"BTC/USD", "ETH/USD"})
            assert service.status.desired == {"AAPL", "BTC/USD", "ETH/USD"}
            assert service.status.unrouted == frozenset()
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("limit", [None, 3])
async def test_a_venue_limit_learned_on_subscribe_bounds_every_later_plan(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus, limit: int | None
) -> None:
    """The venue refused a third symbol: later syncs plan within 2 (also under a configured
    limit of 3) and leave the same symbol out, instead of asking the venue again."""
    feed = ScriptedQuoteFeed(clock, symbol_limit=2)
    positions = StaticPositionSource()
    static = frozenset({"AAPL", "BRK.B", "MSFT"})
    service = make(feed, cache, bus, clock, positions, static=static, limit=limit)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connection.capacity == 2)
            assert feed.subscribed() == {"AAPL", "BRK.B"}
            session = feed.current
            assert session is not None
            asked = len(session.requests)
            plan = await service.sync.request()
            assert plan.target == {"AAPL", "BRK.B"} and plan.left_out == ("MSFT",)
            await anyio.sleep(1)
            later = session.requests[asked:]
            assert not [r for a, r in later if a == "subscribe" and "MSFT" in r.symbols()]
            assert feed.subscribed() == {"AAPL", "BRK.B"}
            assert service.status.left_out == ("MSFT",)
            tg.cancel_scope.cancel()


async def test_a_position_source_bug_is_logged_with_its_traceback_once_per_outage(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug (not an outage) is logged with its traceback, to be fixed; an outage without one.
    Each once: the syncs that fail after it log at debug."""
    positions = StaticPositionSource({"AAPL"})
    positions.error = KeyError("qty")
    service = make(feed, cache, bus, clock, positions)
    with caplog.at_level(logging.DEBUG, "application.sync_subscriptions"), anyio.fail_after(99):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            for _ in range(2):
                assert await service.sync_now() is None
            positions.error = None
            assert await service.sync_now() is not None
            positions.fail = True
            for _ in range(2):
                assert await service.sync_now() is None
            tg.cancel_scope.cancel()
    records = [(r.levelno, r.exc_info) for r in caplog.records]
    errors = [exc_info for level, exc_info in records if level == logging.ERROR]
    assert len(errors) == 2  # one per outage
    assert errors[0] is not None and isinstance(errors[0][1], KeyError)  # a bug: traceback
    assert not errors[1]  # an outage: no traceback
    assert [level for level, _ in records].count(logging.DEBUG) == 2 + 1
