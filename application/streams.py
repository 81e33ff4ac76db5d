"""One stream per asset class: its own session, backoff, symbol limit and health.

A :class:`Stream` pairs a feed (one venue endpoint) with its :class:`KeepConnected` loop and its
own :class:`ServiceStatus` for the connection. It carries the symbols of the asset classes it
serves (``classes``; ``None``: every class, the single-feed mode of the simulator, a replay and
the tests). :meth:`Stream.run` starts the connection only once the stream has symbols, closes
it when the last one goes, and keeps a failure in its lane: a fatal error that concerns only
this stream (``FatalFeedError.lane_only``: a plan without this feed, reconnect attempts used up)
disables it with one clear log line, and the other streams go on. A fatal error for the whole
service (bad credentials) propagates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from application.keep_connected import KeepConnected
from application.status import ServiceStatus
from domain.assets import AssetClass
from domain.errors import FatalFeedError
from ports.quote_feed import QuoteFeed

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stream:
    name: str  # the asset class ("us_equity", "crypto", "us_option") or "all"
    classes: frozenset[AssetClass] | None
    feed: QuoteFeed
    status: ServiceStatus
    connection: KeepConnected
    capacity: int | None = None
    lazy: bool = True  # connect only while the stream has symbols
    disabled: str | None = None  # why the stream stopped for good (its lane only)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def serves(self, asset_class: AssetClass) -> bool:
        return self.classes is None or asset_class in self.classes

    @property
    def active(self) -> bool:
        """Has symbols to stream and is not disabled."""
        return self.disabled is None and bool(self.connection.target)

    def targets_changed(self) -> None:
        """Wake :meth:`run` to start or stop the connection after a change of symbols."""
        self._changed.set()

    async def run(self) -> None:
        """Stream until cancelled; returns when the stream is disabled (its lane only).

        Raises :class:`FatalFeedError` when the failure concerns the whole service.
        """
        if not self.lazy:
            await self._connect_and_run()
            return
        while self.disabled is None:
            while not self.connection.target:
                self._changed = anyio.Event()
                await self._changed.wait()
            fatal: FatalFeedError | None = None
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._stop_when_empty, scope)
                    try:
                        await self._connect_and_run()
                    except FatalFeedError as e:
                        fatal = e  # raised below, on its own (not in an ExceptionGroup)
                    tg.cancel_scope.cancel()
            if fatal is not None:
                raise fatal

    async def _stop_when_empty(self, scope: anyio.CancelScope) -> None:
        while self.connection.target:
            self._changed = anyio.Event()
            await self._changed.wait()
        log.info("%s stream: no symbols left; closing its connection", self.name)
        scope.cancel()

    async def _connect_and_run(self) -> None:
        try:
            await self.connection.run()
        except FatalFeedError as e:
            if not e.lane_only:
                raise
            self.disabled = str(e)
            log.error("%s stream disabled, the others go on: %s", self.name, e)
