"""A tiny scripted Alpaca stream server on loopback, for exact-frame and error-code tests.

It speaks the real WebSocket protocol (trio-websocket) and records what it sees: every
connection, the upgrade headers, every action received, and the close code the client sent.
Behaviour is scripted with :class:`Script` (greeting, auth outcome, subscription rules); tests
push data frames with :meth:`ServerConnection.send` at any time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

CHANNEL_KEYS = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "imbalances",
)

Frame = list[dict[str, Any]]


@dataclass
class Script:
    """How the fake behaves. Defaults: a well-behaved server."""

    greet: bool = True  # send [{"T":"success","msg":"connected"}] on accept
    reject_status: int | None = None  # reject the upgrade with this HTTP status
    reject_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    auth_error: int | None = None  # answer auth with this error code (then close, like Alpaca)
    close_after_auth_error: bool = True
    authenticate: bool = True  # False: never answer auth
    valid_keys: tuple[str, str] | None = None  # (key, secret); wrong ones get 402
    symbol_limit: int | None = None  # 405 when a subscribe would exceed it
    invalid_symbols: frozenset[str] = frozenset()  # 400 when a subscribe contains one
    ack: bool = True  # False: never acknowledge subscription changes
    omit_empty_channels: bool = False  # acks list only non-empty keys (lenient parsing)
    extra_ack_keys: dict[str, Any] = field(default_factory=dict)  # e.g. corrections
    header_auth: str = "separate"
    """Keys in the upgrade headers: ``separate`` answers ``authenticated`` in its own frame
    after ``connected``; ``same_frame`` sends both in one frame; ``ignore`` does not look at
    them (the client must fall back to the auth message)."""
    on_action: Callable[[ServerConnection, dict[str, Any]], Awaitable[bool]] | None = None
    """Called for every action after auth; return True when it was handled (skip defaults)."""


class ServerConnection:
    """One client connection as the server sees it."""

    def __init__(self, ws: WebSocketConnection, request_headers: list[tuple[bytes, bytes]]) -> None:
        self.ws = ws
        self.headers = {k.decode().lower(): v.decode() for k, v in request_headers}
        self.msgpack = self.headers.get("content-type") == "application/msgpack"
        self.received: list[dict[str, Any]] = []
        self.raw_received: list[str | bytes] = []
        self.subscribed: dict[str, set[str]] = {k: set() for k in CHANNEL_KEYS}
        self.authenticated = False
        self.close_code: int | None = None
        self.closed = trio.Event()
        self.changed = trio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    async def send(self, frame: Frame | str | bytes) -> None:
        """Send a frame: raw text/bytes as given, a list encoded in the session's format."""
        if isinstance(frame, str | bytes):
            data: str | bytes = frame
        elif self.msgpack:
            data = msgpack.packb(frame)
        else:
            data = orjson.dumps(frame).decode()
        await self.ws.send_message(data)

    async def send_error(self, code: int, msg: str = "error") -> None:
        await self.send([{"T": "error", "code": code, "msg": msg}])

    def ack_frame(self, script: Script) -> Frame:
        ack: dict[str, Any] = {"T": "subscription"}
        for key in CHANNEL_KEYS:
            symbols = sorted(self.subscribed[key])
            if symbols or not script.omit_empty_channels:
                ack[key] = symbols
        ack.update(script.extra_ack_keys)
        return [ack]

    def all_symbols(self) -> set[str]:
        out: set[str] = set()
        for symbols in self.subscribed.values():
            out |= symbols
        return out


class FakeAlpacaServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[ServerConnection] = []
        self.upgrade_attempts = 0
        self._server: WebSocketServer | None = None
        self._changed = trio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    @property
    def last(self) -> ServerConnection:
        return self.connections[-1]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handler(self, request: WebSocketRequest) -> None:
        self.upgrade_attempts += 1
        self._notify()
        script = self.script
        if script.reject_status is not None:
            await request.reject(script.reject_status, extra_headers=list(script.reject_headers))
            return
        ws = await request.accept()
        conn = ServerConnection(ws, request.headers)
        self.connections.append(conn)
        self._notify()
        try:
            await self._serve(conn)
        except ConnectionClosed as e:
            conn.close_code = None if e.reason is None else e.reason.code
        finally:
            if conn.close_code is None and ws.closed is not None:
                conn.close_code = ws.closed.code
            conn.closed.set()
            conn._notify()
            self._notify()

    async def _receive(self, conn: ServerConnection) -> dict[str, Any]:
        raw = await conn.ws.get_message()
        conn.raw_received.append(raw)
        action: dict[str, Any] = (
            msgpack.unpackb(raw) if isinstance(raw, bytes) else orjson.loads(raw)
        )
        conn.received.append(action)
        conn._notify()
        return action

    async def _serve(self, conn: ServerConnection) -> None:
        script = self.script
        connected = {"T": "success", "msg": "connected"}
        key = conn.headers.get("apca-api-key-id")
        if key is not None and script.header_auth != "ignore" and script.authenticate:
            secret = conn.headers.get("apca-api-secret-key")
            error = script.auth_error
            if script.valid_keys is not None and (key, secret) != script.valid_keys:
                error = 402
            if error is not None:
                await conn.send([connected])
                await conn.send_error(error, _MESSAGES.get(error, "error"))
                await conn.ws.aclose(1008)
                return
            conn.authenticated = True
            authenticated = {"T": "success", "msg": "authenticated"}
            if script.header_auth == "same_frame":
                await conn.send([connected, authenticated])
            else:
                await conn.send([connected])
                await conn.send([authenticated])
        elif script.greet:
            await conn.send([connected])
        while not conn.authenticated:
            action = await self._receive(conn)
            if action.get("action") != "auth":
                await conn.send_error(401, "not authenticated")
                continue
            if not script.authenticate:
                continue
            error = script.auth_error
            if (
                script.valid_keys is not None
                and (
                    action.get("key"),
                    action.get("secret"),
                )
                != script.valid_keys
            ):
                error = 402
            if error is not None:
                await conn.send_error(error, _MESSAGES.get(error, "error"))
                if script.close_after_auth_error:
                    await conn.ws.aclose(1008)
                    return
                continue
            conn.authenticated = True
            await conn.send([{"T": "success", "msg": "authenticated"}])
        while True:
            action = await self._receive(conn)
            if script.on_action is not None and await script.on_action(conn, action):
                continue
            await self.default_action(conn, action)

    async def default_action(self, conn: ServerConnection, action: dict[str, Any]) -> None:
        script = self.script
        kind = action.get("action")
        if kind == "auth":
            await conn.send_error(403, "already authenticated")
            return
        if kind not in ("subscribe", "unsubscribe"):
            await conn.send_error(400, "invalid syntax")
            return
        requested = {k: set(action.get(k, [])) for k in CHANNEL_KEYS}
        if kind == "subscribe":
            every = set().union(*requested.values())
            if every & script.invalid_symbols:
                await conn.send_error(400, "invalid syntax")
                return
            after = conn.all_symbols() | every
            if script.symbol_limit is not None and len(after) > script.symbol_limit:
                await conn.send_error(405, "symbol limit exceeded")
                return
            for key, symbols in requested.items():
                conn.subscribed[key] |= symbols
        else:
            for key, symbols in requested.items():
                conn.subscribed[key] -= symbols
        conn._notify()
        if script.ack:
            await conn.send(conn.ack_frame(script))


_MESSAGES = {
    402: "auth failed",
    404: "auth timeout",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    500: "internal error",
}


@asynccontextmanager
async def fake_alpaca(script: Script | None = None) -> AsyncIterator[FakeAlpacaServer]:
    """Run a fake server on 127.0.0.1 (free port) for the duration of the block."""
    server = FakeAlpacaServer(script or Script())
    async with trio.open_nursery() as nursery:
        server._server = await nursery.start(serve_websocket, server._handler, "127.0.0.1", 0, None)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
