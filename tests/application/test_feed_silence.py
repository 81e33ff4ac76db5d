"""Issue 11 follow-up: /health during a feed stall (virtual time).

The venue stops sending data while it still answers pings. The data watchdog (MDS_DATA_TIMEOUT)
ends the session after that long and reconnects; the new session is connected and subscribed to
a venue that is still silent. /health must say ``degraded`` from the moment the silence passes
the threshold, and stay so across the watchdog's reconnects, until data flows again. Without a
threshold (the default: closed markets and quiet symbols are normal) silence is no fault.
"""

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
from application.status import Health
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.errors import FeedStalled
from tests.application.helpers import T0, eventually, quote

SYMBOLS = frozenset({"AAPL", "MSFT"})
STALL_S = 2.0
BACKOFF = BackoffPolicy(base_s=1.0, cap_s=1.0, jitter=False)


def single(
    clock: VirtualClock,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    feed: ScriptedQuoteFeed,
    stall_after_s: float | None = STALL_S,
) -> MarketDataService:
    config = ServiceConfig(
        static_symbols=SYMBOLS, symbol_limit=None, backoff=BACKOFF, stall_after_s=stall_after_s
    )
    return MarketDataService(feed, cache, bus, clock, config)


async def test_a_stall_degrades_health_at_the_threshold_and_across_watchdog_reconnects(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus, feed: ScriptedQuoteFeed
) -> None:
    service = single(clock, cache, bus, feed)
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            await eventually(lambda: service.connected())
            last_data = anyio.current_time()
            feed.push(quote("AAPL", 10.0, 10.02, T0))
            await eventually(lambda: "AAPL" in cache.values)
            assert service.health() is Health.HEALTHY

            # The venue goes silent (pings would still be answered: the session stays up).
            await anyio.sleep(last_data + STALL_S - 0.1 - anyio.current_time())
            assert service.health() is Health.HEALTHY  # within the threshold: quiet is fine
            await anyio.sleep(0.2)
            assert service.health() is Health.DEGRADED  # the moment the threshold passed
            (silent,) = service.silent_streams()
            assert abs(silent[1] - (anyio.current_time() - last_data)) < 1e-6
            assert "no data for 2.1 s" in service.silence_detail(*silent)

            # The watchdog ends the session; the reconnect subscribes to a venue still silent.
            feed.drop_connection(FeedStalled("no message for 2 s while subscribed"))
            await eventually(lambda: not service.connected())
            assert service.silent_streams() != []  # one silence, through the reconnect
            await eventually(lambda: len(feed.sessions) == 2 and service.connected())
            assert feed.subscribed() == SYMBOLS
            for _ in range(3):  # sampled over the next watchdog period: never healthy
                assert service.health() is Health.DEGRADED
                await anyio.sleep(0.5)
            (silent,) = service.silent_streams()
            assert silent[1] >= STALL_S + BACKOFF.base_s

            # Data flows again: healthy at once.
            feed.push(quote("MSFT", 20.0, 20.02, T0 + 1))
            await eventually(lambda: "MSFT" in cache.values)
            assert service.health() is Health.HEALTHY
            assert service.silent_streams() == []
            tg.cancel_scope.cancel()


async def test_silence_counts_from_the_subscription_when_no_data_came_yet(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus, feed: ScriptedQuoteFeed
) -> None:
    service = single(clock, cache, bus, feed)
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connected() and bool(service.confirmed()))
            subscribed_at = anyio.current_time()
            await anyio.sleep(STALL_S - 0.1)
            assert service.health() is Health.HEALTHY
            await eventually(lambda: service.health() is Health.DEGRADED)
            assert anyio.current_time() - subscribed_at <= STALL_S + 0.02
            tg.cancel_scope.cancel()


async def test_without_a_threshold_a_silent_feed_stays_healthy(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus, feed: ScriptedQuoteFeed
) -> None:
    """The default (MDS_DATA_TIMEOUT=0): an equity stream outside market hours is silent for
    hours, and that is no fault."""
    service = single(clock, cache, bus, feed, stall_after_s=None)
    with anyio.fail_after(4000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: service.connected() and bool(service.confirmed()))
            await anyio.sleep(3600)
            assert service.health() is Health.HEALTHY
            assert service.silent_streams() == []
            tg.cancel_scope.cancel()


async def test_a_silent_stream_is_named_alone_and_a_late_first_symbol_starts_its_own_clock(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    """Crypto stops while stocks flow: degraded, naming the crypto stream only. An options
    stream that gets its first symbol after an hour without any is not silent at once: its
    silence counts from its subscription."""
    stocks, crypto, options = (ScriptedQuoteFeed(clock) for _ in range(3))
    feeds = {AssetClass.US_EQUITY: stocks, AssetClass.CRYPTO: crypto, AssetClass.US_OPTION: options}
    positions = StaticPositionSource({"AAPL", "BTC/USD"})
    config = ServiceConfig(symbol_limit=None, backoff=BACKOFF, stall_after_s=STALL_S)
    service = MarketDataService(dict(feeds), cache, bus, clock, config, positions=positions)
    option = "AAPL250117C00150000"

    async def stocks_flow() -> None:
        while True:
            if stocks.current is not None and stocks.subscribed():
                stocks.push(quote("AAPL", 10.0, 10.02, clock.now_ns()))
            await anyio.sleep(0.5)

    with anyio.fail_after(7200):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await eventually(lambda: stocks.subscribed() == {"AAPL"})
            await eventually(lambda: crypto.subscribed() == {"BTC/USD"})
            tg.start_soon(stocks_flow)
            crypto.push(quote("BTC/USD", 100.0, 100.5, clock.now_ns()))
            await anyio.sleep(STALL_S + 0.5)  # crypto silent from here on
            assert service.health() is Health.DEGRADED
            assert [s.name for s, _ in service.silent_streams()] == ["crypto"]
            assert service.silence_detail(*service.silent_streams()[0]).startswith(
                "crypto stream: no data for"
            )
            crypto.push(quote("BTC/USD", 100.0, 100.5, clock.now_ns()))
            await eventually(lambda: service.health() is Health.HEALTHY)

            await anyio.sleep(3600)
            crypto.push(quote("BTC/USD", 100.0, 100.5, clock.now_ns()))
            positions.symbols = {"AAPL", "BTC/USD", option}
            await service.sync_now()
            await eventually(lambda: options.subscribed() == {option})
            await eventually(lambda: service.connected())
            assert service.health() is Health.HEALTHY  # not "silent for an hour"
            assert service.silent_streams() == []
            tg.cancel_scope.cancel()
