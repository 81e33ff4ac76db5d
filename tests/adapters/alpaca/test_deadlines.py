"""Every network wait of the Alpaca adapter ends by OUR deadline, and leaving releases the socket.

Against hostile loopback peers (raw trio sockets speaking wsproto step by step): a TCP connect
that never completes, a TLS handshake or HTTP upgrade never answered, each phase answered one
byte at a time (a drip is a stall too: the deadline covers the whole phase, not each read), no
pong, a peer that stops reading our subscription change, a close frame never answered, and a
server that closes first and keeps its socket open.
Real time, with deadlines of a few tenths of a second; each bound allows for a loaded machine.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import trio

from adapters.alpaca_compatible_server.config import ServerConfig
from domain.errors import FeedDisconnected, FeedUnavailable
from domain.market import Subscriptions
from tests.adapters.alpaca.hostile_peer import PeerConnection, hostile_peer
from tests.adapters.alpaca.test_feed import make_feed
from tests.fault.helpers import alpaca_server

GUARD_S = 10.0
DEADLINE_S = 0.4
SLACK_S = 1.5  # scheduling on a loaded 2-core machine; the old code hung for ever
# A timeout no test waits out: code that fell back to it would trip GUARD_S instead (how the
# "promptly, not by the timeout" tests say so without a wall-clock bound that fails under load).
NEVER_S = 3600.0
DRIP_S = 0.05  # one byte every 50 ms: any Alpaca frame takes seconds


def fast(url: str, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "connect_timeout_s": DEADLINE_S,
        "auth_timeout_s": DEADLINE_S,
        "subscribe_ack_timeout_s": DEADLINE_S,
        "close_timeout_s": DEADLINE_S,
    }
    settings.update(overrides)
    return make_feed(url, **settings)


async def connect_fails(feed: Any, error: type[Exception], match: str) -> float:
    """Connect, expect ``error`` matching ``match``; the seconds it took."""
    start = trio.current_time()
    with pytest.raises(error, match=match):
        async with feed.connect():
            pytest.fail("must not get a session")
    return trio.current_time() - start


async def released(conn: PeerConnection) -> None:
    """The client closed its socket (the peer read EOF) within the slack."""
    with trio.fail_after(SLACK_S):
        await conn.wait_for(lambda: conn.eof_at is not None)


# -- opening: TCP, TLS, upgrade ------------------------------------------------------------------


@contextmanager
def full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full: a new TCP connect gets no SYN-ACK."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(2):  # the queue holds backlog + 1 on Linux; the second may not get in
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for s in (*fillers, listener):
            s.close()


async def test_a_tcp_connect_that_never_completes_ends_at_the_connect_timeout() -> None:
    with trio.fail_after(GUARD_S), full_backlog() as port:
        feed = fast(f"ws://127.0.0.1:{port}/v2/iex")
        took = await connect_fails(feed, FeedUnavailable, "TCP connect did not complete within")
    assert DEADLINE_S - 0.05 <= took < DEADLINE_S + SLACK_S


async def test_a_tls_handshake_never_answered_ends_at_the_connect_timeout() -> None:
    with trio.fail_after(GUARD_S):
        async with hostile_peer(PeerConnection.silent) as peer:
            feed = fast(peer.url("wss"))
            took = await connect_fails(
                feed, FeedUnavailable, "TLS handshake did not complete within"
            )
            assert DEADLINE_S - 0.05 <= took < DEADLINE_S + SLACK_S
            await released(peer.connections[0])


async def test_an_upgrade_never_answered_ends_at_the_connect_timeout() -> None:
    """The issue's defect 2: TCP accepted, the HTTP upgrade never answered. The old adapter
    hung here for ever (trio-websocket's nursery waited on its reader)."""
    with trio.fail_after(GUARD_S):
        async with hostile_peer(PeerConnection.silent) as peer:
            feed = fast(peer.url())
            took = await connect_fails(
                feed, FeedUnavailable, "HTTP upgrade did not complete within"
            )
            assert DEADLINE_S - 0.05 <= took < DEADLINE_S + SLACK_S
            await released(peer.connections[0])
            assert feed.connects == 1


async def test_an_upgrade_answer_dripped_a_byte_at_a_time_ends_at_the_connect_timeout() -> None:
    async def drip_upgrade(conn: PeerConnection) -> None:
        await conn.accept_upgrade(drip_s=DRIP_S)
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(drip_upgrade) as peer:
            took = await connect_fails(
                fast(peer.url()), FeedUnavailable, "HTTP upgrade did not complete within"
            )
            assert took < DEADLINE_S + SLACK_S
            await released(peer.connections[0])


async def test_a_peer_that_closes_during_the_upgrade_fails_at_once() -> None:
    async def hang_up(conn: PeerConnection) -> None:
        await conn.next_event()  # the upgrade request; then close the socket

    with trio.fail_after(GUARD_S):
        async with hostile_peer(hang_up) as peer:
            await connect_fails(  # at once: not the connect timeout (NEVER_S)
                fast(peer.url(), connect_timeout_s=NEVER_S),
                FeedUnavailable,
                "during the HTTP upgrade",
            )


async def test_an_http_rejection_at_the_upgrade_is_unavailable_with_its_status() -> None:
    async def reject(conn: PeerConnection) -> None:
        await conn.next_event()
        await conn.send(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
        )
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(reject) as peer:
            with pytest.raises(FeedUnavailable) as caught:  # at once: not at NEVER_S
                async with fast(peer.url(), connect_timeout_s=NEVER_S).connect():
                    pass
            await released(peer.connections[0])
    assert caught.value.code == 429
    assert caught.value.min_delay == 7.0


# -- the Alpaca handshake, dripped ---------------------------------------------------------------


async def test_a_greeting_dripped_a_byte_at_a_time_ends_at_the_connect_timeout() -> None:
    async def drip_greeting(conn: PeerConnection) -> None:
        await conn.accept_upgrade()
        await conn.send_json([{"T": "success", "msg": "connected"}], drip_s=DRIP_S)
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(drip_greeting) as peer:
            took = await connect_fails(
                fast(peer.url()), FeedUnavailable, "no 'connected' greeting within"
            )
            assert took < DEADLINE_S + SLACK_S
            await released(peer.connections[0])


async def test_an_auth_answer_dripped_a_byte_at_a_time_ends_at_the_auth_timeout() -> None:
    async def drip_auth(conn: PeerConnection) -> None:
        await conn.accept_upgrade()
        await conn.send_json([{"T": "success", "msg": "connected"}])
        await conn.next_action()
        await conn.send_json([{"T": "success", "msg": "authenticated"}], drip_s=DRIP_S)
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(drip_auth) as peer:
            took = await connect_fails(
                fast(peer.url()), FeedUnavailable, "not authenticated within"
            )
            assert took < 2 * DEADLINE_S + SLACK_S
            await released(peer.connections[0])


async def test_a_subscription_ack_dripped_a_byte_at_a_time_ends_the_session() -> None:
    async def drip_ack(conn: PeerConnection) -> None:
        await conn.greet_and_authenticate()
        await conn.next_action()
        ack = [{"T": "subscription", "quotes": ["AAPL"], "trades": [], "bars": []}]
        await conn.send_json(ack, drip_s=DRIP_S)
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(drip_ack) as peer:
            async with fast(peer.url()).connect() as session:
                start = trio.current_time()
                with pytest.raises(FeedDisconnected, match="no subscription ack within"):
                    await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert trio.current_time() - start < DEADLINE_S + SLACK_S
            await released(peer.connections[0])


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe"])
async def test_a_peer_that_stops_reading_fails_our_send_at_our_deadline(
    action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "send timeouts": after auth the peer stops reading, so a subscription change
    cannot be written out. The send is shielded (half a frame would break the stream) but
    bounded by OUR deadline (``subscribe_ack_timeout_s``): it ends the session with "could not
    send within", it does not wait for the peer. Socket buffers are made small (the client's
    send buffer, the peer's receive buffer) so that one 20,000-symbol message cannot fit in
    them, as a real stuck peer's full buffers would."""
    dial = trio.open_tcp_stream

    async def small_send_buffer(*args: Any, **kwargs: Any) -> trio.SocketStream:
        stream = await dial(*args, **kwargs)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return stream

    monkeypatch.setattr(trio, "open_tcp_stream", small_send_buffer)

    async def stop_reading(conn: PeerConnection) -> None:
        conn.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await conn.greet_and_authenticate()
        # Read nothing more. Hang up after the guard: a send without our deadline then fails
        # with another message instead of hanging the test (the send is shielded).
        await trio.sleep(GUARD_S + 1)

    symbols = {f"S{i:06d}" for i in range(20_000)}
    with trio.fail_after(GUARD_S):
        async with hostile_peer(stop_reading) as peer:
            feed = fast(peer.url(), subscribe_chunk=len(symbols))
            async with feed.connect() as session:
                change = getattr(session, action)
                start = trio.current_time()
                with pytest.raises(FeedDisconnected, match=r"could not send within 0\.4 s"):
                    await change(Subscriptions.quotes(symbols))
                assert trio.current_time() - start >= DEADLINE_S - 0.05  # OUR deadline, whole
                with pytest.raises(FeedDisconnected, match="could not send"):
                    async for _ in session.events():  # the session is over
                        pass


async def test_a_frame_dripped_a_byte_at_a_time_ends_the_session_at_the_ping_timeout() -> None:
    """No pong can pass a frame that is still arriving: the ping deadline ends the session."""

    async def drip_data(conn: PeerConnection) -> None:
        await conn.greet_and_authenticate()
        quote = {"T": "q", "S": "AAPL", "bp": 1.0, "ap": 1.1, "t": "2024-07-24T07:56:53.1Z"}
        await conn.send_json([quote] * 50, drip_s=DRIP_S)
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(drip_data) as peer:
            feed = fast(peer.url(), ping_interval_s=0.2, ping_timeout_s=DEADLINE_S)
            async with feed.connect() as session:
                start = trio.current_time()
                with pytest.raises(FeedDisconnected, match="no pong within"):
                    async for _ in session.events():
                        pass
                assert trio.current_time() - start < 0.2 + DEADLINE_S + SLACK_S
            await released(peer.connections[0])


# -- leaving ----------------------------------------------------------------------------------


async def test_a_close_frame_never_answered_is_given_up_at_the_close_timeout() -> None:
    async def never_answer_close(conn: PeerConnection) -> None:
        await conn.greet_and_authenticate()
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(never_answer_close) as peer:
            async with fast(peer.url()).connect():
                pass  # leave at once
                left_at = trio.current_time()
            took = trio.current_time() - left_at
            conn = peer.connections[0]
            await released(conn)
    assert conn.close_code == 1000
    assert DEADLINE_S - 0.05 <= took < DEADLINE_S + SLACK_S


async def test_a_server_close_is_answered_and_the_socket_released_at_once() -> None:
    """The issue's defect 3: Alpaca closes with 1001 on maintenance and keeps its socket open
    until we answer and hang up. The client answers the close frame (echoing 1001) and closes
    TCP at once, so the venue frees the account's single slot. The old adapter answered but
    never closed its socket (leaked until garbage collection)."""

    async def close_first(conn: PeerConnection) -> None:
        await conn.greet_and_authenticate()
        await conn.next_action()
        await conn.send_json([{"T": "subscription", "quotes": ["AAPL"]}])
        await conn.close(1001, "maintenance")
        await conn.read_until_eof()

    with trio.fail_after(GUARD_S):
        async with hostile_peer(close_first) as peer:
            # At once, not at the close timeout: waiting out NEVER_S would trip the guard.
            async with fast(peer.url(), close_timeout_s=NEVER_S).connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                with pytest.raises(FeedDisconnected, match="1001"):
                    async for _ in session.events():
                        pass
            conn = peer.connections[0]
            await conn.wait_for(lambda: conn.eof_at is not None)
    assert conn.close_code == 1001
    assert conn.close_at is not None and conn.eof_at is not None
    assert conn.close_at <= conn.eof_at  # answered the close frame, then hung up


async def test_after_a_server_close_the_immediate_reconnect_is_not_refused_406() -> None:
    """Against the local Alpaca-compatible server (one session per key): it closes the session
    with 1001; the client's answer ends it at once and the next connect authenticates."""
    # The server's close handshake completes, not its close timeout: waiting out NEVER_S (on
    # either side) would trip the guard.
    config = ServerConfig(rate=200, batch=10, bar_interval_s=None, close_timeout_s=NEVER_S)
    with trio.fail_after(GUARD_S):
        async with alpaca_server(config) as server:
            feed = fast(f"{server.url}/v2/iex", close_timeout_s=NEVER_S)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                (live,) = server.sessions.values()
                live.stop()
                with pytest.raises(FeedDisconnected, match="1001"):
                    async for _ in session.events():
                        pass
            await server.wait_until(lambda: not server.sessions)
            async with feed.connect() as again:
                ack = await again.subscribe(Subscriptions.quotes({"AAPL"}))
            assert ack.confirmed.symbols() == {"AAPL"}
            assert server.stats.errors_sent[406] == 0
