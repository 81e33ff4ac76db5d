"""StreamMidPrices' own guarantees, pinned with a spy cache that has none of its own.

The spy (``tests/application/spies.py``) writes whatever it is given, so each test here fails
when the use case's guarantee breaks, not only when the adapter's would. Every write is gated:
the test holds the writer inside ``put_many`` (``spy.entered``), arranges the pending queue
exactly, then lets it go, so no later traffic can hide a wrong intermediate state.
"""

from __future__ import annotations

import anyio

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from application.status import ServiceStatus, StoreState
from application.stream_prices import StreamMidPrices
from domain.price import Price
from tests.application.helpers import T0, eventually, quote
from tests.application.spies import SpyPriceCache
from tests.application.stream_harness import running

# -- never older over newer: the use case's own guard ------------------------------------------


async def test_the_use_case_refuses_an_older_quote_even_when_the_store_would_take_it(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:
        h.handle(("A", 2, 10.0))
        await h.stream.wait_idle()
        h.handle(("A", 1, 9.0))
    assert h.written("A") == [2]
    assert h.spy.values["A"].ts_event_ns == T0 + 2
    assert [p.ts_event_ns - T0 for p in bus.published] == [2]
    assert h.status.counters["refused_older"] == 1
    assert h.status.counters["prices"] == 1


async def test_an_older_quote_in_the_same_frame_is_refused_by_the_use_case(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:
        h.handle(("A", 5, 10.0), ("A", 4, 9.0), ("A", 6, 11.0))
    assert h.written("A") == [5, 6]
    assert h.status.counters["refused_older"] == 1


async def test_a_late_older_quote_never_replaces_a_newer_pending_price_while_conflating(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=2) as h:
        h.handle(("A", 1, 10.0))
        await h.hold_next_write()  # the writer holds [A@1]
        h.handle(("A", 5, 10.5), ("B", 5, 20.0), ("C", 5, 30.0))  # 3 > 2: conflating
        h.handle(("A", 3, 10.3))  # late and older than the pending A@5
        h.release()
    assert h.written("A") == [1, 5]
    assert h.spy.values["A"].ts_event_ns == T0 + 5
    assert h.status.counters["refused_older"] == 1


# -- equal timestamps: the later arrival wins --------------------------------------------------


async def test_a_quote_with_the_same_timestamp_as_the_last_is_taken_and_the_later_arrival_wins(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus) as h:
        h.handle(("A", 7, 10.0))
        await h.stream.wait_idle()
        h.handle(("A", 7, 10.5))  # same venue time, a different price: a correction
        await h.stream.wait_idle()
        h.handle(("A", 7, 11.0), ("A", 7, 11.5))  # and twice in one frame
    assert h.written("A") == [7, 7, 7, 7]
    assert h.spy.values["A"].bid == 11.5
    assert h.status.counters["refused_older"] == 0


async def test_equal_timestamps_later_arrival_wins_in_the_in_memory_cache_too(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    cache = InMemoryPriceCache(clock)
    first = Price("A", 10.0, 10.02, 10.01, T0, "V")
    second = Price("A", 10.5, 10.52, 10.51, T0, "V")
    assert await cache.put_many([first]) == [first]
    assert await cache.put_many([second]) == [second]
    assert cache.values["A"] == second


# -- conflation ----------------------------------------------------------------------------------


async def test_when_conflation_starts_it_keeps_the_newest_price_of_each_symbol(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=4) as h:
        h.handle(("X", 0, 1.0))
        await h.hold_next_write()  # the writer holds [X@0]
        h.handle(("A", 1, 10.0), ("B", 1, 20.0), ("A", 2, 10.1), ("B", 2, 20.1), ("A", 3, 10.2))
        assert h.stream.pending == 2  # collapsed at once: one per symbol
        h.release()
    assert h.written("A") == [3]
    assert h.written("B") == [2]
    assert [len(b) for b in h.spy.batches] == [1, 2]
    assert h.status.counters["conflated"] == 3
    assert h.status.counters["prices_written"] == 3


async def test_conflation_returns_to_lossless_mode_once_the_writer_has_caught_up(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=3) as h:
        h.handle(("A", 1, 10.0))
        await h.hold_next_write()
        for ts in range(2, 7):  # 5 queued > 3: conflating
            h.handle(("A", ts, 10.0 + ts / 100))
        h.release()
        await h.stream.wait_idle()
        assert h.written("A") == [1, 6]
        conflated = h.status.counters["conflated"]
        assert conflated == 4
        # Caught up: the next prices queue losslessly again, every one written in order.
        h.handle(("A", 7, 11.0))
        await h.hold_next_write()
        h.handle(("A", 8, 11.1))
        h.handle(("A", 9, 11.2))
        h.release()
    assert h.written("A") == [1, 6, 7, 8, 9]
    assert h.status.counters["conflated"] == conflated


async def test_a_failed_batch_put_back_never_overrides_newer_pending_prices_when_conflating(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=2) as h:
        h.handle(("A", 1, 10.0))
        await h.hold_next_write()  # the writer holds [A@1] ...
        h.spy.fail_next = 1  # ... and that write will fail
        h.handle(("A", 2, 10.1), ("B", 2, 20.0), ("C", 2, 30.0))  # conflating meanwhile
        h.release()
    assert [p.ts_event_ns - T0 for p in h.spy.failed_batches[0]] == [1]
    assert h.written("A") == [2]  # the put-back A@1 lost to the newer pending A@2
    assert h.written("B") == [2] and h.written("C") == [2]
    assert h.status.counters["conflated"] == 1
    assert h.status.counters["cache_write_errors"] == 1
    assert h.status.store is StoreState.OK


async def test_a_failed_batch_put_back_in_lossless_mode_goes_before_newer_prices(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=10) as h:
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        await h.hold_next_write()
        h.spy.fail_next = 1
        h.handle(("A", 2, 10.1))
        h.release()
    assert h.written("A") == [1, 2]  # retried first, then the newer one: never older over newer
    assert h.written("B") == [1]
    assert h.spy.values["A"].ts_event_ns == T0 + 2
    assert h.status.counters["conflated"] == 0


async def test_a_put_back_that_would_pass_max_pending_collapses_under_the_newer_prices(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=3) as h:
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        await h.hold_next_write()  # holds [A@1, B@1]
        h.spy.fail_next = 1
        h.handle(("A", 2, 10.1), ("C", 2, 30.0))  # 2 queued: not conflating yet
        h.release()  # put back: 2 + 2 > 3 -> one price per symbol, the newest
    assert h.written("A") == [2]
    assert h.written("B") == [1]
    assert h.written("C") == [2]
    assert [len(b) for b in h.spy.batches] == [3]
    assert h.status.counters["conflated"] == 1


async def test_a_put_back_that_exactly_fills_max_pending_stays_lossless(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_pending=3) as h:
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        await h.hold_next_write()
        h.spy.fail_next = 1
        h.handle(("A", 2, 10.1))  # 2 + 1 == 3: still lossless
        h.release()
    assert h.written("A") == [1, 2]
    assert h.status.counters["conflated"] == 0


async def test_a_backlog_larger_than_max_batch_is_written_in_order_in_max_batch_slices(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_batch=3) as h:
        h.handle(("A", 0, 10.0))
        await h.hold_next_write()
        for ts in range(1, 8):
            h.handle(("A", ts, 10.0 + ts / 100))
        h.release()
    assert [len(b) for b in h.spy.batches] == [1, 3, 3, 1]
    assert h.written("A") == list(range(8))
    assert h.status.counters["conflated"] == 0
    assert h.status.counters["prices_written"] == 8


async def test_a_backlog_of_exactly_max_batch_goes_in_one_batch(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    async with running(clock, bus, max_batch=3) as h:
        h.handle(("A", 0, 10.0))
        await h.hold_next_write()
        h.handle(("A", 1, 10.1), ("A", 2, 10.2), ("A", 3, 10.3))
        h.release()
    assert [len(b) for b in h.spy.batches] == [1, 3]


# -- what an exit now would drop ----------------------------------------------------------------


async def test_a_batch_being_written_still_counts_as_unwritten(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """``unwritten`` (what a second shutdown signal reports as dropped) counts the batch in the
    store's hands until its write returns, once: a failed write's put-back is not counted
    twice. Was: only ``pending`` was reported, so a second SIGTERM during the shutdown flush's
    write to a frozen Redis logged "0 prices dropped" (test_signals failed 1 run in 5)."""
    async with running(clock, bus) as h:
        h.handle(("A", 1, 10.0), ("B", 1, 20.0))
        await h.hold_next_write()  # the writer holds [A@1, B@1]
        h.handle(("C", 1, 30.0))
        assert (h.stream.pending, h.stream.unwritten) == (1, 3)
        h.spy.fail_next = 1
        gate = h.spy.gate
        h.spy.gate, h.spy.entered = anyio.Event(), anyio.Event()  # hold the retry too
        assert gate is not None
        gate.set()  # the held write fails: all three are pending again (put back, not lost)
        await eventually(lambda: h.status.counters["cache_write_errors"] == 1, step_s=0.001)
        assert (h.stream.pending, h.stream.unwritten) == (3, 3)  # before the 0.05 s retry
        await h.spy.entered.wait()  # the retry holds all three
        assert (h.stream.pending, h.stream.unwritten) == (0, 3)
        h.release()
        await h.stream.wait_idle()
        assert (h.stream.pending, h.stream.unwritten) == (0, 0)
    assert sorted(p.symbol for p in h.spy.written) == ["A", "B", "C"]  # each once


async def test_a_write_cut_by_the_flush_deadline_is_dropped_once_and_nothing_stays_unwritten(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """The shutdown flush gives up on a write that does not return (a frozen store): the batch
    is put back, counted as dropped once, and discarded; ``unwritten`` is then 0 (the cut
    write is not still counted as in the store's hands)."""
    spy = SpyPriceCache()
    status = ServiceStatus(started_at=0.0)
    stream = StreamMidPrices(spy, bus, clock, status)
    stream.handle([quote("A", 10.0, 10.02, T0 + 1), quote("B", 20.0, 20.02, T0 + 1)])
    spy.gate = anyio.Event()  # never set: the write never returns
    with anyio.fail_after(30):
        left = await stream.flush(1.0)
    assert left == 2 and status.counters["dropped"] == 2
    assert (stream.pending, stream.unwritten) == (0, 0)
    assert spy.batches == []
