"""Optional features fail alone, in virtual time (issue 11): a metrics observer that raises,
a position source with a bug, and a flood of sync requests against a slow source."""

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
from application.status import Health, ServiceStatus
from application.stream_prices import StreamMidPrices
from domain.features import METRICS, POSITION_SYNC
from tests.application.helpers import T0, eventually, quote


class BrokenObserver:
    """A metrics observer that raises until it is mended."""

    def __init__(self) -> None:
        self.broken = True
        self.observed = 0

    def observe_write(self, seconds: float, count: int) -> None:
        if self.broken:
            raise ValueError("histogram exploded")
        self.observed += 1

    def observe_quote_age(self, seconds: float) -> None:
        pass


async def test_a_raising_metrics_observer_fails_alone_and_prices_are_written(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Before: the observer's exception ended the writer task, and with it the service."""
    status = ServiceStatus(started_at=0.0)
    observer = BrokenObserver()
    stream = StreamMidPrices(cache, bus, clock, status, observer=observer)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            for i in range(50):
                stream.handle([quote("AAPL", 100 + i / 100, 100.02 + i / 100, T0 + i)])
                await stream.wait_idle()
            assert status.counters["published"] == 50
            assert cache.values["AAPL"].ts_event_ns == T0 + 49
            assert METRICS in status.features.failing
            assert "histogram exploded" in status.features.failing[METRICS]
            assert status.features.failures[METRICS] == 50
            observer.broken = False
            stream.handle([quote("AAPL", 101, 101.02, T0 + 100)])
            await stream.wait_idle()
            assert METRICS not in status.features.failing and observer.observed == 1
            tg.cancel_scope.cancel()


def make(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    positions: StaticPositionSource,
) -> MarketDataService:
    config = ServiceConfig(static_symbols=frozenset({"SPY"}), sync_interval_s=300.0)
    return MarketDataService(feed, cache, bus, clock, config, positions=positions)


async def test_a_position_source_with_a_bug_fails_alone(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """A source raising something other than PositionSourceError (a bug in the adapter, an
    untranslated library error): the static symbols are subscribed, prices flow, health is
    degraded naming position_sync; the next good read recovers. Before: the error ended the
    sync task's group, and the service with it."""
    positions = StaticPositionSource({"AAPL"})
    positions.error = KeyError("qty")
    service = make(feed, cache, bus, clock, positions)
    status = service.status
    with anyio.fail_after(2_000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"SPY"})
            feed.push(quote("SPY", 500, 500.02, T0))
            await eventually(lambda: "SPY" in cache.values)
            assert POSITION_SYNC in status.features.failing
            assert "KeyError" in status.features.failing[POSITION_SYNC]
            assert status.health() is Health.DEGRADED
            assert status.counters["position_sync_errors"] == 1
            positions.error = None
            service.sync.trigger()
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "SPY"})
            assert POSITION_SYNC not in status.features.failing
            assert status.health() is Health.HEALTHY
            tg.cancel_scope.cancel()


async def test_500_sync_requests_while_one_runs_read_the_source_at_most_twice(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """``POST /subscriptions/sync`` x500 made 500 gateway calls: now one sync runs, one is
    pending, and every request made meanwhile shares the pending one (and sees its result)."""
    positions = StaticPositionSource({"AAPL"})
    service = make(feed, cache, bus, clock, positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "SPY"})
            before = positions.calls
            positions.delay_s = 1.0
            positions.symbols = {"AAPL", "NVDA"}
            results: list[object] = []

            async def request() -> None:
                results.append(await service.sync_now())

            started = anyio.current_time()
            async with anyio.create_task_group() as requests:
                for _ in range(500):
                    requests.start_soon(request)
            took = anyio.current_time() - started
            assert positions.calls - before <= 2
            assert len(results) == 500 and all(r is not None for r in results)
            assert feed.subscribed() == {"AAPL", "NVDA", "SPY"}
            assert took <= 2.0
            tg.cancel_scope.cancel()
