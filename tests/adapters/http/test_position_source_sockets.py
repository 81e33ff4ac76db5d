"""Position sources over real loopback sockets, on trio with the real clock: proves httpx runs on
the trio backend, that the timeout is explicit, and that a dripping server cannot hold a caller
past the deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
import pytest

from adapters.http.position_source import AlpacaPositionSource, GatewayPositionSource
from domain.errors import PositionSourceError
from tests.ports import refused_port

Handler = Callable[[anyio.abc.SocketStream, bytes], Awaitable[None]]


async def _read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive(4096)
        data += chunk
    return data


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A one-purpose HTTP/1.1 server on a free loopback port; yields its base URL and the raw
    requests it received."""
    requests: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            requests.append(request)
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await handler(stream, request)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        try:
            yield f"http://127.0.0.1:{port}", requests
        finally:
            tg.cancel_scope.cancel()


def response(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def test_gateway_over_a_real_socket_on_trio() -> None:
    async def handler(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(b'{"positions":[{"symbol":"AAPL","qty":"3"}]}'))

    async with (
        http_server(handler) as (url, requests),
        GatewayPositionSource(f"{url}/positions", timeout_s=5) as source,
    ):
        with anyio.fail_after(10):
            assert await source.open_position_symbols() == {"AAPL"}
    assert requests[0].startswith(b"GET /positions HTTP/1.1\r\n")


async def test_alpaca_headers_on_the_wire() -> None:
    async def handler(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(b'[{"symbol":"SPY","qty":"-1","side":"short"}]'))

    async with (
        http_server(handler) as (url, requests),
        AlpacaPositionSource(url, "KEYID", "SECRETKEY") as source,
    ):
        with anyio.fail_after(10):
            assert await source.open_position_symbols() == {"SPY"}
    head = requests[0].lower()
    assert b"\r\napca-api-key-id: keyid\r\n" in head
    assert b"\r\napca-api-secret-key: secretkey\r\n" in head


async def test_silent_server_times_out_after_the_retries() -> None:
    async def handler(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await anyio.sleep_forever()

    async with (
        http_server(handler) as (url, requests),
        GatewayPositionSource(url, timeout_s=0.3, retries=1, backoff_s=0) as source,
    ):
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(PositionSourceError, match="timed out"):
            await source.open_position_symbols()
        elapsed = anyio.current_time() - start
    # Two attempts, each given up at its 0.3 s deadline (load can only make it later; the
    # fail_after above is the upper bound: without the deadline the call hangs for ever).
    assert elapsed >= 0.55
    assert len(requests) == 2


async def test_dripping_server_cannot_hold_the_caller_past_the_deadline() -> None:
    # Each byte arrives well within the read timeout; only the whole-attempt deadline stops it.
    async def handler(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
        )
        while True:
            await anyio.sleep(0.05)
            await stream.send(b" ")

    async with (
        http_server(handler) as (url, _),
        GatewayPositionSource(url, timeout_s=0.5, retries=0) as source,
    ):
        # The whole-attempt deadline ends it (the message says so); without it the 100 kB body
        # would take over an hour at this pace and the fail_after would trip.
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(PositionSourceError, match=r"within 0\.5 s"):
            await source.open_position_symbols()
        assert anyio.current_time() - start >= 0.5


async def test_refused_connection_raises_position_source_error() -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/positions"
        async with GatewayPositionSource(url, retries=1, backoff_s=0) as source:
            with anyio.fail_after(10), pytest.raises(PositionSourceError, match="cannot reach"):
                await source.open_position_symbols()
