"""Fault injection, set in the config or flipped at runtime on ``server.faults``, and clients
that misbehave or vanish at any point."""

from __future__ import annotations

import anyio
import msgpack
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed

from adapters.alpaca_compatible_server import Faults, ServerConfig
from tests.adapters.alpaca_compatible_server.client import (
    Message,
    RawClient,
    ack,
    connect,
    running_server,
)

FAST = ServerConfig(rate=5000, batch=10, bar_interval_s=None)
UPGRADE = (
    b"GET /v2/iex HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def faulty(**faults: object) -> ServerConfig:
    return ServerConfig(rate=5000, batch=10, bar_interval_s=None, faults=Faults(**faults))  # type: ignore[arg-type]


async def read_until_closed(client: RawClient) -> tuple[list[Message], int | None]:
    """Every data message until the connection ends, and the close code the client saw."""
    messages: list[Message] = []
    try:
        while True:
            messages.extend(await client.data())
    except ConnectionClosed as closed:
        return messages, closed.reason.code if closed.reason else None


@pytest.mark.parametrize("use_msgpack", [False, True], ids=["json", "msgpack"])
async def test_drop_after_messages_closes_tcp_after_exactly_n(use_msgpack: bool) -> None:
    with anyio.fail_after(5):
        async with (
            running_server(faulty(drop_after_messages=25)) as server,
            connect(server, use_msgpack=use_msgpack, authenticate=True) as client,
        ):
            await client.subscribe(quotes=["AAPL", "MSFT"])
            messages, code = await read_until_closed(client)
            assert len(messages) == 25
            assert code == 1006  # no close frame
            assert server.stats.connections_dropped == 1
            assert server.stats.messages_sent == 25


async def test_drop_with_rst() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(faulty(drop_after_messages=50, drop_with_rst=True)) as server,
            connect(server, authenticate=True) as client,
        ):
            await client.subscribe(quotes=["AAPL"])
            messages, code = await read_until_closed(client)
            assert code == 1006 and len(messages) <= 50  # a reset may discard unread data
            assert server.stats.connections_dropped == 1


async def test_drop_every_seconds_drops_each_connection_after_that_long() -> None:
    with anyio.fail_after(5):
        async with running_server(faulty(drop_every_s=0.3)) as server:
            for _ in range(2):
                async with connect(server, authenticate=True) as client:
                    started = trio.current_time()
                    await client.subscribe(quotes=["AAPL"])
                    messages, code = await read_until_closed(client)
                    # Not before its time (the 5 s guard bounds it from above, for both).
                    assert trio.current_time() - started >= 0.25
                    assert code == 1006 and messages
            assert server.stats.connections_dropped == 2


async def test_drop_after_messages_flipped_at_runtime() -> None:
    with anyio.fail_after(5):
        async with running_server(FAST) as server, connect(server, authenticate=True) as client:
            await client.subscribe(quotes=["AAPL"])
            await client.data()
            (session,) = server.sessions.values()
            server.faults.drop_after_messages = session.messages_sent + 35
            _, code = await read_until_closed(client)
            assert code == 1006
            assert session.messages_sent == server.faults.drop_after_messages


async def test_drop_connections_now() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(FAST) as server,
            connect(server, authenticate=True, key="A") as a,
            connect(server, authenticate=True, key="B") as b,
        ):
            await server.drop_connections()
            for client in (a, b):
                _, code = await read_until_closed(client)
                assert code == 1006


@pytest.mark.parametrize(
    ("fault", "code", "msg"),
    [
        ("refuse_auth", 402, "auth failed"),
        ("reject_connections_with_406", 406, "connection limit exceeded"),
        ("insufficient_subscription", 409, "insufficient subscription"),
    ],
)
async def test_auth_faults(fault: str, code: int, msg: str) -> None:
    with anyio.fail_after(5):
        async with running_server(faulty(**{fault: True})) as server:
            async with connect(server) as client:
                assert await client.auth() == {"T": "error", "code": code, "msg": msg}
                _, close_code = await read_until_closed(client)
                assert close_code == 1000
            setattr(server.faults, fault, False)  # flipped off: the next connection succeeds
            async with connect(server, authenticate=True):
                pass


async def test_send_407_then_close() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(faulty(send_407_then_close=True)) as server,
            connect(server, authenticate=True) as client,
        ):
            await client.send({"action": "subscribe", "quotes": ["AAPL"]})
            assert await client.control() == ack(quotes=["AAPL"])
            assert await client.control() == {"T": "error", "code": 407, "msg": "slow client"}
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason is not None and closed.value.reason.code == 1000
            assert server.stats.messages_sent == 0


async def test_send_407_flipped_while_streaming() -> None:
    with anyio.fail_after(5):
        async with running_server(FAST) as server, connect(server, authenticate=True) as client:
            await client.subscribe(quotes=["AAPL"])
            await client.data()
            server.faults.send_407_then_close = True
            assert await client.next_control() == {"T": "error", "code": 407, "msg": "slow client"}


def classify(raw: str | bytes, use_msgpack: bool) -> str:
    try:
        frame = msgpack.unpackb(raw) if use_msgpack else orjson.loads(raw)
    except ValueError:
        return "bad_encoding"
    if not isinstance(frame, list):
        return "not_a_list"
    q = frame[0]
    if q["T"] not in ("q", "t", "b"):
        return "unknown_type"
    if "bp" not in q:
        return "missing_fields"
    if not isinstance(q["bp"], float):
        return "wrong_types"
    return "ok"


@pytest.mark.parametrize("use_msgpack", [False, True], ids=["json", "msgpack"])
async def test_malformed_every_n_frames_rotates_through_the_kinds(use_msgpack: bool) -> None:
    with anyio.fail_after(5):
        async with (
            running_server(faulty(malformed_every=3)) as server,
            connect(server, use_msgpack=use_msgpack, authenticate=True) as client,
        ):
            await client.subscribe(quotes=["AAPL"])
            kinds = [classify(await client.recv_raw(), use_msgpack) for _ in range(20)]
            # 3 good frames, then one bad one, rotating through the five kinds.
            assert kinds == ["ok", "ok", "ok", "bad_encoding", "ok", "ok", "ok", "not_a_list",
                             "ok", "ok", "ok", "missing_fields", "ok", "ok", "ok", "wrong_types",
                             "ok", "ok", "ok", "unknown_type"]  # fmt: skip
            assert server.stats.malformed_frames_sent >= 5  # the server runs ahead of the reader
            assert server.stats.frames_sent >= 15


async def test_stall_sends_no_data_but_answers_pings_and_control_until_flipped_off() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(faulty(stall=True)) as server,
            connect(server, authenticate=True) as client,
        ):
            assert await client.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])
            with trio.move_on_after(0.3) as quiet:
                await client.recv()
            assert quiet.cancelled_caught, "a stalled feed sent something"
            await client.ws.ping(b"still there?")  # returns once the pong arrives
            assert await client.subscribe(trades=["MSFT"]) == ack(quotes=["AAPL"], trades=["MSFT"])
            assert server.stats.messages_sent == 0
            server.faults.stall = False
            assert {m["S"] for m in await client.data()} <= {"AAPL", "MSFT"}


async def test_clients_vanishing_at_any_point_do_not_hurt_the_server() -> None:
    with anyio.fail_after(10):
        async with running_server(FAST) as server:
            # TCP only; half an HTTP request; garbage instead of HTTP.
            for payload in (b"", UPGRADE[:30], b"\x16\x03\x01 not http at all\r\n\r\n"):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                if payload:
                    await stream.send_all(payload)
                await stream.aclose()
            # A complete upgrade, then the TCP connection goes away without a close frame.
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(UPGRADE)
            received = b""
            while b"connected" not in received:
                received += await stream.receive_some()
            assert received.startswith(b"HTTP/1.1 101")
            await stream.aclose()
            await server.wait_until(lambda: 1006 in server.stats.client_close_codes)
            # Mid-stream at full speed, and mid-handshake of the WebSocket protocol.
            async with connect(server, authenticate=True) as client:
                await client.subscribe(quotes=["AAPL", "MSFT"])
                await client.data()
                await client.ws._stream.aclose()  # no close frame
            async with connect(server) as client:
                await client.ws._stream.aclose()
            await server.wait_until(lambda: not server.sessions)
            # Still serving normally.
            async with connect(server, authenticate=True) as client:
                await client.subscribe(quotes=["AAPL"])
                assert (await client.data())[0]["S"] == "AAPL"
            assert server.stats.connections_accepted == 7
