"""A TCP proxy between the service and the local stream server, for the feed faults the server
cannot play itself: a half-open peer (nothing moves either way, the sockets stay open), a peer
that never answers the HTTP upgrade, a slow drip (one byte at a time), an HTTP 500 at the
upgrade, and a future-stamped quote slipped into the stream between two WebSocket frames.

It relays bytes untouched otherwise (it parses the server's frame headers only to know where a
frame ends, so an injected frame never lands inside another one).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import anyio.abc
import trio

log = logging.getLogger(__name__)

_RECEIVE = 65536
DRIP_EVERY_S = 0.2
_HTTP_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
    b"Connection: close\r\n\r\nInternal Server Error"
)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (as a server sends it)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 65536:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + payload


class _FrameBoundaries:
    """Tracks where the server's WebSocket frames end in the byte stream (after the HTTP
    upgrade answer), so a frame can be inserted between two complete messages."""

    def __init__(self) -> None:
        self.upgraded = False
        self._http = b""
        self._header = b""
        self._left = 0
        self._in_message = False  # inside a fragmented data message

    @property
    def at_boundary(self) -> bool:
        return self.upgraded and not self._header and self._left == 0 and not self._in_message

    def split(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` cut at the first message boundary: (before, after); ``after`` is empty when
        there is none inside ``data``."""
        i = 0
        if not self.upgraded:
            self._http += data
            end = self._http.find(b"\r\n\r\n")
            if end < 0:
                if len(self._http) > 65536:
                    self._http = self._http[-4:]
                return data, b""
            consumed = len(data) - (len(self._http) - (end + 4))
            self.upgraded = True
            self._http = b""
            i = consumed
            if self.at_boundary:
                return data[:i], data[i:]
        while i < len(data):
            if self._left:
                take = min(self._left, len(data) - i)
                i += take
                self._left -= take
                if self.at_boundary:
                    return data[:i], data[i:]
                continue
            self._header += data[i : i + 1]
            i += 1
            if self._header_complete() and self.at_boundary:
                return data[:i], data[i:]
        return data, b""

    def _header_complete(self) -> bool:
        h = self._header
        if len(h) < 2:
            return False
        short = h[1] & 0x7F
        need = 2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if h[1] & 0x80 else 0)
        if len(h) < need:
            return False
        if short == 126:
            length = int.from_bytes(h[2:4], "big")
        elif short == 127:
            length = int.from_bytes(h[2:10], "big")
        else:
            length = short
        fin, opcode = h[0] & 0x80, h[0] & 0x0F
        if opcode < 8:  # data or continuation frames
            self._in_message = not fin
        self._header = b""
        self._left = length
        return True


@dataclass(eq=False)
class _Link:
    client: trio.SocketStream
    upstream: trio.SocketStream | None = None
    frozen: bool = False
    drip: bool = False
    inject: list[bytes] = field(default_factory=list)
    boundaries: _FrameBoundaries = field(default_factory=_FrameBoundaries)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    thawed: trio.Event = field(default_factory=trio.Event)


class FeedProxy:
    """Listens on a free loopback port and relays to ``127.0.0.1:upstream_port``.

    Fault switches (plain attributes and methods, flipped by the chaos engine): :meth:`freeze`
    existing connections, ``blackhole_new`` (accept, read, never answer), ``drip_new`` and
    :meth:`drip` (server-to-client one byte every :data:`DRIP_EVERY_S`), ``http_500_new``, and
    :meth:`inject` (a frame into every upgraded connection at its next message boundary)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.blackhole_new = False
        self.drip_new = False
        self.http_500_new = False
        self.injected = 0
        self.answered_500 = 0
        self._links: set[_Link] = set()
        self._holes: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    # ------------------------------------------------------------------------ fault switches

    def freeze(self) -> None:
        """Stop relaying on every open connection, both ways, keeping the sockets open."""
        for link in self._links:
            link.frozen = True

    def close_frozen(self) -> None:
        """Close the frozen connections (the peer finally gave up): both sockets."""
        for link in list(self._links):
            if link.frozen:
                link.scope.cancel()

    def drip(self) -> None:
        for link in self._links:
            link.drip = True

    def inject(self, frame: bytes) -> int:
        """Queue ``frame`` on every upgraded connection; how many got it."""
        count = 0
        for link in self._links:
            if link.boundaries.upgraded and not link.frozen:
                link.inject.append(frame)
                count += 1
        return count

    def close_all(self) -> None:
        for link in list(self._links):
            link.scope.cancel()
        for hole in list(self._holes):
            hole.cancel()

    # ---------------------------------------------------------------------------- relaying

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.http_500_new:
                await self._answer_500(client)
            elif self.blackhole_new:
                await self._blackhole(client)
            else:
                await self._relay(client)

    async def _answer_500(self, client: trio.SocketStream) -> None:
        request = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in request and len(request) < 65536:
                try:
                    chunk = await client.receive_some(4096)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    return
                request += chunk
            with contextlib.suppress(trio.BrokenResourceError):
                await client.send_all(_HTTP_500)
                self.answered_500 += 1

    async def _blackhole(self, client: trio.SocketStream) -> None:
        """Accept and read, never answer: held until the client gives up (or the run ends)."""
        with trio.CancelScope() as scope:
            self._holes.add(scope)
            try:
                while True:
                    try:
                        if not await client.receive_some(_RECEIVE):
                            return
                    except trio.BrokenResourceError:
                        return
            finally:
                self._holes.discard(scope)

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError:
            return
        link = _Link(client, upstream, drip=self.drip_new)
        self._links.add(link)
        try:
            async with upstream:
                with link.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump_up, link, nursery.cancel_scope)
                        await self._pump_down(link)
                        nursery.cancel_scope.cancel()
        finally:
            self._links.discard(link)

    async def _wait_thawed(self, link: _Link) -> None:
        while link.frozen:
            await trio.sleep_forever()  # a frozen link ends only by close_frozen()

    async def _pump_up(self, link: _Link, scope: trio.CancelScope) -> None:
        assert link.upstream is not None
        try:
            while True:
                await self._wait_thawed(link)
                data = await link.client.receive_some(_RECEIVE)
                await self._wait_thawed(link)
                if not data:
                    break
                await link.upstream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _pump_down(self, link: _Link) -> None:
        assert link.upstream is not None
        try:
            while True:
                await self._wait_thawed(link)
                data = await link.upstream.receive_some(_RECEIVE)
                await self._wait_thawed(link)
                if not data:
                    return
                await self._send_down(link, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _send_down(self, link: _Link, data: bytes) -> None:
        out = bytearray()
        rest = data
        if link.inject and link.boundaries.at_boundary:
            out += link.inject.pop(0)
            self.injected += 1
        while rest:
            before, rest = link.boundaries.split(rest)
            out += before
            if rest and link.inject:
                out += link.inject.pop(0)
                self.injected += 1
        if link.drip:
            for i in range(len(out)):
                await link.client.send_all(bytes(out[i : i + 1]))
                await trio.sleep(DRIP_EVERY_S)  # the fault itself: a peer dripping bytes
        else:
            await link.client.send_all(bytes(out))
