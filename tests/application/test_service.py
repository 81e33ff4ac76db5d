"""MarketDataService as a whole (virtual time): the positions-changed listener, and what the
service says about its streams together (the source of /health, /ready and the metrics)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import (
    InMemoryEventBus,
    InMemoryPriceCache,
    ScriptedQuoteFeed,
    StaticPositionSource,
)
from application.service import MarketDataService, ServiceConfig, _first_leaf
from application.status import Health, Role, StoreState
from application.streams import Stream
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, FatalStoreError
from domain.features import METRICS, FeatureHealth
from domain.subscriptions import SubscriptionPlan
from ports.event_bus import POSITIONS_CHANGED_CHANNEL
from tests.application.helpers import eventually, quote
from tests.application.spies import SpyPriceCache

S = 1_000_000_000  # ns per second


class DeafBus(InMemoryEventBus):
    """``listen`` fails while ``down``; every attempt's time is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.listens: list[float] = []

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.listens.append(anyio.current_time())
        if self.down:
            raise ConnectionError("redis down")
        async with super().listen(channel) as signals:
            yield signals


async def test_the_positions_listener_retries_from_half_a_second_to_10_s_and_again_after_a_recovery(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bus = DeafBus()
    bus.down = True
    positions = StaticPositionSource({"AAPL"})
    config = ServiceConfig(static_symbols=frozenset({"SPY"}), symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, config, positions=positions)
    with caplog.at_level(logging.WARNING, "application.service"), anyio.fail_after(500):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: bool(bus.listens))
            t0 = bus.listens[0]
            await eventually(lambda: len(bus.listens) == 8)
            assert [t - t0 for t in bus.listens] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 25.5, 35.5]
            bus.down = False
            await eventually(lambda: bool(bus._listeners))
            positions.symbols = {"AAPL", "NVDA"}
            await bus.notify(POSITIONS_CHANGED_CHANNEL, b"{}")  # heard: a sync at once
            await feed.wait_until(lambda: "NVDA" in feed.subscribed())
            # The listener ends (the bus drops it) and the bus is down again: 0.5 s first.
            bus.down = True
            t1 = anyio.current_time()
            for listener in bus._listeners:
                listener.send.close()
            await eventually(lambda: len(bus.listens) == 9 + 2)
            assert [round(t - t1, 6) for t in bus.listens[9:]] == [0.5, 1.5]
            tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "application.service"]
    assert lines[0] == "cannot listen on positions.changed (redis down); retrying"


async def test_the_positions_listener_warns_once_per_outage_and_says_when_it_listens_again(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Eight failed attempts are one outage: one WARNING (was one per attempt), one INFO once
    listening again; the bus down again is a new outage, warned once more."""
    bus = DeafBus()
    bus.down = True
    config = ServiceConfig(static_symbols=frozenset({"SPY"}), symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, config)

    def levels() -> list[str]:
        return [r.levelname for r in caplog.records if r.name == "application.service"]

    with caplog.at_level(logging.DEBUG, "application.service"), anyio.fail_after(500):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: len(bus.listens) == 8)
            assert levels().count("WARNING") == 1
            bus.down = False
            await eventually(lambda: bool(bus._listeners))
            assert levels().count("WARNING") == 1 and levels().count("INFO") == 1
            bus.down = True
            for listener in bus._listeners:
                listener.send.close()
            await eventually(lambda: len(bus.listens) == 9 + 4)
            assert levels().count("WARNING") == 2 and levels().count("INFO") == 1
            tg.cancel_scope.cancel()


# -- the streams together ------------------------------------------------------------------------


def three(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus, **config: object
) -> MarketDataService:
    feeds = {cls: ScriptedQuoteFeed(clock) for cls in AssetClass}
    cfg = ServiceConfig(**{"symbol_limit": None, **config})  # type: ignore[arg-type]
    return MarketDataService(feeds, cache, bus, clock, cfg)


async def give(stream: Stream, *symbols: str) -> None:
    """Give ``stream`` symbols to stream (active), without a session (nothing connects)."""
    target = frozenset(symbols)
    await stream.connection.apply(SubscriptionPlan(target, target, frozenset(), ()))


def connect(stream: Stream, *confirmed: str) -> None:
    for state in (
        ConnectionState.CONNECTING, ConnectionState.AUTHENTICATING, ConnectionState.CONNECTED
    ):  # fmt: skip
        stream.status.set_state(state)
    stream.status.confirmed = frozenset(confirmed)


async def test_counts_and_times_of_the_streams_add_up(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    service = three(clock, cache, bus)
    stocks, crypto, options = service.streams
    assert [s.name for s in service.streams] == ["us_equity", "crypto", "us_option"]
    assert service.last_message_ns() is None
    stocks.status.reconnects, crypto.status.reconnects, options.status.reconnects = 2, 3, 0
    stocks.status.reconnect_attempts, crypto.status.reconnect_attempts = 4, 1
    stocks.status.last_message_ns, crypto.status.last_message_ns = 20, 10
    assert service.reconnects() == 5
    assert service.reconnect_attempts() == 4
    assert service.last_message_ns() == 20
    connect(stocks, "AAPL")
    connect(crypto, "BTC/USD", "ETH/USD")
    assert service.confirmed() == {"AAPL", "BTC/USD", "ETH/USD"}


async def test_the_service_is_connected_when_every_stream_with_symbols_is(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    service = three(clock, cache, bus)
    stocks, crypto, options = service.streams
    assert not service.single
    assert not service.connected() and service.connection_state() == "disconnected"
    assert service.health() is Health.HEALTHY  # nothing to stream is no fault
    await give(stocks, "AAPL")
    await give(crypto, "BTC/USD")
    connect(stocks, "AAPL")
    crypto.status.set_state(ConnectionState.CONNECTING)
    assert not service.connected() and service.connection_state() == "connecting"
    assert not service.streaming()
    assert service.health() is Health.DEGRADED
    assert service.stream_details() == ["crypto stream connecting"]
    connect(crypto)  # connected, nothing confirmed yet
    assert service.connected() and service.connection_state() == "connected"
    assert service.streaming()  # AAPL is
    assert service.health() is Health.HEALTHY and service.stream_details() == []
    service.status.store = StoreState.DEGRADED
    assert not service.streaming() and service.health() is Health.DEGRADED
    service.status.store = StoreState.OK
    service.status.features.fail(METRICS, "histogram exploded")
    assert service.health() is Health.DEGRADED
    service.status.features.recover(METRICS)
    options.disabled = "options are not in your plan"
    assert service.health() is Health.DEGRADED
    assert service.stream_details() == ["us_option stream disabled: options are not in your plan"]
    service.status.fatal_error = "bad credentials"
    assert service.connection_state() == "failed" and service.health() is Health.FAILED


async def test_every_stream_disabled_is_failed_and_a_standby_is_judged_by_its_store(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    service = three(clock, cache, bus)
    service.status.role = Role.STANDBY
    assert service.health() is Health.HEALTHY  # not connected: a standby streams nothing
    service.status.features.fail(METRICS, "histogram exploded")
    assert service.health() is Health.DEGRADED
    service.status.features.recover(METRICS)
    service.status.store = StoreState.DEGRADED
    assert service.health() is Health.DEGRADED
    service.status.store = StoreState.OK
    for stream in service.streams[:2]:
        stream.disabled = "gone"
    assert service.health() is Health.HEALTHY
    service.streams[2].disabled = "gone"
    assert service.health() is Health.FAILED


async def test_a_stream_silent_past_the_stall_threshold_degrades_health_and_says_so(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    service = three(clock, cache, bus, stall_after_s=10.0)
    stocks, crypto, _ = service.streams
    await give(stocks, "AAPL")
    await give(crypto, "BTC/USD")
    connect(stocks, "AAPL")
    connect(crypto, "BTC/USD")
    now = clock.now_ns()
    stocks.status.data_expected_since_ns = now - 10 * S  # exactly the threshold: not yet
    crypto.status.data_expected_since_ns = now - 12 * S
    crypto.status.last_message_ns = now - 11 * S
    assert [(s.name, silent) for s, silent in service.silent_streams()] == [("crypto", 11.0)]
    assert service.silence_detail(crypto, 11.04) == (
        "crypto stream: no data for 11.0 s (MDS_DATA_TIMEOUT 10 s)"
    )
    assert service.health() is Health.DEGRADED
    crypto.status.last_message_ns = now
    assert service.silent_streams() == [] and service.health() is Health.HEALTHY
    crypto.status.last_message_ns = now - 11 * S
    service.status.role = Role.STANDBY
    assert service.silent_streams() == []  # a standby streams nothing
    service.status.role = Role.LEADER
    service.status.fatal_error = "bad credentials"
    assert service.health() is Health.FAILED  # not hidden by the silence


async def test_silence_is_never_a_fault_without_a_threshold_and_one_feed_is_the_feed(
    feed: ScriptedQuoteFeed, clock: VirtualClock, cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
) -> None:  # fmt: skip
    service = MarketDataService(feed, cache, bus, clock, ServiceConfig(symbol_limit=None))
    assert service.single
    (stream,) = service.streams
    connect(stream, "AAPL")
    stream.status.data_expected_since_ns = clock.now_ns() - 3_600 * S
    assert service.silent_streams() == [] and service.health() is Health.HEALTHY
    timed = MarketDataService(
        feed, cache, bus, clock, ServiceConfig(symbol_limit=None, stall_after_s=2.5)
    )
    assert timed.silence_detail(timed.streams[0], 3.0) == (
        "feed: no data for 3.0 s (MDS_DATA_TIMEOUT 2.5 s)"
    )


async def test_at_least_one_feed_is_needed(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    with pytest.raises(ValueError, match=r"^at least one feed is needed$"):
        MarketDataService({}, cache, bus, clock, ServiceConfig())


# -- what the service is built from reaches its parts ---------------------------------------------


class RecordingObserver:
    def __init__(self) -> None:
        self.writes: list[int] = []

    def observe_write(self, seconds: float, count: int) -> None:
        self.writes.append(count)

    def observe_quote_age(self, seconds: float) -> None:
        pass


async def test_one_feed_is_one_stream_named_all_that_connects_even_without_symbols(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus,
    clock: VirtualClock,
) -> None:  # fmt: skip
    """The simulator's or a replay's single feed: not lazy (its session is the service's
    connection), named "all" in details and metrics; the service's parts are the ones given."""
    await anyio.sleep(7)
    service = MarketDataService(feed, cache, bus, clock, ServiceConfig(symbol_limit=None))
    assert service.status.started_at == 7 and service.status.uptime_s(9.5) == 2.5
    assert (service.feed, service.cache, service.bus, service.clock) == (feed, cache, bus, clock)
    assert [s.name for s in service.streams] == ["all"]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.current is not None)
            assert service.connection is service.streams[0].connection
            tg.cancel_scope.cancel()


async def test_per_class_streams_take_their_limit_else_the_common_one(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    service = three(clock, cache, bus, symbol_limit=7, symbol_limits={AssetClass.CRYPTO: 2})
    assert [s.capacity for s in service.streams] == [7, 2, 7]
    assert all(s.status.started_at == service.status.started_at for s in service.streams)


async def test_the_writer_gets_the_observer_the_source_the_bound_and_the_skew(
    feed: ScriptedQuoteFeed, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    cache = SpyPriceCache()
    observer = RecordingObserver()
    config = ServiceConfig(symbol_limit=None, source="SIM", max_pending=3, max_future_skew_s=60)
    service = MarketDataService(feed, cache, bus, clock, config, observer=observer)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            ahead = clock.now_ns() + 10 * S  # within 60 s, not within the default 5 s
            early = quote("AAPL", 1, 1.02, ahead)._replace(ts_received_ns=clock.now_ns())
            service.stream.handle([early])
            await eventually(lambda: "AAPL" in cache.values)
            assert cache.values["AAPL"].exchange == "SIM"
            assert observer.writes == [1]
            cache.gate = anyio.Event()  # the store stalls: at most 3 pending, then conflated
            service.stream.handle([quote("AAPL", 1, 1.02, ahead + 1)])
            await cache.entered.wait()
            for i in range(2, 7):  # 5 more of AAPL: over 3, only the newest is kept
                service.stream.handle([quote("AAPL", 1, 1.02, ahead + i)])
            assert service.stream.pending == 1
            cache.gate.set()
            tg.cancel_scope.cancel()


async def test_features_given_are_the_services_health(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus,
    clock: VirtualClock,
) -> None:  # fmt: skip
    """Adapters of optional features (metrics, recording) report into the FeatureHealth they
    share with the service: its /health says so."""
    features = FeatureHealth()
    service = MarketDataService(
        feed, cache, bus, clock, ServiceConfig(symbol_limit=None), features=features
    )
    connect(service.streams[0], "AAPL")
    assert service.health() is Health.HEALTHY
    features.fail(METRICS, "port in use")
    assert service.health() is Health.DEGRADED


async def test_by_default_reconnects_are_jittered(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus,
    clock: VirtualClock,
) -> None:  # fmt: skip
    """With a jittered policy and no injected random source the service jitters (full
    jitter: below the ceiling), so many instances do not reconnect in step."""
    config = ServiceConfig(
        static_symbols=frozenset({"AAPL"}), symbol_limit=None, backoff=BackoffPolicy(jitter=True)
    )
    service = MarketDataService(feed, cache, bus, clock, config)
    feed.fail_next_connect(times=1)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: len(feed.connect_times) == 2)
            first, second = feed.connect_times
            assert second - first < config.backoff.ceiling(1)
            tg.cancel_scope.cancel()


async def test_when_every_stream_is_disabled_the_service_fails_with_the_last_reason(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = {cls: ScriptedQuoteFeed(clock) for cls in (AssetClass.US_EQUITY, AssetClass.CRYPTO)}
    config = ServiceConfig(static_symbols=frozenset({"AAPL", "BTC/USD"}), symbol_limit=None)
    service = MarketDataService(feeds, cache, bus, clock, config)
    for feed in feeds.values():
        feed.fail_next_connect(
            FatalFeedError("not in your plan", code=409, lane_only=True), times=1
        )
    with anyio.fail_after(60), pytest.raises(FatalFeedError) as raised:
        await service.run()
    assert str(raised.value) == "not in your plan (code 409)"
    assert service.status.fatal_error == str(raised.value)
    assert raised.value.setting is None


class RefusingCache(InMemoryPriceCache):
    async def put_many(self, prices):  # type: ignore[no-untyped-def]
        raise FatalStoreError("WRONGPASS invalid username-password pair", setting="REDIS_URL")


async def test_a_store_that_refuses_our_settings_ends_the_service_with_that_error_alone(
    feed: ScriptedQuoteFeed, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    cache = RefusingCache(clock, ttl_s=300.0)
    config = ServiceConfig(static_symbols=frozenset({"AAPL"}), symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, config)
    ended: list[FatalStoreError] = []

    async def run() -> None:
        try:
            await service.run()
        except FatalStoreError as e:  # alone: an ExceptionGroup would fail the test
            ended.append(e)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
            feed.push(quote("AAPL", 1, 1.02))
    assert [(type(e), e.setting) for e in ended] == [(FatalStoreError, "REDIS_URL")]


class BuggyBus(InMemoryEventBus):
    """Its positions listener raises a bug when it is closed (cancelled)."""

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            async with super().listen(channel) as signals:
                yield signals
        finally:
            raise RuntimeError("bug in the bus adapter")


async def test_a_bug_surfacing_with_a_fatal_error_is_not_hidden_behind_it(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    """A fatal feed error alone ends the service with that error; with a bug beside it, both
    are raised (the bug is not swallowed)."""
    bus = BuggyBus()
    config = ServiceConfig(static_symbols=frozenset({"AAPL"}), symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, config)

    async def fail_later() -> None:
        await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
        await eventually(lambda: bool(bus._listeners))
        feed.drop_connection(FatalFeedError("bad credentials", code=401, setting="ALPACA_KEY"))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail_later)
            with pytest.raises(BaseExceptionGroup) as raised:
                await service.run()
    errors = [type(e) for e in raised.value.exceptions]
    assert sorted(t.__name__ for t in errors) == ["FatalFeedError", "RuntimeError"]


def test_the_first_error_of_nested_groups_is_handed_over_alone() -> None:
    error = FatalFeedError("bad credentials", setting="ALPACA_KEY")
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [error])])
    assert _first_leaf(nested) is error  # type: ignore[arg-type]
