"""The WebSocket link under :class:`adapters.alpaca.feed.AlpacaQuoteFeed`: every network wait
has a deadline that this code owns, and leaving always releases the socket.

Why not ``trio_websocket.open_websocket_url``: it runs trio-websocket's reader task in a nursery
of its own and waits for that task on exit. Its ``connect_timeout`` raises, but the nursery then
waits for the reader, which is blocked on a socket that never answers the HTTP upgrade: the
caller hangs forever. And when the server closes first, its ``aclose`` returns at once (the
connection is already "closed") without closing the socket, so the TCP connection is left to the
garbage collector while the venue still counts it against the account's single slot.

So the link drives trio-websocket's :class:`~trio_websocket.WebSocketConnection` itself:

- :func:`dial` opens TCP, then TLS (``wss://``), then the HTTP upgrade, all three under ONE
  deadline (``timeout_s``) measured from the start: a peer that never answers, or one that
  drips a byte a second, fails the phase it is in, named in the error. On any failure the socket
  is closed and the reader task stopped before :func:`dial` raises.
- trio-websocket's reader runs in the caller's nursery under a cancel scope of its own, shielded
  from the caller's cancellation: when the caller is cancelled (shutdown, leadership lost) the
  reader still reads the venue's answer to our close frame. :meth:`Link.leave` always cancels
  it, so it never outlives the link.
- :meth:`Link.leave` completes the close handshake whoever started it (sends our close frame,
  or waits until trio-websocket has answered the server's), bounded by ``wait_s``, and then
  closes the socket at once, without waiting for the server's FIN.

This uses three private members of trio-websocket 0.12 (``_reader_task``, ``_open_handshake``,
``_close_handshake``: what its own ``wrap_client_stream`` uses); :func:`check_library` fails
loudly at construction if a new release renames them.
"""

from __future__ import annotations

import ssl
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionRejected, WebSocketConnection
from wsproto import ConnectionType, WSConnection

from domain.errors import FeedUnavailable

_HTTP_429_MIN_DELAY_S: Final = 5.0
_RETRY_AFTER_CAP_S: Final = 120.0


def check_library() -> None:
    """Raise ``RuntimeError`` when trio-websocket lacks the members this module drives."""
    # The two events are set in __init__; the reader is a method.
    if not callable(getattr(WebSocketConnection, "_reader_task", None)):
        raise RuntimeError(
            "this trio-websocket has no WebSocketConnection._reader_task: "
            "update adapters/alpaca/transport.py"
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect, from a ``ws://`` or ``wss://`` URL."""

    host: str
    port: int
    resource: str
    secure: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (80, 443) else f"{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host, port, resource, secure)


@dataclass(eq=False, slots=True)
class Link:
    """One open WebSocket connection and the task that reads it."""

    ws: WebSocketConnection
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    reader_scope: trio.CancelScope
    reader_done: trio.Event = field(default_factory=trio.Event)
    rejected: ConnectionRejected | None = None

    async def leave(self, code: int, wait_s: float) -> None:
        """Complete the close handshake within ``wait_s`` and release the socket; shielded from
        cancellation, never raises for the network. Idempotent.

        We send the close frame when the connection is still open; when the server closed
        first, trio-websocket's reader answers it, and we wait (bounded) until that answer has
        gone out before closing the socket, so the answer is never cut off."""
        ws = self.ws
        with trio.CancelScope(shield=True):
            with trio.move_on_after(wait_s):
                # Sends our close frame if the connection is open; returns at once otherwise.
                # Either way the handshake event tells when both close frames have passed.
                await ws.aclose(code)
                await ws._close_handshake.wait()
            self.reader_scope.cancel()
            await trio.aclose_forcefully(self.stream)


async def _read(link: Link, *, task_status: trio.TaskStatus[None]) -> None:
    """trio-websocket's reader, under its own (shielded) scope; ``reader_done`` when it ends."""
    try:
        with link.reader_scope:
            task_status.started()
            try:
                await link.ws._reader_task()
            except ConnectionRejected as e:
                link.rejected = e
    finally:
        link.reader_done.set()


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


async def dial(
    nursery: trio.Nursery,
    url: str,
    *,
    timeout_s: float,
    extra_headers: list[tuple[bytes, bytes]],
    message_queue_size: int,
    max_message_size: int,
    ssl_context: ssl.SSLContext | None = None,
) -> Link:
    """Open a WebSocket client connection to ``url`` within ``timeout_s`` (TCP connect, TLS
    handshake and HTTP upgrade together). trio-websocket's reader runs in ``nursery``; the
    caller must end the link with :meth:`Link.leave`.

    Raises :class:`FeedUnavailable`: refused or unreachable, a phase not done in time (named),
    the upgrade answered with an HTTP status (``code``; 429 and ``Retry-After`` set
    ``min_delay``), or the connection closed during the upgrade.
    """
    target = Target.from_url(url)
    phase = "TCP connect"
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    link: Link | None = None
    try:
        with trio.move_on_after(timeout_s) as deadline:
            stream = await trio.open_tcp_stream(target.host, target.port)
            if target.secure:
                phase = "TLS handshake"
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(
                    stream, context, server_hostname=target.host, https_compatible=True
                )
                await stream.do_handshake()
            phase = "HTTP upgrade"
            ws = WebSocketConnection(
                stream,
                WSConnection(ConnectionType.CLIENT),
                host=target.host_header,
                path=target.resource,
                client_extra_headers=extra_headers,
                message_queue_size=message_queue_size,
                max_message_size=max_message_size,
                # trio-websocket reads 4 KiB at a time by default: one syscall and one wsproto
                # pass per 4 KiB of a 100-quote frame. Let trio read what is there (up to its
                # own cap), which doubles what a reader can take at large batches.
                receive_buffer_size=None,
            )
            link = Link(ws, stream, trio.CancelScope(shield=True))
            await nursery.start(_read, link)
            await _first_of(ws._open_handshake, link.reader_done)
    except (OSError, trio.BrokenResourceError) as e:
        await _abandon(stream, link)
        cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) else e
        reason = cause or e
        raise FeedUnavailable(f"cannot connect: {str(reason) or type(reason).__name__}") from e
    except BaseException:
        await _abandon(stream, link)
        raise
    if deadline.cancelled_caught:
        await _abandon(stream, link)
        raise FeedUnavailable(f"{phase} did not complete within {timeout_s:g} s")
    assert link is not None
    if not link.ws._open_handshake.is_set():
        await _abandon(stream, link)
        if link.rejected is not None:
            raise rejected(link.rejected) from link.rejected
        raise FeedUnavailable("cannot connect: the connection closed during the HTTP upgrade")
    return link


async def _abandon(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None, link: Link | None
) -> None:
    """A failed dial: stop the reader and close the socket now (no handshake to complete)."""
    if link is not None:
        link.reader_scope.cancel()
    if stream is not None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def rejected(e: ConnectionRejected) -> FeedUnavailable:
    """The upgrade was answered with an HTTP status instead of 101."""
    status = e.status_code
    min_delay = 0.0
    if status == 429:
        min_delay = _HTTP_429_MIN_DELAY_S
    for name, value in e.headers or ():
        if name.lower() == b"retry-after":
            with suppress(ValueError):
                min_delay = max(min_delay, min(float(value), _RETRY_AFTER_CAP_S))
    what = "too many requests (reconnecting too fast?)" if status == 429 else "rejected"
    return FeedUnavailable(
        f"HTTP {status} at the WebSocket upgrade: {what}", code=status, min_delay=min_delay
    )
