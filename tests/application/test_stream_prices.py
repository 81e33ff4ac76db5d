"""Streaming prices: exact mids, ordering, no-mid counting, conflation, store outage, flush."""

from __future__ import annotations

import logging

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from application.status import FUTURE_REFUSAL_DEGRADED_S, ServiceStatus, StoreState
from application.stream_prices import StreamMidPrices
from domain.market import Quote
from domain.price import Price, exact_mid
from domain.staleness import skew_ns, too_far_ahead
from ports.price_cache import PartialWrite
from tests.application.helpers import T0, eventually, quote


class StalledCache(InMemoryPriceCache):
    """A cache whose writes hang until ``release`` is set: the writer falls behind."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.release = anyio.Event()
        self.batches: list[int] = []

    async def put_many(self, prices):  # type: ignore[no-untyped-def]
        await self.release.wait()
        self.batches.append(len(prices))
        return await super().put_many(prices)


def make(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock, **kw: int
) -> tuple[StreamMidPrices, ServiceStatus]:
    status = ServiceStatus(started_at=0.0)
    return StreamMidPrices(cache, bus, clock, status, **kw), status  # type: ignore[arg-type]


async def test_every_price_is_written_and_published_in_order_while_the_writer_keeps_up(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, status = make(cache, bus, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            for i in range(200):
                stream.handle([quote(s, 100 + i / 100, 100.02 + i / 100, T0 + i) for s in "ABC"])
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    for symbol in "ABC":
        seen = [p.ts_event_ns for p in bus.published if p.symbol == symbol]
        assert seen == [T0 + i for i in range(200)]
    assert status.counters["conflated"] == 0
    assert status.counters["published"] == 600
    assert cache.values["A"].mid == 102.0


async def test_mid_is_exact_in_decimal_terms(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, _ = make(cache, bus, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle(
                [
                    quote("AAPL", 150.25, 150.27),
                    quote("EUR", 1.0001, 1.0002),
                    quote("X", 305.95, 305.97),
                ]
            )
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert b'"mid":150.26,' in cache.values["AAPL"].to_json()
    assert b'"mid":1.00015,' in cache.values["EUR"].to_json()
    assert b'"mid":305.96,' in cache.values["X"].to_json()


async def test_empty_sides_and_crossed_quotes_are_counted_and_never_cached(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, status = make(cache, bus, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle(
                [
                    quote("A", 0.0, 10.0),
                    quote("B", 10.0, 0.0),
                    quote("C", 10.1, 10.0),
                    quote("D", 10.0, 10.0),
                ]
            )
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert set(cache.values) == {"D"}  # a locked quote is a price
    assert status.counters["no_mid_empty_bid"] == 1
    assert status.counters["no_mid_empty_ask"] == 1
    assert status.counters["no_mid_crossed"] == 1


async def test_an_out_of_order_quote_is_refused(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, status = make(cache, bus, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("A", 10.0, 10.2, T0 + 2)])
            await stream.wait_idle()
            stream.handle([quote("A", 9.0, 9.2, T0 + 1)])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert cache.values["A"].ts_event_ns == T0 + 2
    assert [p.ts_event_ns for p in bus.published] == [T0 + 2]
    assert status.counters["refused_older"] == 1


async def test_a_stalled_writer_conflates_to_latest_per_symbol_with_memory_bounded(
    bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    cache = StalledCache(clock)
    stream, status = make(cache, bus, clock, max_pending=1_000)
    symbols = [f"S{i}" for i in range(50)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            peak = 0
            for i in range(400):  # 20,000 quotes while the writer is stuck
                stream.handle([quote(s, 10 + i / 100, 10.02 + i / 100, T0 + i) for s in symbols])
                peak = max(peak, stream.pending)
            assert peak <= 1_000 + len(symbols)
            assert status.counters["conflated"] > 18_000
            cache.release.set()
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    # The newest price of every symbol reached the cache; none older was written over it.
    assert all(cache.values[s].ts_event_ns == T0 + 399 for s in symbols)
    counted = status.counters
    assert counted["prices_written"] + counted["conflated"] == 20_000


async def test_store_outage_keeps_latest_and_writes_it_on_recovery(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, status = make(cache, bus, clock, max_pending=100)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            cache.fail_writes = True
            for i in range(1_000):
                stream.handle([quote(s, 1 + i / 100, 1.01 + i / 100, T0 + i) for s in "XYZ"])
                if i % 50 == 0:
                    await anyio.sleep(0.1)  # virtual time (MockClock): lets retries run
                assert stream.pending <= 100 + 3
            await eventually(lambda: status.store is StoreState.DEGRADED)
            assert status.counters["cache_write_errors"] > 0
            cache.fail_writes = False
            recovered_at = anyio.current_time()
            await eventually(lambda: status.store is StoreState.OK, step_s=0.001)
            assert anyio.current_time() - recovered_at <= 1.0
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert {s: cache.values[s].ts_event_ns for s in "XYZ"} == {s: T0 + 999 for s in "XYZ"}


async def test_a_long_outage_stays_conflated_and_the_first_write_after_it_is_the_latest(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Regression (fault suite, Redis kill -9 under load): a failed retry of the conflated
    batch used to drop back to lossless queueing, so the queue refilled to ``max_pending``
    again and again and the first write after recovery carried the oldest queued prices."""
    stream, status = make(cache, bus, clock, max_pending=100)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            cache.fail_writes = True
            for i in range(2_000):
                stream.handle([quote(s, 1 + i / 100, 1.01 + i / 100, T0 + i) for s in "XYZ"])
                if i > 200:  # once conflated, it stays one price per symbol
                    assert stream.pending <= 3
                if i % 20 == 0:
                    await anyio.sleep(0.5)  # virtual time: failed retries happen meanwhile
            assert status.counters["cache_write_errors"] > 10
            cache.fail_writes = False
            await eventually(lambda: status.store is StoreState.OK, step_s=0.001)
            tg.cancel_scope.cancel()
    assert status.counters["prices_written"] == 3  # one write, the latest of each symbol
    assert {s: cache.values[s].ts_event_ns for s in "XYZ"} == {s: T0 + 1_999 for s in "XYZ"}


async def test_from_the_second_failed_write_an_outage_keeps_one_price_per_symbol(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Issue 11 (store outage): ARCHITECTURE says the writer keeps one price per symbol during
    an outage; it kept the whole backlog until ``max_pending`` (50,000 by default, ~25 s at
    2,000 quotes/s). Now the second failed write in a row conflates (a single failure is
    retried losslessly): pending never exceeds the number of symbols while the store is down."""
    stream, status = make(cache, bus, clock)  # the default max_pending (50,000)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            cache.fail_writes = True
            stream.handle([quote(s, 1.0, 1.01, T0) for s in "XYZ"])
            await eventually(lambda: status.counters["cache_write_errors"] >= 2)
            for i in range(1, 3_000):
                stream.handle([quote(s, 1 + i / 100, 1.01 + i / 100, T0 + i) for s in "XYZ"])
                assert stream.pending <= 3, (i, stream.pending)
                if i % 100 == 0:
                    await anyio.sleep(0.1)  # virtual time: failed retries happen meanwhile
            cache.fail_writes = False
            await eventually(lambda: status.store is StoreState.OK, step_s=0.001)
            tg.cancel_scope.cancel()
    assert {s: cache.values[s].ts_event_ns for s in "XYZ"} == {s: T0 + 2_999 for s in "XYZ"}


async def test_flush_writes_pending_prices_at_shutdown(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, _status = make(cache, bus, clock)
    stream.handle([quote("A", 1.0, 1.2), quote("B", 2.0, 2.2)])
    left = await stream.flush(1.0)
    assert left == 0 and set(cache.values) == {"A", "B"}
    assert isinstance(cache.values["A"], Price)


async def test_flush_counts_what_could_not_be_written_by_the_deadline(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    stream, status = make(cache, bus, clock)
    cache.fail_writes = True
    stream.handle([quote("A", 1.0, 1.2)])
    with anyio.fail_after(10):
        left = await stream.flush(1.0)
    assert left == 1 and status.counters["dropped"] == 1


async def test_prices_a_flush_dropped_are_never_written_later(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Found by the chaos soak (HA scene, seed 11: Redis killed and restarted empty under an
    active/standby pair; SPY published 23 s older after newer). A leader whose lease ends
    flushes; what the flush could not write is counted as dropped, but it stayed pending, so
    the instance's next term as leader wrote those stale prices first: into a store that had
    lost its data they were cached and published, older after newer. Dropped means gone."""
    stream, status = make(cache, bus, clock)
    cache.fail_writes = True
    stream.handle([quote("A", 1.0, 1.2, T0), quote("B", 2.0, 2.2, T0)])
    with anyio.fail_after(10):
        assert await stream.flush(1.0) == 2
    assert stream.pending == 0 and status.pending_writes == 0
    cache.fail_writes = False
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:  # the next term as leader
            await tg.start(stream.run)
            stream.handle([quote("B", 2.1, 2.3, T0 + 5)])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert [(p.symbol, p.ts_event_ns) for p in bus.published] == [("B", T0 + 5)]
    assert set(cache.values) == {"B"}
    assert status.counters["dropped"] == 2


async def test_a_wholly_refused_run_of_writes_is_explained_once(
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another writer (an earlier run) left newer prices in the store. (Stamped at the clock's
    # now, T0: a cached price stamped beyond now + MDS_MAX_FUTURE_SKEW would be replaceable.)
    past = T0 - 10**12
    await cache.put_many([Price("A", 1.0, 1.02, 1.01, T0, "V")])
    stream, status = make(cache, bus, clock)

    def refusals() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "refused all" in r.getMessage()
        ]

    with caplog.at_level(logging.INFO, "application.stream_prices"), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            for i in range(3):  # three batches, all older than the store's price
                stream.handle([quote("A", 100, 100.02, past + i)])
                await stream.wait_idle()
            assert status.counters["refused_older"] == 3
            assert len(refusals()) == 1  # one warning for the run, not one per batch
            assert "MDS_REPLAY_KEEP_TIMES" in refusals()[0]
            stream.handle([quote("A", 100, 100.02, T0 + 1)])  # newer: accepted
            await stream.wait_idle()
            stream.handle([quote("B", 100, 100.02, past)])  # a fresh symbol: accepted
            await stream.wait_idle()
            await cache.put_many([Price("C", 1.0, 1.02, 1.01, T0, "V")])
            stream.handle([quote("C", 100, 100.02, past)])  # a new refused run: warned again
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert len(refusals()) == 2
    assert status.counters["prices_written"] == 2


# -- input bounded in time: quotes stamped in the future --------------------------------------


def received_at(symbol: str, bid: float, ts_event_ns: int, ts_received_ns: int) -> Quote:
    return Quote(symbol, bid, 1, bid + 0.02, 1, "V", "V", (), "C", ts_event_ns, ts_received_ns)


async def test_one_quote_stamped_in_the_future_is_refused_and_does_not_freeze_its_symbol(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """The issue's defect 4: one AAPL quote stamped in 2099 used to be cached and published,
    and every later real quote was refused as older (until restart). Now it is refused and
    counted (never cached, published, nor used by the ordering guard), and the real quotes
    around it flow."""
    stream, status = make(cache, bus, clock)
    now = clock.now_ns()
    year_2099 = 4_070_908_800 * 1_000_000_000
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([received_at("AAPL", 100.0, now - 1_000, now)])
            stream.handle([received_at("AAPL", 500.0, year_2099, now)])
            stream.handle([received_at("AAPL", 101.0, now + 1_000, now + 2_000)])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert [p.bid for p in bus.published] == [100.0, 101.0]
    assert cache.values["AAPL"].bid == 101.0
    assert status.counters["refused_future"] == 1
    assert status.counters["refused_older"] == 0
    assert status.last_future_refusal is not None
    assert "AAPL" in status.last_future_refusal and "2099" in status.last_future_refusal
    assert status.future_refusal_detail(clock.monotonic()) is not None


async def test_the_future_skew_bound_is_the_domain_rule_at_its_edge(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Exactly MDS_MAX_FUTURE_SKEW ahead of the receive time is accepted, 1 ns more refused,
    as :func:`domain.staleness.too_far_ahead` says (the hot loop inlines it)."""
    status = ServiceStatus(started_at=0.0)
    stream = StreamMidPrices(cache, bus, clock, status, max_future_skew_s=2.0)
    now = clock.now_ns()
    edge = now + 2 * 1_000_000_000
    assert not too_far_ahead(edge, now, skew_ns(2.0))
    assert too_far_ahead(edge + 1, now, skew_ns(2.0))
    stream.handle([received_at("A", 1.0, edge, now), received_at("B", 1.0, edge + 1, now)])
    assert status.counters["prices"] == 1 and status.counters["refused_future"] == 1
    # The refusal makes /health degraded for a while, then it is history (the count stays).
    assert status.future_refusal_detail(clock.monotonic()) is not None
    later = clock.monotonic() + FUTURE_REFUSAL_DEGRADED_S + 0.1
    assert status.future_refusal_detail(later) is None


class HalfDownCache(InMemoryPriceCache):
    """A store of two nodes, the one holding "B" down for the first write: that write applies
    the rest and raises PartialWrite naming B's prices."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock, ttl_s=300.0)
        self.down = True
        self.batches: list[list[str]] = []

    async def put_many(self, prices):  # type: ignore[no-untyped-def]
        self.batches.append([p.symbol for p in prices])
        if not self.down:
            return await super().put_many(prices)
        self.down = False
        rest = [p for p in prices if p.symbol != "B"]
        applied = await super().put_many(rest)
        raise PartialWrite("node of B down", applied, [p for p in prices if p.symbol == "B"])


async def test_a_partial_write_counts_what_was_applied_and_retries_only_the_rest(
    bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Issue 11, defect 9: the nodes that applied their part are counted as written and
    published; only the failed node's prices are retried; nothing is counted as refused."""
    cache = HalfDownCache(clock)
    stream, status = make(cache, bus, clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote(s, 1.0, 1.01, T0 + 1) for s in "ABC"])
            await eventually(lambda: status.counters["prices_written"] == 3)
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert cache.batches == [["A", "B", "C"], ["B"]]
    assert status.counters["refused_older"] == 0
    assert status.counters["published"] == 3
    assert status.counters["cache_write_errors"] == 1
    assert {s: p.ts_event_ns for s, p in cache.values.items()} == dict.fromkeys("ABC", T0 + 1)


async def test_on_published_gets_each_published_batch_and_nothing_the_cache_refused(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """The hook the leader's live stream is fed by: exactly what was published, in order."""
    stream, status = make(cache, bus, clock)
    await cache.put_many([Price("B", 1, 2, exact_mid(1, 2), T0 + 100, "V")])  # another writer's
    batches: list[list[Price]] = []
    stream.on_published = lambda prices: batches.append(list(prices))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("A", 1, 2, T0 + 1), quote("B", 1, 2, T0 + 1)])
            await stream.wait_idle()
            stream.handle([quote("A", 2, 3, T0 + 2)])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert [[(p.symbol, p.ts_event_ns) for p in b] for b in batches] == [
        [("A", T0 + 1)],  # B: older than the cached one, refused, not published
        [("A", T0 + 2)],
    ]
    assert [p for b in batches for p in b] == list(bus.published)
    assert status.counters["refused_older"] == 1
