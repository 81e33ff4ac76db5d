"""Alpaca's market-data REST latest quotes, answered on the stream server's port from its
synthetic market, so paper mode has initial images too.

``GET /v2/stocks/quotes/latest``, ``/v1beta3/crypto/us/latest/quotes`` and
``/v1beta1/options/quotes/latest`` with ``symbols=A,B`` answer ``{"quotes": {"A": {"bp", "ap",
"bs", "as", "bx", "ax", "t", "c", "z"}}}`` (crypto without venue and tape), stamped now, prices
from the same generators as the streams. Keys in ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``
(401 without valid ones), ``symbols`` required (400), at most 100 option symbols and 1000 others
(400). One request per connection (``Connection: close``). A request that is not one of these
goes on to the WebSocket handshake unchanged (:class:`Replayed` gives back the bytes read).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qs, urlsplit

import orjson
import trio

from adapters.alpaca_compatible_server.endpoints import OPRA_EXCHANGES, SIP_EXCHANGES
from adapters.alpaca_compatible_server.market import (
    CryptoMarketData,
    DataParams,
    MarketData,
    OptionMarketData,
)
from domain.timestamps import format_ns

MAX_HEAD_BYTES: Final = 16 * 1024
REST_PATHS: Final[dict[str, tuple[type[MarketData], tuple[str, ...], int]]] = {
    "/v2/stocks/quotes/latest": (MarketData, SIP_EXCHANGES, 1000),
    "/v1beta3/crypto/us/latest/quotes": (CryptoMarketData, ("CBSE",), 1000),
    "/v1beta1/options/quotes/latest": (OptionMarketData, OPRA_EXCHANGES, 100),
}


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """The bytes of a request's head (through its blank line), or what came before EOF or
    :data:`MAX_HEAD_BYTES`."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
        chunk = await stream.receive_some(MAX_HEAD_BYTES)
        if not chunk:
            break
        head += chunk
    return head


def rest_target(head: bytes) -> str | None:
    """The request target when ``head`` is a complete GET of one of :data:`REST_PATHS`."""
    if b"\r\n\r\n" not in head:
        return None
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return None
    target = parts[1].decode("latin-1")
    return target if urlsplit(target).path in REST_PATHS else None


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out


def _response(status: int, reason: str, body: object) -> bytes:
    data = orjson.dumps(body)
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


def answer(
    head: bytes,
    target: str,
    credentials_valid: Callable[[str, str], bool],
    rng: random.Random,
    now_ns: int,
) -> bytes:
    """The whole HTTP response to a latest-quotes request."""
    headers = _headers(head)
    key = headers.get("apca-api-key-id", "")
    secret = headers.get("apca-api-secret-key", "")
    if not credentials_valid(key, secret):
        return _response(401, "Unauthorized", {"message": "unauthorized."})
    parts = urlsplit(target)
    market_cls, exchanges, limit = REST_PATHS[parts.path]
    query = parse_qs(parts.query)
    symbols = [s for s in ",".join(query.get("symbols", [])).split(",") if s]
    if not symbols:
        return _response(400, "Bad Request", {"message": "missing symbols"})
    if len(symbols) > limit:
        return _response(400, "Bad Request", {"message": f"too many symbols (max {limit})"})
    params = DataParams(
        batch=1,
        pool_frames=1,
        one_sided_probability=0.0,
        crossed_probability=0.0,
        exchanges=exchanges,
    )
    market = market_cls(params, rng)
    stamp = format_ns(now_ns)
    quotes: dict[str, object] = {}
    for symbol in dict.fromkeys(symbols):
        row = {k: v for k, v in market.latest_quote(symbol).items() if k not in ("T", "S")}
        row["t"] = stamp
        quotes[symbol] = row
    return _response(200, "OK", {"quotes": quotes})


class Replayed(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) given back first."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()
