"""The initial image in virtual time: a fake snapshot source, the scripted feed, the in-memory
cache. A symbol the stream never quotes is priced from the snapshot within 1 s of being
subscribed; a reconnect refreshes a quiet symbol; a snapshot older than the newest price is
refused (``refused_older``) and never published; a hanging source never holds the stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from application.initial_image import InitialImage
from application.keep_connected import KeepConnected
from application.service import MarketDataService, ServiceConfig
from application.status import ServiceStatus
from application.streams import Stream
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.market import MarketEvent, Quote
from domain.price import Price, price_from_quote
from ports.snapshot_source import SnapshotSource
from tests.application.helpers import T0, eventually, quote

S = 1_000_000_000
SYMBOLS = frozenset({"AAPL", "QUIET"})


class FakeSnapshots:
    """Answers from ``quotes`` after ``latency_s``; ``gate`` (when set) holds every answer."""

    def __init__(self, quotes: dict[str, Quote], latency_s: float = 0.2) -> None:
        self.quotes = quotes
        self.latency_s = latency_s
        self.gate: anyio.Event | None = None
        self.calls: list[tuple[AssetClass, tuple[str, ...]]] = []

    async def latest_quotes(self, asset_class: AssetClass, symbols: Sequence[str]) -> list[Quote]:
        self.calls.append((asset_class, tuple(symbols)))
        await anyio.sleep(self.latency_s)
        if self.gate is not None:
            await self.gate.wait()
        return [self.quotes[s] for s in symbols if s in self.quotes]


def make(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    source: SnapshotSource,
) -> tuple[MarketDataService, InitialImage]:
    cfg = ServiceConfig(static_symbols=SYMBOLS, symbol_limit=None, source="IEX")
    service = MarketDataService(feed, cache, bus, clock, cfg, rng=lambda: 0.5)
    handler = service.stream.handler_for("IEX")
    image = InitialImage(source, dict.fromkeys(AssetClass, handler), service.status)
    service.subscribed_listeners.append(image.on_subscribed)
    return service, image


def published(bus: InMemoryEventBus, symbol: str) -> list[int]:
    return [p.ts_event_ns for p in bus.published if p.symbol == symbol]


async def test_a_symbol_the_stream_never_quotes_is_priced_from_the_snapshot_within_1_s(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    old = T0 - 3600 * S  # the market is closed: the last quote is an hour old, and says so
    source = FakeSnapshots({"QUIET": quote("QUIET", 10.01, 10.02, ts_ns=old)})
    service, image = make(feed, cache, bus, clock, source)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(image.run)
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            with anyio.fail_after(1.0):
                await eventually(lambda: "QUIET" in cache.values)
            price = cache.values["QUIET"]
            assert str(price.mid) == "10.015"
            assert price.ts_event_ns == old  # its true timestamp: consumers see the age
            assert published(bus, "QUIET") == [old]
            assert service.status.counters["snapshot_quotes"] == 1
            assert service.status.counters["snapshot_missing"] == 1  # AAPL: none in the source
            tg.cancel_scope.cancel()


async def test_after_a_reconnect_a_quiet_symbols_price_is_refreshed_from_the_snapshot(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    source = FakeSnapshots({"QUIET": quote("QUIET", 10.0, 10.2, ts_ns=T0 - 60 * S)})
    service, image = make(feed, cache, bus, clock, source)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(image.run)
            await tg.start(service.run)
            await eventually(lambda: "QUIET" in cache.values)
            assert cache.values["QUIET"].mid == 10.1
            # While the stream is down, QUIET trades once; the venue will not quote it again.
            feed.drop_connection()
            source.quotes["QUIET"] = quote("QUIET", 11.0, 11.2, ts_ns=clock.now_ns())
            await feed.wait_until(lambda: len(feed.sessions) == 2 and feed.subscribed() == SYMBOLS)
            with anyio.fail_after(1.0):
                await eventually(lambda: cache.values["QUIET"].mid == 11.1)
            assert len(published(bus, "QUIET")) == 2
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("newer_from", ["stream", "cache"])
async def test_a_snapshot_older_than_the_cached_price_is_refused_and_never_published(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    newer_from: str,
) -> None:
    """``stream``: the stream quoted AAPL while the snapshot was on its way (the in-memory
    guard). ``cache``: the newer price was cached before this run (the store's guard)."""
    source = FakeSnapshots({"AAPL": quote("AAPL", 99.0, 99.5, ts_ns=T0 - 5 * S)})
    source.gate = anyio.Event()
    service, image = make(feed, cache, bus, clock, source)
    if newer_from == "cache":
        newer = price_from_quote(quote("AAPL", 150.0, 150.5, ts_ns=T0 - S), "IEX")
        assert isinstance(newer, Price)
        await cache.put_many([newer])
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(image.run)
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            if newer_from == "stream":
                feed.push(quote("AAPL", 150.0, 150.5, ts_ns=T0 - S))
                await eventually(lambda: "AAPL" in cache.values)
            source.gate.set()
            await eventually(lambda: service.status.counters["refused_older"] == 1)
            await service.stream.flush(1.0)
            assert cache.values["AAPL"].mid == 150.25
            assert T0 - 5 * S not in published(bus, "AAPL")
            assert service.status.counters["snapshot_quotes"] == 1
            tg.cancel_scope.cancel()


async def test_a_hanging_snapshot_source_never_holds_the_stream(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    source = FakeSnapshots({"QUIET": quote("QUIET", 1.0, 2.0)})
    source.gate = anyio.Event()  # never set: the REST call never answers
    service, image = make(feed, cache, bus, clock, source)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(image.run)
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            start = anyio.current_time()
            feed.push(quote("AAPL", 150.0, 150.5, ts_ns=clock.now_ns()))
            await eventually(lambda: "AAPL" in cache.values)
            assert anyio.current_time() - start < 0.1
            assert source.calls  # asked, still waiting
            assert "QUIET" not in cache.values
            tg.cancel_scope.cancel()


async def test_a_single_class_streams_symbols_are_asked_for_in_its_class_others_by_their_name(
    clock: VirtualClock,
) -> None:
    """ODD is a crypto symbol whose name reads like a stock: from the crypto stream it is asked
    for as crypto. A stream serving two classes asks for each symbol in the class of its name.
    What the source answers goes to that class's handler; the counters add up across rounds."""
    source = FakeSnapshots(
        {s: quote(s, 1.0, 1.02, ts_ns=T0) for s in ("ODD", "AAPL")}, latency_s=0.0
    )
    handled: dict[AssetClass, list[str]] = {cls: [] for cls in AssetClass}

    def handler(cls: AssetClass) -> Callable[[Sequence[MarketEvent]], None]:
        return lambda events: handled[cls].extend(e.symbol for e in events)

    status = ServiceStatus(started_at=0.0)
    image = InitialImage(source, {cls: handler(cls) for cls in AssetClass}, status)
    feed = ScriptedQuoteFeed(clock)

    def stream(classes: frozenset[AssetClass]) -> Stream:
        keep = KeepConnected(feed, clock, status, BackoffPolicy(), lambda events: None)
        return Stream("s", classes, feed, status, keep)

    crypto = stream(frozenset({AssetClass.CRYPTO}))
    two = stream(frozenset({AssetClass.US_EQUITY, AssetClass.CRYPTO}))
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(image.run)
            image.on_subscribed(crypto, frozenset({"ODD", "GONE"}))
            c = status.counters  # every symbol asked for is counted, found or missing
            await eventually(lambda: c["snapshot_quotes"] + c["snapshot_missing"] == 2)
            image.on_subscribed(two, frozenset({"AAPL", "BTC/USD"}))
            await eventually(lambda: c["snapshot_quotes"] + c["snapshot_missing"] == 4)
            tg.cancel_scope.cancel()
    assert source.calls[0] == (AssetClass.CRYPTO, ("GONE", "ODD"))
    assert set(source.calls[1:]) == {
        (AssetClass.US_EQUITY, ("AAPL",)),
        (AssetClass.CRYPTO, ("BTC/USD",)),
    }
    assert handled == {
        AssetClass.US_EQUITY: ["AAPL"],
        AssetClass.CRYPTO: ["ODD"],
        AssetClass.US_OPTION: [],
    }
    assert status.counters["snapshot_quotes"] == 2
    assert status.counters["snapshot_missing"] == 2
