"""StreamMidPrices: feed events -> exact mid prices -> cache and bus.

Two halves joined by a bounded hand-off, so the feed reader never waits on the cache or the bus:

- :meth:`StreamMidPrices.handle` runs in the reader's task, synchronously: it turns quotes into
  prices, refuses a quote older than the newest seen for its symbol, and appends to the
  pending queue. It never awaits.
- :meth:`StreamMidPrices.run` is the writer task: it takes everything pending as one batch, writes
  it with one ``PriceCache.put_many`` and publishes what was applied with one
  ``EventBus.publish_many``.

**Lossless while the writer keeps up; conflated when it cannot.** Prices queue in arrival order,
so every update is written and published in order per symbol. When the queue passes
``max_pending`` (the writer is behind, or the store is down), it collapses to the latest price
per symbol and stays in that mode until the writer has caught up: memory is bounded by
``max_pending`` plus the number of symbols, and every superseded price is counted as
``conflated``.

**Store outage.** A failed write marks the store degraded and is retried losslessly (in
order, before anything newer). A second failure in a row switches to conflation: the batch and
everything pending collapse to the latest price per symbol (superseded ones counted as
``conflated``), and the write is retried after a short capped backoff (50 ms doubling
to 250 ms). So during an outage memory holds one price per symbol, not a backlog (before: up to
``max_pending`` = 50,000, ~25 s at 2,000 quotes/s), and the first write after recovery carries
the latest price of every symbol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import anyio

from application.status import ServiceStatus, StoreState
from domain.features import METRICS
from domain.market import MarketEvent, Quote, Trade
from domain.price import NoMid, Price, price_from_quote
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, skew_ns
from domain.timestamps import NS_PER_SECOND, format_ns
from ports.clock import Clock
from ports.event_bus import EventBus
from ports.price_cache import PartialWrite, PriceCache

log = logging.getLogger(__name__)

_NO_MID_COUNTER = {
    NoMid.EMPTY_BID: "no_mid_empty_bid",
    NoMid.EMPTY_ASK: "no_mid_empty_ask",
    NoMid.CROSSED: "no_mid_crossed",
}


class StreamObserver(Protocol):
    """Hooks for metrics; the application knows no metrics library."""

    def observe_write(self, seconds: float, count: int) -> None:
        """One batch written to the cache and bus in ``seconds``."""
        ...

    def observe_quote_age(self, seconds: float) -> None:
        """Venue time to write time of the oldest price in a batch."""
        ...


class NullObserver:
    def observe_write(self, seconds: float, count: int) -> None:
        pass

    def observe_quote_age(self, seconds: float) -> None:
        pass


class StreamMidPrices:
    def __init__(
        self,
        cache: PriceCache,
        bus: EventBus,
        clock: Clock,
        status: ServiceStatus,
        *,
        observer: StreamObserver | None = None,
        max_pending: int = 50_000,
        max_batch: int = 5_000,
        retry_base_s: float = 0.05,
        retry_cap_s: float = 0.25,
        source: str = "",
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        """``source`` names the feed; every price carries it as ``exchange``. A quote stamped
        more than ``max_future_skew_s`` ahead of its receive time is refused (see
        :mod:`domain.staleness`)."""
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be >= 1")
        if not max_future_skew_s > 0:
            raise ValueError(f"max_future_skew_s must be > 0, got {max_future_skew_s!r}")
        self._max_future_skew_ns = skew_ns(max_future_skew_s)
        self._cache = cache
        self._bus = bus
        self._clock = clock
        self._status = status
        self._observer = observer or NullObserver()
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._source = source
        self._queue: list[Price] = []
        self._latest: dict[str, Price] = {}  # conflation mode: latest unwritten price per symbol
        self._conflating = False
        self._newest_ts: dict[str, int] = {}
        self._wakeup = anyio.Event()
        self._writing = False
        self._in_flight = 0  # prices handed to the store whose write has not returned
        self._idle_event: anyio.Event | None = None  # made only while someone waits for idle
        self._refusing = False  # the store refused every price of the last batch
        # Called with every batch once published (what the cache applied, in publish order),
        # in the writer's task: it must be quick and must not raise. The live stream's fan-out
        # on the instance that streams (PriceFanOut.published).
        self.on_published: Callable[[Sequence[Price]], None] | None = None

    # -- reader side: synchronous, never waits ---------------------------------------------
    def handle(self, events: Sequence[MarketEvent]) -> None:
        """Turn one frame's events into pending prices. Cheap, synchronous, never blocks."""
        self.handle_from(events, self._source)

    def handler_for(self, source: str) -> Callable[[Sequence[MarketEvent]], None]:
        """A :meth:`handle` whose prices carry ``source`` (one per stream: IEX, CRYPTO_US...)."""
        return lambda events: self.handle_from(events, source)

    def handle_from(self, events: Sequence[MarketEvent], source: str) -> None:
        """:meth:`handle` with the feed's name given (one call per frame, not per quote)."""
        counters = self._status.counters
        newest = self._newest_ts
        queued = 0
        quotes = 0
        max_skew_ns = self._max_future_skew_ns
        for event in events:
            if type(event) is not Quote:
                counters["trades" if type(event) is Trade else "other_events"] += 1
                continue
            quotes += 1
            # domain.staleness.too_far_ahead(ts_event, ts_received, skew), inlined: this loop
            # runs for every quote. Refused before anything else: never cached, published, nor
            # used by the ordering guard below (which it would freeze until restart).
            if event.ts_event_ns - event.ts_received_ns > max_skew_ns:
                self._refuse_future(event)
                continue
            result = price_from_quote(event, source)
            if isinstance(result, NoMid):
                counters[_NO_MID_COUNTER[result]] += 1
                continue
            price = result
            last = newest.get(price.symbol)
            if last is not None and price.ts_event_ns < last:
                counters["refused_older"] += 1
                continue
            newest[price.symbol] = price.ts_event_ns
            queued += 1
            if self._conflating:
                if self._latest.pop(price.symbol, None) is not None:
                    counters["conflated"] += 1
                self._latest[price.symbol] = price
            else:
                self._queue.append(price)
        counters["quotes"] += quotes
        if queued:
            counters["prices"] += queued
            if len(self._queue) > self._max_pending:
                self._start_conflating()
            self._wakeup.set()
        self._status.pending_writes = len(self._queue) + len(self._latest)

    def _refuse_future(self, quote: Quote) -> None:
        """Count a quote stamped too far ahead and remember it for ``/health`` (rare path)."""
        status = self._status
        status.counters["refused_future"] += 1
        ahead_s = (quote.ts_event_ns - quote.ts_received_ns) / NS_PER_SECOND
        status.last_future_refusal = (
            f"{quote.symbol} stamped {format_ns(quote.ts_event_ns)}, {ahead_s:.3f} s ahead of "
            "its receive time"
        )
        first = status.last_future_refused_at is None
        status.last_future_refused_at = self._clock.monotonic()
        if first:
            log.warning(
                "refusing quotes stamped more than %g s in the future (MDS_MAX_FUTURE_SKEW): %s",
                self._max_future_skew_ns / NS_PER_SECOND,
                status.last_future_refusal,
            )

    def _start_conflating(self) -> None:
        """Collapse the queue to the latest price per symbol (order of last update kept)."""
        latest = self._latest
        conflated = 0
        for price in self._queue:
            if latest.pop(price.symbol, None) is not None:
                conflated += 1
            latest[price.symbol] = price
        self._queue = []
        self._conflating = True
        self._status.counters["conflated"] += conflated
        log.warning(
            "price writer is behind: conflating to the latest price per symbol "
            "(%d symbols pending)",
            len(latest),
        )

    def _take_batch(self) -> list[Price]:
        if self._latest:
            batch = list(self._latest.values())
            self._latest = {}
            # Caught up: go back to lossless queueing.
            self._conflating = False
            return batch
        if len(self._queue) <= self._max_batch:
            batch, self._queue = self._queue, []
            return batch
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        return batch

    def _put_back(self, batch: list[Price]) -> None:
        """Return a failed batch to the front, under anything newer that arrived since."""
        if self._conflating or len(batch) + len(self._queue) > self._max_pending:
            merged: dict[str, Price] = {}
            for price in batch:
                merged[price.symbol] = price
            for price in [*self._queue, *self._latest.values()]:
                merged.pop(price.symbol, None)
                merged[price.symbol] = price
            self._status.counters["conflated"] += (
                len(batch) + len(self._queue) + len(self._latest) - len(merged)
            )
            self._latest = merged
            self._queue = []
            self._conflating = True
        else:
            self._queue[:0] = batch

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._latest)

    @property
    def unwritten(self) -> int:
        """Prices not known to be written: pending, plus the batch whose write has not
        returned (what an exit now would drop; the shutdown flush's write is such a batch)."""
        return len(self._queue) + len(self._latest) + self._in_flight

    def count_unpriced(self, symbols: Iterable[str], since_ns: int) -> int:
        """How many of ``symbols`` have no price with a venue time at or after ``since_ns``."""
        newest = self._newest_ts
        return sum(1 for symbol in symbols if newest.get(symbol, -1) < since_ns)

    # -- writer side ------------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write pending prices until cancelled. Never raises for a store outage."""
        task_status.started()
        failures = 0
        while True:
            if not self.pending:
                if self._idle_event is not None:
                    self._idle_event.set()
                    self._idle_event = None
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            self._writing = True
            try:
                ok = await self._write_once()
            finally:
                self._writing = False
            if ok:
                failures = 0
                continue
            failures += 1
            await anyio.sleep(min(self._retry_cap_s, self._retry_base_s * 2 ** (failures - 1)))

    async def _write_once(self) -> bool:
        batch = self._take_batch()
        self._in_flight = len(batch)
        status = self._status
        start = self._clock.monotonic()
        try:
            applied = await self._cache.put_many(batch)
            await self._bus.publish_many(applied)
        except anyio.get_cancelled_exc_class():
            # Cancelled mid-write (shutdown, leadership lost): the call was abandoned and may
            # not have landed. Keep the batch pending (re-applying is harmless: latest-wins),
            # so the shutdown flush retries it or counts it as dropped.
            self._in_flight = 0
            self._put_back(batch)
            raise
        except ConnectionError as e:
            # A single failed write is retried losslessly, in order. From the second failure
            # in a row (the store is down) keep ONE price per symbol (the latest) until a
            # write succeeds: memory stays at the number of symbols whatever the outage's
            # length, and the first write after recovery carries the latest price of every
            # symbol (a backlog of superseded prices would only delay it).
            if isinstance(e, PartialWrite):
                # Some store nodes applied their part: count and publish that, keep only the
                # rest (the failed nodes' symbols) for the retry.
                await self._partly_written(e, len(batch))
                batch = e.unwritten
            if status.store is StoreState.DEGRADED:
                self._conflating = True
            self._in_flight = 0
            self._put_back(batch)
            status.counters["cache_write_errors"] += 1
            if status.store is not StoreState.DEGRADED:
                log.warning("price store unavailable, keeping latest prices in memory: %s", e)
            status.store = StoreState.DEGRADED
            status.store_error = str(e)
            status.pending_writes = self.pending
            return False
        self._in_flight = 0
        elapsed = self._clock.monotonic() - start
        if status.store is StoreState.DEGRADED:
            log.warning("price store back after an outage; wrote %d latest prices", len(applied))
            status.store = StoreState.OK
            status.store_error = None
        status.counters["prices_written"] += len(applied)
        status.counters["published"] += len(applied)
        status.counters["refused_older"] += len(batch) - len(applied)
        if self.on_published is not None:
            self.on_published(applied)
        if batch and not applied:
            self._warn_refused(batch)
        elif applied and self._refusing:
            self._refusing = False
            log.info("the price store accepts prices again")
        status.pending_writes = self.pending
        try:
            self._observer.observe_write(elapsed, len(batch))
            if batch:
                self._observer.observe_quote_age(
                    (self._clock.now_ns() - batch[0].ts_event_ns) / 1_000_000_000
                )
        except Exception as e:  # metrics are optional: they fail alone, prices flow on
            if status.features.fail(METRICS, f"observer: {type(e).__name__}: {e}"):
                log.exception("metrics failing (prices are not affected)")
        else:
            failing = status.features.failing
            if failing and failing.get(METRICS, "").startswith("observer:"):
                status.features.recover(METRICS)
                log.warning("metrics observer works again")
        return True

    def _warn_refused(self, batch: list[Price]) -> None:
        """Once per run of wholly refused batches: say why nothing is written."""
        if self._refusing:
            return
        self._refusing = True
        log.warning(
            "the price store refused all %d prices of a batch (e.g. %s) as older than the prices "
            "it holds: another writer (an earlier run, or a replay with its recorded times) "
            "wrote newer prices there within MDS_PRICE_TTL. Nothing is written until prices "
            "newer than those arrive; use another Redis database, wait for the keys to expire, "
            "or replay as if live (without MDS_REPLAY_KEEP_TIMES)",
            len(batch),
            batch[0].symbol,
        )

    async def _partly_written(self, partial: PartialWrite, attempted: int) -> None:
        counters = self._status.counters
        applied = partial.applied
        counters["prices_written"] += len(applied)
        counters["refused_older"] += attempted - len(applied) - len(partial.unwritten)
        try:
            await self._bus.publish_many(applied)  # a no-op when the cache published them
        except ConnectionError as e:
            log.warning("could not publish %d prices written to the cache: %s", len(applied), e)
        else:
            counters["published"] += len(applied)
            if self.on_published is not None:
                self.on_published(applied)

    async def wait_idle(self) -> None:
        """Return once nothing is pending (the writer has written everything handed to it)."""
        while self.pending or self._writing:
            if self._idle_event is None:
                self._idle_event = anyio.Event()
            await self._idle_event.wait()

    async def flush(self, timeout_s: float) -> int:
        """Write what is pending within ``timeout_s`` (shielded: used at shutdown).

        Returns how many prices were left unwritten: counted as ``dropped`` and discarded.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout_s):
            while self.pending:
                if not await self._write_once():
                    await anyio.sleep(self._retry_base_s)
        left = self.pending
        if left:
            # Dropped means gone: kept pending, a later run of the writer (the next term of an
            # HA leader) would write these stale prices first, into a store that may have lost
            # the newer ones meanwhile (an empty restart): older published after newer.
            self._queue, self._latest, self._conflating = [], {}, False
            self._status.pending_writes = 0
            self._status.counters["dropped"] += left
            log.error("shutdown: %d prices could not be written before the deadline", left)
        return left
