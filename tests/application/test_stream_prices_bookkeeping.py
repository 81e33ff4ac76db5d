"""StreamMidPrices' bookkeeping: the counters and gauges ``/metrics`` and ``/health`` read (they
add up across frames and batches), the writer's retry timeline, its idle and shutdown edges, its
bounds. Pinned with the spy cache (no guarantee of its own) and virtual time."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus
from application.status import ServiceStatus, StoreState
from application.stream_prices import StreamMidPrices
from domain.features import METRICS
from domain.market import Bar, BarKind, Quote, Trade
from domain.price import Price
from domain.timestamps import format_ns
from ports.price_cache import PartialWrite
from tests.application.helpers import T0, quote
from tests.application.spies import SpyPriceCache
from tests.application.stream_harness import running

S = 1_000_000_000


def make(
    clock: VirtualClock, bus: InMemoryEventBus, **kw: float
) -> tuple[StreamMidPrices, SpyPriceCache, ServiceStatus]:
    spy = SpyPriceCache()
    status = ServiceStatus(started_at=0.0)
    return StreamMidPrices(spy, bus, clock, status, **kw), spy, status  # type: ignore[arg-type]


def trade(symbol: str) -> Trade:
    return Trade(symbol, 1, "V", 10.0, 5, (), "C", T0, T0)


def bar(symbol: str) -> Bar:
    return Bar(BarKind.MINUTE, symbol, 1.0, 1.0, 1.0, 1.0, 10, 1, 1.0, T0, T0)


def ahead(symbol: str, seconds: float) -> Quote:
    """A quote stamped ``seconds`` after its receive time (T0)."""
    return Quote(symbol, 1.0, 1, 1.02, 1, "V", "V", (), "C", T0 + int(seconds * S), T0)


# -- counters: each event counted once, by kind, adding up across frames --------------------


async def test_every_event_of_a_frame_is_counted_by_kind_and_the_counts_add_up_across_frames(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """The counters ServiceStatus documents (``/metrics`` exports most of them). Each frame
    mixes kinds, and a trade or a refused quote comes first: the quotes after it in the same
    frame are still handled."""
    stream, _spy, status = make(clock, bus)
    stream.handle(
        [
            trade("A"),
            quote("A", 10.0, 10.2, T0 + 5),
            bar("A"),
            quote("C", 10.1, 10.0, T0),  # crossed
            ahead("F", 60),  # stamped a minute ahead: refused
            quote("B", 20.0, 20.2, T0 + 5),
            quote("A", 9.0, 9.2, T0 + 4),  # older than A@5
        ]
    )
    stream.handle(
        [
            trade("B"),
            ahead("F", 60),
            quote("D", 0.0, 1.0, T0),  # empty bid
            quote("E", 1.0, 0.0, T0),  # empty ask
            quote("C", 10.2, 10.0, T0),  # crossed again
            quote("B", 19.0, 19.2, T0 + 1),  # older than B@5
            quote("G", 30.0, 30.2, T0),
        ]
    )
    counted = {k: v for k, v in status.counters.items() if v}
    assert counted == {
        "trades": 2,
        "other_events": 1,
        "quotes": 11,
        "prices": 3,
        "no_mid_crossed": 2,
        "no_mid_empty_bid": 1,
        "no_mid_empty_ask": 1,
        "refused_future": 2,
        "refused_older": 2,
    }
    assert stream.pending == status.pending_writes == 3


async def test_the_pending_writes_gauge_counts_queued_and_conflated_prices(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=2) as h:
        h.handle(("X", 0, 1.0))
        await h.hold_next_write()  # the writer holds [X@0]
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        assert h.status.pending_writes == 2
        h.handle(("C", 1, 30.0))  # 3 > 2: conflating, one price per symbol
        assert h.status.pending_writes == h.stream.pending == 3
        h.spy.fail_next = 1
        h.release()
        await h.hold_next_write()  # the retry: the failed [X@0] went back under the rest
        assert h.status.pending_writes == 4
        h.release()
        await h.stream.wait_idle()
        assert h.status.pending_writes == 0


async def test_a_store_outage_says_why_in_the_status_and_recovery_clears_it(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:
        h.handle(("A", 1, 10.0))
        await h.hold_next_write()
        h.spy.fail_next = 1
        h.release()
        await h.hold_next_write()  # the retry
        down = (h.status.store, h.status.store_error)
        assert down == (StoreState.DEGRADED, "spy cache: write failing (scripted)")
        h.release()
        await h.stream.wait_idle()
        assert (h.status.store, h.status.store_error) == (StoreState.OK, None)
        assert h.status.counters["cache_write_errors"] == 1


async def test_conflation_counts_every_superseded_price_across_episodes_and_put_backs(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=2) as h:
        # 1. The queue passes max_pending: A@1 and A@2 are superseded by A@3.
        h.handle(("X", 0, 1.0))
        await h.hold_next_write()
        h.handle(("A", 1, 10.0), ("A", 2, 10.1), ("A", 3, 10.2))
        h.release()
        await h.stream.wait_idle()
        assert h.status.counters["conflated"] == 2
        # 2. A failed batch put back would pass max_pending: A@4 is superseded by A@5, and the
        # retry carries the oldest update first (the quote-age metric reads the batch's first).
        h.handle(("A", 4, 10.3), ("B", 4, 20.0))
        await h.hold_next_write()
        h.spy.fail_next = 1
        h.handle(("A", 5, 10.4))
        h.release()
        await h.stream.wait_idle()
        assert [(p.symbol, p.ts_event_ns - T0) for p in h.spy.batches[-1]] == [("B", 4), ("A", 5)]
        assert h.status.counters["conflated"] == 3
        # 3. Conflating again; while it does, a newer A supersedes the pending one and a new
        # symbol joins.
        h.handle(("C", 6, 30.0))
        await h.hold_next_write()
        h.handle(("A", 7, 10.5), ("A", 8, 10.6), ("A", 9, 10.7))
        h.handle(("A", 10, 10.8), ("D", 10, 40.0))
        h.release()
    assert h.status.counters["conflated"] == 6
    assert h.written("A") == [3, 5, 10]
    assert h.written("D") == [10]
    assert h.status.counters["prices_written"] == 7  # X, A@3, B, A@5, C, A@10, D


async def test_a_queue_of_exactly_max_pending_stays_lossless(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=3) as h:
        h.handle(("X", 0, 1.0))
        await h.hold_next_write()
        h.handle(("A", 1, 10.0), ("A", 2, 10.1), ("A", 3, 10.2))  # 3 == max_pending
        assert h.stream.pending == 3
        h.release()
    assert h.written("A") == [1, 2, 3]
    assert h.status.counters["conflated"] == 0


async def test_the_default_batch_is_5000_prices(clock: VirtualClock, bus: InMemoryEventBus) -> None:
    """The writer's default slice (one Redis pipeline): a backlog of 5,001 takes two writes."""
    async with running(clock, bus) as h:
        h.handle(("X", 0, 1.0))
        await h.hold_next_write()
        h.stream.handle([quote("A", 10.0, 10.02, T0 + ts) for ts in range(1, 5_002)])
        h.release()
    assert [len(b) for b in h.spy.batches] == [1, 5_000, 1]


# -- a partial write (a store node down) --------------------------------------------------------


class PartlyDownCache(SpyPriceCache):
    """The next write applies ``applied``, leaves ``unwritten`` for the retry and refuses the
    rest as older (raising PartialWrite); later writes apply everything."""

    def __init__(self) -> None:
        super().__init__()
        self.partial: tuple[set[str], set[str]] | None = None

    async def put_many(self, prices: Sequence[Price]) -> Sequence[Price]:
        if self.partial is None:
            return await super().put_many(prices)
        applied_symbols, unwritten_symbols = self.partial
        self.partial = None
        applied = await super().put_many([p for p in prices if p.symbol in applied_symbols])
        unwritten = [p for p in prices if p.symbol in unwritten_symbols]
        raise PartialWrite("one store node down", applied, unwritten)


async def test_a_partial_write_adds_to_the_counters_what_was_applied_refused_and_retried(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    cache = PartlyDownCache()
    status = ServiceStatus(started_at=0.0)
    stream = StreamMidPrices(cache, bus, clock, status)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("X", 1.0, 1.02, T0 + 2), quote("X", 1.0, 1.02, T0 + 1)])
            await stream.wait_idle()  # X@2 written, X@1 refused by the use case
            cache.partial = ({"A"}, {"B"})  # C: refused by the store
            stream.handle([quote(s, 1.0, 1.02, T0 + 3) for s in "ABC"])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert [[p.symbol for p in b] for b in cache.batches] == [["X"], ["A"], ["B"]]
    assert status.counters["prices_written"] == 3
    assert status.counters["published"] == 3
    assert status.counters["refused_older"] == 2
    assert [p.symbol for p in bus.published] == ["X", "A", "B"]


# -- metrics observer ---------------------------------------------------------------------------


class RecordingObserver:
    def __init__(self) -> None:
        self.writes: list[tuple[float, int]] = []
        self.ages: list[float] = []

    def observe_write(self, seconds: float, count: int) -> None:
        self.writes.append((seconds, count))

    def observe_quote_age(self, seconds: float) -> None:
        self.ages.append(seconds)


async def test_the_observer_gets_each_writes_duration_size_and_its_oldest_quotes_age(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    observer = RecordingObserver()
    spy = SpyPriceCache()
    spy.latency_s = 0.25
    stream = StreamMidPrices(spy, bus, clock, ServiceStatus(started_at=0.0), observer=observer)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            await anyio.sleep(10)  # the loop's clock is well past 0
            now = clock.now_ns()
            stream.handle(
                [quote("A", 1.0, 1.02, now - 1_000 * S), quote("B", 1.0, 1.02, now - 2 * S)]
            )
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    [(seconds, count)] = observer.writes
    assert seconds == pytest.approx(0.25, abs=1e-9) and count == 2
    assert observer.ages == [pytest.approx(1_000.25, abs=1e-7)]


class BrokenObserver(RecordingObserver):
    def observe_write(self, seconds: float, count: int) -> None:
        raise ValueError("histogram exploded")


async def write_one_quote(stream: StreamMidPrices) -> None:
    """Run ``stream`` until one quote has been written (its observer called), then stop it."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("A", 1.0, 1.02)])
            await stream.wait_idle()
            tg.cancel_scope.cancel()


async def test_a_failing_observer_is_reported_with_its_error_type(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    status = ServiceStatus(started_at=0.0)
    await write_one_quote(
        StreamMidPrices(SpyPriceCache(), bus, clock, status, observer=BrokenObserver())
    )
    assert status.features.failing == {METRICS: "observer: ValueError: histogram exploded"}


async def test_a_working_observer_never_clears_a_metrics_failure_it_did_not_cause(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    status = ServiceStatus(started_at=0.0)
    status.features.fail(METRICS, "exporter: port 9100 in use")
    await write_one_quote(
        StreamMidPrices(SpyPriceCache(), bus, clock, status, observer=RecordingObserver())
    )
    assert status.features.failing == {METRICS: "exporter: port 9100 in use"}


# -- the retry timeline ----------------------------------------------------------------------------


async def test_failed_writes_are_retried_after_50_ms_doubling_to_250_ms_and_a_success_resets_it(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:  # the default retry_base_s / retry_cap_s
        h.spy.fail_next = 6
        h.handle(("A", 1, 10.0))
        await h.stream.wait_idle()
        first = list(h.spy.attempts_at)
        h.spy.fail_next = 2
        h.handle(("A", 2, 10.1))
        await h.stream.wait_idle()
        second = h.spy.attempts_at[len(first) :]
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert gaps == pytest.approx([0.05, 0.1, 0.2, 0.25, 0.25, 0.25])
    assert [b - a for a, b in itertools.pairwise(second)] == pytest.approx([0.05, 0.1])
    assert h.written("A") == [1, 2]


# -- idle, cancellation, shutdown ---------------------------------------------------------------


async def test_wait_idle_returns_at_once_when_nothing_was_handed_over(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    stream, _spy, _status = make(clock, bus)
    with anyio.fail_after(1):
        await stream.wait_idle()


async def test_wait_idle_waits_for_a_write_in_flight(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:
        h.handle(("A", 1, 10.0))
        await h.hold_next_write()  # nothing pending, but A@1 is being written
        with anyio.move_on_after(1) as waited:
            await h.stream.wait_idle()
        assert waited.cancelled_caught
        h.release()
        await h.stream.wait_idle()
        assert h.written("A") == [1]


async def test_a_write_cancelled_midway_keeps_its_prices_for_the_flush(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    stream, spy, _status = make(clock, bus)
    spy.gate = anyio.Event()  # never opened: the write hangs
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("A", 1.0, 1.02, T0 + 1), quote("B", 2.0, 2.02, T0 + 1)])
            await spy.entered.wait()
            tg.cancel_scope.cancel()  # shutdown, or the lease lost, mid-write
    assert stream.pending == 2
    spy.gate = None
    assert await stream.flush(1.0) == 0
    assert [p.symbol for p in spy.written] == ["A", "B"]


async def test_the_shutdown_flush_writes_even_inside_a_cancelled_scope(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    stream, spy, _status = make(clock, bus)
    spy.latency_s = 0.01  # a write waits on the store (a checkpoint)
    stream.handle([quote("A", 1.0, 1.02, T0 + 1)])
    left: list[int] = []
    with anyio.fail_after(10), anyio.CancelScope() as shutdown:
        shutdown.cancel()
        left.append(await stream.flush(1.0))
    assert left == [0]
    assert [p.symbol for p in spy.written] == ["A"]


async def test_every_flush_adds_what_it_dropped_and_after_a_drop_prices_queue_losslessly(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    stream, spy, status = make(clock, bus)
    spy.fail_next = 10**6  # the store is down for both flushes
    stream.handle([quote("A", 1.0, 1.02, T0 + 1), quote("B", 2.0, 2.02, T0 + 1)])
    with anyio.fail_after(10):
        assert await stream.flush(0.2) == 2  # its failed retries switched to conflation
        stream.handle([quote("C", 1.0, 1.02, T0 + 1)])
        assert await stream.flush(0.2) == 1
    assert status.counters["dropped"] == 3
    spy.fail_next = 0
    stream.handle([quote("A", 1.0, 1.02, T0 + 2)])
    stream.handle([quote("A", 1.1, 1.12, T0 + 3)])
    assert stream.pending == 2  # lossless again: both queued
    with anyio.fail_after(10):
        assert await stream.flush(1.0) == 0
    assert [p.ts_event_ns - T0 for p in spy.written] == [2, 3]
    assert status.counters["conflated"] == 0


# -- the unpriced gauge, the refusal detail, the bounds -------------------------------------------


async def test_count_unpriced_counts_symbols_without_a_price_at_or_after_the_time(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """``mds_subscribed_symbols_without_fresh_price``."""
    stream, _spy, _status = make(clock, bus)
    stream.handle([quote("A", 1.0, 1.02, T0 + 5), quote("B", 1.0, 1.02, T0 + 4)])
    assert stream.count_unpriced(["A", "B", "C"], T0 + 5) == 2  # B older, C never
    assert stream.count_unpriced(["A", "B", "C"], T0 + 4) == 1
    assert stream.count_unpriced(["A", "C"], 0) == 1  # never priced: unpriced since any time
    assert stream.count_unpriced([], T0) == 0


async def test_the_future_refusal_detail_names_the_symbol_its_time_and_how_far_ahead(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """The text ``/health`` shows while the refusal is recent."""
    stream, _spy, status = make(clock, bus, max_future_skew_s=2.0)
    stream.handle([ahead("AAPL", 3.5)])
    assert status.last_future_refusal == (
        f"AAPL stamped {format_ns(T0 + 3 * S + S // 2)}, 3.500 s ahead of its receive time"
    )


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"max_pending": 0}, "max_pending and max_batch must be >= 1"),
        ({"max_batch": 0}, "max_pending and max_batch must be >= 1"),
        ({"max_future_skew_s": 0.0}, "max_future_skew_s must be > 0, got 0.0"),
        ({"max_future_skew_s": -1.0}, "max_future_skew_s must be > 0, got -1.0"),
    ],
)
async def test_bounds_that_cannot_work_are_refused_at_construction(
    clock: VirtualClock, bus: InMemoryEventBus, bounds: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        make(clock, bus, **bounds)
    assert str(refused.value) == message


async def test_the_smallest_bounds_that_work_are_accepted(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    stream, spy, _status = make(clock, bus, max_pending=1, max_batch=1, max_future_skew_s=0.5)
    stream.handle([quote("A", 1.0, 1.02, T0 + 1)])
    with anyio.fail_after(10):
        assert await stream.flush(1.0) == 0
    assert [p.symbol for p in spy.written] == ["A"]


async def test_the_in_process_listener_gets_every_published_batch_also_a_partial_writes_part(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """``on_published`` (the live stream's feed on the streaming instance) sees what the bus
    got, batch by batch, in order: the applied part of a partial write, then its retry."""
    cache = PartlyDownCache()
    stream = StreamMidPrices(cache, bus, clock, ServiceStatus(started_at=0.0))
    heard: list[list[tuple[str, int]]] = []
    stream.on_published = lambda prices: heard.append(
        [(p.symbol, p.ts_event_ns - T0) for p in prices]
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            stream.handle([quote("X", 1.0, 1.02, T0 + 1), quote("Y", 1.0, 1.02, T0 + 1)])
            await stream.wait_idle()
            cache.partial = ({"A"}, {"B"})
            stream.handle([quote(s, 1.0, 1.02, T0 + 2) for s in "AB"])
            await stream.wait_idle()
            tg.cancel_scope.cancel()
    assert heard == [[("X", 1), ("Y", 1)], [("A", 2)], [("B", 2)]]
    assert [x for batch in heard for x in batch] == [
        (p.symbol, p.ts_event_ns - T0) for p in bus.published
    ]


async def test_unwritten_counts_the_pending_prices_and_the_batch_being_written(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """What a second shutdown signal would drop: pending, plus the write not yet returned."""
    async with running(clock, bus) as h:
        assert h.stream.unwritten == 0  # nothing handed over yet
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        await h.hold_next_write()
        h.handle(("A", 2, 10.1))
        assert (h.stream.pending, h.stream.unwritten) == (1, 3)
        h.spy.fail_next = 1
        h.release()
        await h.hold_next_write()  # the retry: all three again, in one batch
        assert (h.stream.pending, h.stream.unwritten) == (0, 3)
        h.release()
        await h.stream.wait_idle()
        assert h.stream.unwritten == 0
