"""A minimal raw Alpaca-protocol client for the server's tests (trio-websocket, no adapter code),
and a helper that runs the server in the test's own nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import msgpack
import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from adapters.alpaca_compatible_server import AlpacaCompatibleServer, ServerConfig

Message = dict[str, Any]


@asynccontextmanager
async def running_server(
    config: ServerConfig | None = None,
) -> AsyncIterator[AlpacaCompatibleServer]:
    """The server on an ephemeral loopback port, stopped (cancelled) on exit."""
    server = AlpacaCompatibleServer(config or ServerConfig())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


class RawClient:
    """Sends actions and decodes frames exactly as they are on the wire."""

    def __init__(self, ws: WebSocketConnection, use_msgpack: bool) -> None:
        self.ws = ws
        self.msgpack = use_msgpack

    async def send(self, message: object) -> None:
        if self.msgpack:
            await self.ws.send_message(msgpack.packb(message))
        else:
            await self.ws.send_message(orjson.dumps(message).decode())

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send_message(raw)

    async def recv_raw(self) -> str | bytes:
        return await self.ws.get_message()

    async def recv(self) -> list[Message]:
        raw = await self.ws.get_message()
        if self.msgpack:
            assert isinstance(raw, bytes), "msgpack sessions send binary frames"
            decoded = msgpack.unpackb(raw)
        else:
            assert isinstance(raw, str), "JSON sessions send text frames"
            decoded = orjson.loads(raw)
        assert isinstance(decoded, list), decoded
        return cast(list[Message], decoded)

    async def control(self) -> Message:
        """The next frame, which must be a control message alone in an array of length 1."""
        frame = await self.recv()
        assert len(frame) == 1, frame
        assert frame[0]["T"] in ("success", "error", "subscription"), frame
        return frame[0]

    async def next_control(self) -> Message:
        """Skip data frames until a control message arrives."""
        while True:
            frame = await self.recv()
            if frame[0]["T"] in ("success", "error", "subscription"):
                assert len(frame) == 1, frame
                return frame[0]

    async def auth(self, key: str = "PKTEST", secret: str = "secret") -> Message:
        await self.send({"action": "auth", "key": key, "secret": secret})
        return await self.control()

    async def subscribe(self, **channels: list[str]) -> Message:
        await self.send({"action": "subscribe", **channels})
        return await self.next_control()

    async def unsubscribe(self, **channels: list[str]) -> Message:
        await self.send({"action": "unsubscribe", **channels})
        return await self.next_control()

    async def data(self) -> list[Message]:
        """The next data frame (control frames are not expected here)."""
        frame = await self.recv()
        assert frame and frame[0]["T"] in ("q", "t", "b"), frame
        return frame


@asynccontextmanager
async def connect(
    server: AlpacaCompatibleServer,
    path: str = "/v2/iex",
    *,
    use_msgpack: bool = False,
    authenticate: bool = False,
    key: str = "PKTEST",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[RawClient]:
    """Open a WebSocket, read ``connected`` and optionally authenticate."""
    headers = [(b"Content-Type", b"application/msgpack")] if use_msgpack else []
    headers += extra_headers or []
    async with open_websocket_url(server.url + path, extra_headers=headers) as ws:
        client = RawClient(ws, use_msgpack)
        assert await client.control() == {"T": "success", "msg": "connected"}
        if authenticate:
            assert await client.auth(key) == {"T": "success", "msg": "authenticated"}
        yield client


def ack(**channels: list[str]) -> Message:
    """The full ``subscription`` message Alpaca would send for these channels."""
    trades = channels.get("trades", [])
    return {
        "T": "subscription",
        "trades": trades,
        "quotes": channels.get("quotes", []),
        "bars": channels.get("bars", []),
        "updatedBars": channels.get("updatedBars", []),
        "dailyBars": channels.get("dailyBars", []),
        "statuses": channels.get("statuses", []),
        "lulds": channels.get("lulds", []),
        "corrections": trades,
        "cancelErrors": trades,
    }
