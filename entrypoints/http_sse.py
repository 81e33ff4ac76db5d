"""``GET /prices/stream``: live prices as Server-Sent Events, for browsers and anything else that
speaks HTTP but not Redis (see :mod:`application.price_fanout` for the fan-out behind it).

The stream (``text/event-stream``):

- ``retry: 2000`` first (an ``EventSource`` reconnects after 2 s), then the **initial image**:
  the cached price of every requested symbol, then every update as it happens;
- each event is ``id: {SYMBOL}`` plus ``data: {price JSON}``, the JSON exactly as published on
  ``price.updated.{SYMBOL}`` (default event type, so ``EventSource.onmessage`` receives it); a
  reconnecting client gets a fresh image, so it resumes without gaps in what it shows;
- a comment line (``: keep-alive``) after ``heartbeat_s`` without an event keeps proxies from
  cutting an idle stream.

``?symbols=AAPL,BTC/USD`` (normalised like ``/prices``); without it, every subscribed symbol.

A slow client gets the latest price per symbol (conflated, counted), never a queue; a client
that stops reading (one write blocked longer than ``send_timeout_s``) is dropped and counted;
at most ``max_clients`` at once, then 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import anyio
from starlette.responses import Response

from application.price_fanout import FanOutClient, PriceFanOut, TooManyClients
from domain.price import Price

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RETRY_MS: Final = 2_000
_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


def encode_event(price: Price) -> bytes:
    """One SSE event: ``id`` = symbol, ``data`` = the price JSON (made once per price by the
    fan-out, whatever the number of clients)."""
    return b"id: " + price.symbol.encode() + b"\ndata: " + price.to_json() + b"\n\n"


class EventStreamResponse(Response):
    """An ASGI response that streams one fan-out client's prices until the client leaves, with
    a deadline on every write (a client that stops reading is dropped). A ``Response`` only so
    that FastAPI passes it through; it sends everything itself."""

    def __init__(
        self,
        fanout: PriceFanOut,
        symbols: list[str] | None,
        *,
        heartbeat_s: float,
        send_timeout_s: float,
        min_interval_s: float = 0.0,
        writes_per_s: float = float("inf"),
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._fanout = fanout
        self._symbols = symbols
        self._heartbeat_s = heartbeat_s
        self._send_timeout_s = send_timeout_s
        self._min_interval_s = min_interval_s
        self._writes_per_s = writes_per_s
        self._sse_headers = _HEADERS + (extra_headers or [])
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self._fanout.connect(self._symbols) as client:
                await self._stream(client, receive, send)
        except TooManyClients as e:
            body = b'{"detail":"too many stream clients: ' + str(e).encode() + b'"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", b"5"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def _stream(self, client: FanOutClient, receive: Receive, send: Send) -> None:
        blocked_since: float | None = None  # when the write in progress began
        stalled = False  # a write took the whole deadline (the server may finish it late)

        async def write(chunk: bytes) -> None:
            nonlocal blocked_since, stalled
            blocked_since = anyio.current_time()
            with anyio.fail_after(self._send_timeout_s):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            stalled = stalled or anyio.current_time() - blocked_since >= self._send_timeout_s
            blocked_since = None

        def drop() -> None:
            self._fanout.dropped()
            log.info("price stream: dropped a client that stopped reading")

        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                # The server (or the kernel's TCP_USER_TIMEOUT) gave up on a write that had
                # been blocked for the whole deadline: the client stopped reading.
                if stalled or (
                    blocked_since is not None
                    and anyio.current_time() - blocked_since >= self._send_timeout_s
                ):
                    drop()
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            try:
                with anyio.fail_after(self._send_timeout_s):
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": self._sse_headers}
                    )
                await write(f"retry: {RETRY_MS}\n\n".encode())
                await self._fanout.image(self._fanout.symbols_of(client))
                while True:
                    prices = await client.wait(self._heartbeat_s)
                    await write(b"".join(e for _, e in prices) if prices else b": keep-alive\n\n")
                    # Let updates gather in the table: every client writes at most every
                    # min_interval_s, and all clients together at most writes_per_s times a
                    # second (200 clients: one write a second each), so the stream's share of
                    # the loop is bounded whatever the quote rate and the number of clients.
                    pause = max(self._min_interval_s, self._fanout.clients / self._writes_per_s)
                    if pause:
                        await anyio.sleep(pause)
            except TimeoutError:
                drop()
            tg.cancel_scope.cancel()
