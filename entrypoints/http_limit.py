"""A bound on the HTTP API's share of the event loop: at most ``max_concurrency`` requests in
flight, a short bounded queue behind them, and a quick 503 (``Retry-After: 1``) past that.

Why: the API runs on the same trio loop as the stream. Trio runs every runnable task once per
scheduling round, and the stream's reader takes one frame per round, so each busy connection
lengthens the round the reader waits for: under a flood (~550 requests/s to ``/prices/AAPL``)
the cached price's age went from ~4 ms to ~570 ms, and each request's thread hop to Redis added
a worker thread competing for the GIL. Here at most ``max_concurrency`` requests run; up to
16 times as many wait for a slot (a waiting task is not runnable: it costs the loop nothing,
and it slows a closed-loop flood down to what the slots serve), for at most ``max_wait_s``;
anything more is answered 503 at once. Measured (``mds bench --http-flood 32``): a quick 503
for everything past the slots made it worse than waiting (the turned-away connections came
straight back and kept the loop busy); waiting is what bounds the loop's share.

Probes (``/health``, ``/ready``, ``/metrics``) have a small allowance of their own, so a flood
of ``/prices`` never hides the service's health; the live stream (``/prices/stream``,
long-lived, bounded by MDS_SSE_MAX_CLIENTS) is not counted. Pure ASGI: wraps any app.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import anyio
import orjson

PROBE_PATHS: Final = frozenset({"/health", "/ready", "/metrics"})
PROBE_SLOTS: Final = 4
UNCOUNTED_PATHS: Final = frozenset({"/prices/stream"})

Scope = dict[str, Any]
Receive = Any
Send = Any


class _Pool:
    """``limit`` requests at once; up to ``max_waiting`` more wait (at most ``max_wait_s``)
    for a slot. A waiting request costs the loop nothing: it is not runnable."""

    __slots__ = ("_semaphore", "limit", "max_wait_s", "max_waiting")

    def __init__(self, limit: int, max_waiting: int, max_wait_s: float) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._semaphore: anyio.Semaphore | None = None  # made in the loop, at first use

    @property
    def semaphore(self) -> anyio.Semaphore:
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.limit)
        return self._semaphore

    @property
    def in_flight(self) -> int:
        return self.limit - self.semaphore.value

    async def acquire(self) -> bool:
        """A slot (True), or False at once when the queue is full, or after ``max_wait_s``."""
        semaphore = self.semaphore
        if semaphore.value == 0 and semaphore.statistics().tasks_waiting >= self.max_waiting:
            return False
        with anyio.move_on_after(self.max_wait_s):
            await semaphore.acquire()
            return True
        return False


class ConcurrencyLimit:
    """ASGI middleware: ``max_concurrency`` requests at once (probes: :data:`PROBE_SLOTS` of
    their own); up to ``16 * max_concurrency`` more wait up to ``max_wait_s`` for a slot, the
    rest are answered 503 at once; every 503 is counted in ``counters["http_rejected"]``."""

    def __init__(
        self,
        app: Any,
        max_concurrency: int,
        counters: Counter[str] | None = None,
        *,
        max_wait_s: float = 1.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.app = app
        self.max_concurrency = max_concurrency
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._main = _Pool(max_concurrency, 16 * max_concurrency, max_wait_s)
        self._probes = _Pool(PROBE_SLOTS, 16 * PROBE_SLOTS, max_wait_s)
        self._busy = orjson.dumps(
            {
                "detail": f"busy: {max_concurrency} requests in flight "
                "(MDS_HTTP_MAX_CONCURRENCY); retry in a second"
            }
        )

    @property
    def in_flight(self) -> int:
        return self._main.in_flight + self._probes.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        pool = self._probes if scope.get("path") in PROBE_PATHS else self._main
        if not await pool.acquire():
            self.counters["http_rejected"] += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", b"1"),
                        (b"cache-control", b"no-store"),
                        (b"content-length", str(len(self._busy)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._busy})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            pool.semaphore.release()
