"""A hostile stream endpoint on loopback: a raw trio TCP server that speaks WebSocket with wsproto
one step at a time, so a test can stop anywhere (accept TCP and say nothing, drip the upgrade
answer one byte at a time, never answer a close frame, close first and keep the socket open).

Each accepted connection runs the test's ``behaviour(conn)``; :class:`PeerConnection` records
when things happened (``trio.current_time()``), so tests assert bounds on the client's answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)

Behaviour = Callable[["PeerConnection"], Awaitable[None]]


class PeerConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.received: list[Any] = []  # decoded JSON actions from the client
        self.close_code: int | None = None  # the close frame the client sent
        self.close_at: float | None = None
        self.eof_at: float | None = None  # the client closed TCP
        self.changed = trio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    async def send(self, data: bytes, drip_s: float | None = None) -> None:
        """Send bytes, all at once or one byte every ``drip_s`` seconds."""
        try:
            if drip_s is None:
                await self.stream.send_all(data)
                return
            for i in range(len(data)):
                await self.stream.send_all(data[i : i + 1])
                await trio.sleep(drip_s)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def next_event(self) -> Event | None:
        """The next WebSocket/HTTP event from the client; None once it closed TCP. Control
        frames are recorded (a close frame's code and time) and answered only as the test asks."""
        while True:
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
                    self.close_at = trio.current_time()
                    self._notify()
                if isinstance(event, TextMessage):
                    self.received.append(orjson.loads(event.data))
                    self._notify()
                return event
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof_at = trio.current_time()
                self._notify()
                return None
            self.ws.receive_data(data)

    async def silent(self) -> None:
        """Accept TCP, read whatever comes (unparsed: TLS, HTTP) and never answer."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof_at = trio.current_time()
                self._notify()
                return

    async def read_until_eof(self) -> None:
        """Read (and record) everything the client sends until it closes TCP; answer nothing."""
        while await self.next_event() is not None:
            pass

    async def accept_upgrade(self, drip_s: float | None = None) -> None:
        event = await self.next_event()
        assert isinstance(event, Request), event
        await self.send(self.ws.send(AcceptConnection()), drip_s)

    async def send_json(self, frame: object, drip_s: float | None = None) -> None:
        await self.send(self.ws.send(TextMessage(orjson.dumps(frame).decode())), drip_s)

    async def next_action(self) -> dict[str, Any]:
        """The next JSON action; pings are answered (a live peer), anything else is a failure."""
        while True:
            event = await self.next_event()
            if isinstance(event, Ping):
                await self.send(self.ws.send(event.response()))
                continue
            assert isinstance(event, Message), event
            action: dict[str, Any] = self.received[-1]
            return action

    async def greet_and_authenticate(self) -> None:
        """The Alpaca handshake, well behaved: upgrade, greeting, auth answered."""
        await self.accept_upgrade()
        await self.send_json([{"T": "success", "msg": "connected"}])
        action = await self.next_action()
        assert action["action"] == "auth"
        await self.send_json([{"T": "success", "msg": "authenticated"}])

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (the socket stays open)."""
        await self.send(self.ws.send(CloseConnection(code, reason)))


class HostilePeer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = 0
        self.connections: list[PeerConnection] = []
        self.changed = trio.Event()

    def url(self, scheme: str = "ws", path: str = "/v2/iex") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = PeerConnection(stream)
        self.connections.append(conn)
        self.changed.set()
        self.changed = trio.Event()
        async with stream:
            await self.behaviour(conn)


@asynccontextmanager
async def hostile_peer(behaviour: Behaviour) -> AsyncIterator[HostilePeer]:
    """Serve ``behaviour`` on 127.0.0.1 (free port) for the duration of the block."""
    peer = HostilePeer(behaviour)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, peer._handle, 0, host="127.0.0.1"))
        peer.port = listeners[0].socket.getsockname()[1]
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()
