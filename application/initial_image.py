"""InitialImage: the latest quote of each newly subscribed symbol, written like a streamed one.

:meth:`on_subscribed` is the :class:`MarketDataService` ``subscribed_listeners`` hook (after the
first subscribe, every subscription change and every reconnect). It is synchronous and only
notes the symbols: :meth:`run`, its own task, asks the :class:`SnapshotSource` for them (one
asset class at a time; the adapter batches and paces) and hands the quotes to the stream's
handler, so they take the streamed quotes' path: exact mid, the ordering guard (a snapshot
older than the newest price of its symbol is refused and counted ``refused_older``, never
published), TTL, publish. A slow or failing source never blocks or delays the stream; what it
could not give is counted (``snapshot_missing``), never raised. Symbols noted while a fetch runs
are fetched next, once each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import anyio

from application.status import ServiceStatus
from application.streams import Stream
from domain.assets import AssetClass, classify
from domain.market import MarketEvent
from ports.snapshot_source import SnapshotSource

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[MarketEvent]], None]


class InitialImage:
    def __init__(
        self,
        source: SnapshotSource,
        handlers: Mapping[AssetClass, Handler],
        status: ServiceStatus,
    ) -> None:
        self._source = source
        self._handlers = handlers
        self._status = status
        self._pending: dict[AssetClass, set[str]] = {}
        self._wakeup = anyio.Event()

    def on_subscribed(self, stream: Stream, symbols: frozenset[str]) -> None:
        """Note ``symbols`` for a snapshot (synchronous, never waits)."""
        one = next(iter(stream.classes)) if stream.classes and len(stream.classes) == 1 else None
        for symbol in symbols:
            cls = one if one is not None else classify(symbol)
            if cls in self._handlers:
                self._pending.setdefault(cls, set()).add(symbol)
        if self._pending:
            self._wakeup.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        counters = self._status.counters
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            pending, self._pending = self._pending, {}
            for cls, symbols in pending.items():
                quotes = await self._source.latest_quotes(cls, sorted(symbols))
                counters["snapshot_quotes"] += len(quotes)
                counters["snapshot_missing"] += len(symbols) - len(quotes)
                if quotes:
                    self._handlers[cls](quotes)
                log.debug("initial image: %d of %d %s symbols", len(quotes), len(symbols), cls)
