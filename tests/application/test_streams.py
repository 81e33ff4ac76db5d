"""Three streams, one service (virtual time): routing by class, lazy start, failures in
their lane."""

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
from application.status import Health
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.errors import FatalFeedError, FeedDisconnected
from tests.application.helpers import T0, eventually, quote

OPTION = "AAPL250117C00150000"


class Three:
    def __init__(self, clock: VirtualClock) -> None:
        self.stocks = ScriptedQuoteFeed(clock)
        self.crypto = ScriptedQuoteFeed(clock)
        self.options = ScriptedQuoteFeed(clock)

    def feeds(self) -> dict[AssetClass, ScriptedQuoteFeed]:
        return {
            AssetClass.US_EQUITY: self.stocks,
            AssetClass.CRYPTO: self.crypto,
            AssetClass.US_OPTION: self.options,
        }


def make(
    clock: VirtualClock,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    feeds: Three,
    positions: StaticPositionSource,
    static: frozenset[str] = frozenset(),
    limits: dict[AssetClass, int | None] | None = None,
) -> MarketDataService:
    config = ServiceConfig(
        static_symbols=static,
        symbol_limit=None,
        symbol_limits=limits or {},
        source="IEX",
        sources={AssetClass.CRYPTO: "CRYPTO_US", AssetClass.US_OPTION: "INDICATIVE"},
        backoff=BackoffPolicy(base_s=1.0, cap_s=4.0, jitter=False),
    )
    return MarketDataService(
        dict(feeds.feeds()), cache, bus, clock, config, positions=positions, rng=lambda: 0.5
    )


async def test_each_symbol_goes_to_its_class_stream_and_every_class_is_priced(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    positions = StaticPositionSource(
        {"AAPL", "BTC/USD", OPTION, "ODD"}, classes={"ODD": AssetClass.CRYPTO}
    )
    service = make(clock, cache, bus, feeds, positions, static=frozenset({"SHIB/USD", "MSFT"}))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connected())
            assert feeds.stocks.subscribed() == {"AAPL", "MSFT"}
            assert feeds.crypto.subscribed() == {"BTC/USD", "SHIB/USD", "ODD"}
            assert feeds.options.subscribed() == {OPTION}
            feeds.stocks.push(quote("AAPL", 150.25, 150.27))
            feeds.crypto.push(quote("SHIB/USD", 0.00000912, 0.00000913))
            feeds.options.push(quote(OPTION, 1.05, 1.1))
            await eventually(lambda: len(cache.values) == 3)
            prices = await cache.get_many(["AAPL", "SHIB/USD", OPTION])
            assert prices["SHIB/USD"].mid == 0.000009125
            assert prices[OPTION].mid == 1.075
            # Each stream's prices name their feed.
            assert [prices[s].exchange for s in ("AAPL", "SHIB/USD", OPTION)] == [
                "IEX", "CRYPTO_US", "INDICATIVE"
            ]  # fmt: skip
            assert service.health() is Health.HEALTHY
            assert service.confirmed() == {"AAPL", "MSFT", "BTC/USD", "SHIB/USD", "ODD", OPTION}
            tg.cancel_scope.cancel()


async def test_a_stream_connects_only_when_it_has_symbols_and_closes_when_they_go(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    positions = StaticPositionSource({"AAPL"})
    service = make(clock, cache, bus, feeds, positions)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feeds.stocks.wait_until(lambda: feeds.stocks.subscribed() == {"AAPL"})
            await anyio.sleep(5)
            assert feeds.crypto.connect_times == [] and feeds.options.connect_times == []
            positions.symbols = {"AAPL", "ETH/USD"}
            await service.sync_now()
            await feeds.crypto.wait_until(lambda: feeds.crypto.subscribed() == {"ETH/USD"})
            positions.symbols = {"AAPL"}
            await service.sync_now()
            await feeds.crypto.wait_until(lambda: feeds.crypto.current is None)
            assert feeds.options.connect_times == []
            assert service.health() is Health.HEALTHY  # an idle stream is not a problem
            tg.cancel_scope.cancel()


async def test_a_plan_without_options_disables_only_the_options_stream(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    feeds.options.fail_next_connect(
        FatalFeedError("insufficient subscription", code=409, lane_only=True), times=5
    )
    positions = StaticPositionSource({"AAPL", "BTC/USD", OPTION})
    service = make(clock, cache, bus, feeds, positions)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            stream = service.streams[2]
            await eventually(lambda: stream.disabled is not None)
            assert len(feeds.options.connect_times) == 1  # never retried
            await feeds.crypto.wait_until(lambda: feeds.crypto.subscribed() == {"BTC/USD"})
            feeds.stocks.push(quote("AAPL", 1.0, 1.02))
            feeds.crypto.push(quote("BTC/USD", 97000.5, 97001.5))
            await eventually(lambda: len(cache.values) == 2)
            assert service.health() is Health.DEGRADED
            assert "us_option stream disabled" in service.stream_details()[0]
            assert service.status.fatal_error is None
            # Later syncs leave the disabled stream alone.
            await service.sync_now()
            assert len(feeds.options.connect_times) == 1
            tg.cancel_scope.cancel()


async def test_bad_credentials_on_any_stream_stop_the_whole_service(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    feeds.crypto.fail_next_connect(FatalFeedError("auth failed", code=402))
    service = make(clock, cache, bus, feeds, StaticPositionSource({"AAPL", "BTC/USD"}))
    with anyio.fail_after(60), pytest.raises(FatalFeedError) as caught:
        await service.run()
    assert caught.value.code == 402
    assert service.health() is Health.FAILED


async def test_one_streams_drops_never_disturb_the_others(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    service = make(clock, cache, bus, feeds, StaticPositionSource({"AAPL", "BTC/USD", OPTION}))
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connected())
            stocks_session = feeds.stocks.current
            for _ in range(3):
                feeds.crypto.drop_connection(FeedDisconnected("crypto drop"))
                await anyio.sleep(0.1)
                await feeds.crypto.wait_until(lambda: feeds.crypto.subscribed() == {"BTC/USD"})
            assert len(feeds.crypto.sessions) == 4  # re-subscribed after each drop
            assert feeds.stocks.current is stocks_session and len(feeds.stocks.sessions) == 1
            assert len(feeds.options.sessions) == 1
            feeds.stocks.push(quote("AAPL", 1.0, 1.02, T0 + 1))
            await eventually(lambda: "AAPL" in cache.values)
            tg.cancel_scope.cancel()


async def test_each_stream_has_its_own_symbol_limit(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    feeds = Three(clock)
    positions = StaticPositionSource({"AAPL", "MSFT", "BTC/USD", "ETH/USD", "SOL/USD"})
    service = make(clock, cache, bus, feeds, positions, limits={AssetClass.CRYPTO: 2})
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connected())
            assert feeds.stocks.subscribed() == {"AAPL", "MSFT"}
            assert feeds.crypto.subscribed() == {"BTC/USD", "ETH/USD"}
            assert service.status.left_out == ("SOL/USD",)
            tg.cancel_scope.cancel()


async def test_symbols_of_a_class_without_a_stream_are_reported_unrouted(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    stocks = ScriptedQuoteFeed(clock)
    config = ServiceConfig(symbol_limit=None)
    service = MarketDataService(
        {AssetClass.US_EQUITY: stocks},
        cache,
        bus,
        clock,
        config,
        positions=StaticPositionSource({"AAPL", "BTC/USD"}),
    )
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await stocks.wait_until(lambda: stocks.subscribed() == {"AAPL"})
            assert service.status.unrouted == {"BTC/USD"}
            tg.cancel_scope.cancel()
