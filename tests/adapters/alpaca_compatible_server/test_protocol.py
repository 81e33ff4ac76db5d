"""Alpaca's control protocol on real loopback sockets: handshake, auth, subscriptions, errors."""

from __future__ import annotations

import anyio
import pytest
import trio
from anyio.abc import TaskStatus
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from adapters.alpaca_compatible_server import AlpacaCompatibleServer, Faults, ServerConfig
from tests.adapters.alpaca_compatible_server.client import ack, connect, running_server

QUIET = ServerConfig(bar_interval_s=None, faults=Faults(stall=True))  # control messages only
KEYED = ServerConfig(keys={"PKTEST": "secret", "PKOTHER": "other"}, bar_interval_s=None)


def error(code: int, msg: str) -> dict[str, object]:
    return {"T": "error", "code": code, "msg": msg}


async def test_connect_and_authenticate() -> None:
    with anyio.fail_after(5):
        async with running_server(KEYED) as server, connect(server) as client:
            assert await client.auth("PKTEST", "secret") == {
                "T": "success",
                "msg": "authenticated",
            }
            (session,) = server.sessions.values()
            assert session.authenticated and session.key == "PKTEST"
            assert server.active_sessions == {"PKTEST": session}
            assert server.stats.auth_attempts == 1 and server.stats.auth_successes == 1


@pytest.mark.parametrize("path", ["/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test"])
async def test_each_stock_endpoint_is_served(path: str) -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server:
            async with connect(server, path + "?ignored=1", authenticate=True):
                pass
            assert server.ended_sessions[-1].path == path


@pytest.mark.parametrize(
    "path", ["/", "/v2", "/v2/iex/", "/v2/IEX", "/v2/nope", "/v1beta3/crypto/eu", "/stream"]
)
async def test_a_path_that_is_no_endpoint_is_refused_with_http_404_at_the_upgrade(
    path: str,
) -> None:
    """Alpaca answers a wrong stream URL with HTTP 404 instead of 101 (alpaca-py #293/#383,
    alpaca-trade-api-go #300)."""
    with anyio.fail_after(5):
        async with running_server(QUIET) as server:
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(server.url + path):
                    pass
            assert rejected.value.status_code == 404
            assert server.stats.upgrades_rejected == 1 and not server.ended_sessions


async def test_by_default_any_non_empty_key_and_secret_is_accepted() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server:
            async with connect(server, authenticate=True, key="ANYTHING"):
                pass
            async with connect(server) as client:
                assert await client.auth("ANYTHING", "") == error(402, "auth failed")


@pytest.mark.parametrize(("key", "secret"), [("PKTEST", "wrong"), ("NOPE", "secret"), ("", "")])
async def test_wrong_credentials_get_402_and_the_connection_closes(key: str, secret: str) -> None:
    with anyio.fail_after(5):
        async with running_server(KEYED) as server, connect(server) as client:
            assert await client.auth(key, secret) == error(402, "auth failed")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason is not None and closed.value.reason.code == 1000
            assert server.stats.errors_sent[402] == 1
            assert not server.active_sessions


async def test_insufficient_subscription_is_409_at_auth() -> None:
    config = ServerConfig(faults=Faults(insufficient_subscription=True))
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server, "/v2/sip") as client:
            assert await client.auth() == error(409, "insufficient subscription")
            with pytest.raises(ConnectionClosed):
                await client.recv()


async def test_no_auth_within_the_timeout_gets_404_and_a_close() -> None:
    config = ServerConfig(auth_timeout_s=0.2)
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server) as client:
            started = trio.current_time()
            assert await client.control() == error(404, "auth timeout")
            assert trio.current_time() - started >= 0.15
            with pytest.raises(ConnectionClosed):
                await client.recv()
            assert server.stats.errors_sent[404] == 1


async def test_authenticated_session_outlives_the_auth_timeout() -> None:
    config = ServerConfig(auth_timeout_s=0.1, rate=100, batch=1, bar_interval_s=None)
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server, authenticate=True) as client:
            await client.subscribe(quotes=["AAPL"])
            # Well past the deadline the session still streams.
            await server.wait_until(lambda: server.stats.messages_sent >= 30)
            assert (await client.data())[0]["S"] == "AAPL"


async def test_second_auth_is_403_and_the_session_stays_open() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            assert await client.auth() == error(403, "already authenticated")
            assert await client.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])


async def test_subscribe_before_auth_is_401_and_auth_still_works() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server) as client:
            assert await client.subscribe(quotes=["AAPL"]) == error(401, "not authenticated")
            assert await client.unsubscribe(quotes=["AAPL"]) == error(401, "not authenticated")
            assert await client.auth() == {"T": "success", "msg": "authenticated"}
            assert await client.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])


async def test_subscribe_adds_unsubscribe_removes_and_every_ack_is_the_full_set() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            assert await client.subscribe(quotes=["MSFT", "AAPL"], trades=["AAPL"]) == ack(
                quotes=["AAPL", "MSFT"], trades=["AAPL"]
            )
            assert await client.subscribe(bars=["SPY"], statuses=["*"]) == ack(
                quotes=["AAPL", "MSFT"], trades=["AAPL"], bars=["SPY"], statuses=["*"]
            )
            assert await client.unsubscribe(quotes=["MSFT"], bars=["SPY"]) == ack(
                quotes=["AAPL"], trades=["AAPL"], statuses=["*"]
            )
            (session,) = server.sessions.values()
            assert session.subscriptions["quotes"] == {"AAPL"}
            assert session.subscriptions["trades"] == {"AAPL"}
            assert session.subscriptions["statuses"] == {"*"}
            # Unsubscribing what is not subscribed and keys that are no channel are harmless.
            assert await client.unsubscribe(quotes=["NVDA"], whatever=["X"]) == ack(
                quotes=["AAPL"], trades=["AAPL"], statuses=["*"]
            )


async def test_wildcard_subscribe_and_unsubscribe() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            assert await client.subscribe(bars=["*"]) == ack(bars=["*"])
            assert await client.unsubscribe(bars=["*"]) == ack()


async def test_symbol_limit_405_leaves_the_set_unchanged() -> None:
    config = ServerConfig(symbol_limit=3, bar_interval_s=None, faults=Faults(stall=True))
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server, authenticate=True) as client:
            assert await client.subscribe(quotes=["AAPL", "MSFT"], trades=["AAPL"]) == ack(
                quotes=["AAPL", "MSFT"], trades=["AAPL"]
            )
            limit = error(405, "symbol limit exceeded")
            assert await client.subscribe(quotes=["NVDA", "TSLA"]) == limit
            assert await client.subscribe(trades=["*"]) == limit
            (session,) = server.sessions.values()
            assert session.subscriptions["quotes"] == {"AAPL", "MSFT"}
            # Still open, and exactly at the limit is fine (distinct across trades and quotes).
            assert await client.subscribe(trades=["NVDA", "AAPL"]) == ack(
                quotes=["AAPL", "MSFT"], trades=["AAPL", "NVDA"]
            )


async def test_the_symbol_limit_counts_trades_and_quotes_only() -> None:
    """Alpaca's plans limit trades and quotes ("30 channels at a time for trades and quotes");
    "there is no limit for the number of channels with minute bars": bars, ``bars: ["*"]`` and
    the other channels never get 405."""
    config = ServerConfig(symbol_limit=2, bar_interval_s=None, faults=Faults(stall=True))
    many = ["AAPL", "AMD", "MSFT", "NVDA", "TSLA"]
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server, authenticate=True) as client:
            assert await client.subscribe(quotes=["AAPL", "MSFT"]) == ack(quotes=["AAPL", "MSFT"])
            full = await client.subscribe(
                bars=["*"], dailyBars=many, updatedBars=many, statuses=["*"], lulds=many
            )
            assert full == ack(
                quotes=["AAPL", "MSFT"],
                bars=["*"],
                dailyBars=many,
                updatedBars=many,
                statuses=["*"],
                lulds=many,
            )
            assert await client.subscribe(trades=["NVDA"]) == error(405, "symbol limit exceeded")


@pytest.mark.parametrize("channel", ["orderbooks", "news"])
async def test_a_channel_of_another_stream_is_410_and_changes_nothing(channel: str) -> None:
    """``orderbooks`` (crypto) and ``news`` exist on Alpaca's other streams, not on stocks:
    "invalid subscribe action for this feed". A key that is no channel at all is ignored."""
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            await client.subscribe(quotes=["MSFT"])
            await client.send({"action": "subscribe", channel: ["AAPL"], "quotes": ["AAPL"]})
            assert await client.control() == error(410, "invalid subscribe action for this feed")
            assert await client.subscribe(whatever=["AAPL"]) == ack(quotes=["MSFT"])


@pytest.mark.parametrize(
    "message",
    [
        {"action": "subscribe", "quotes": ["aapl"]},
        {"action": "subscribe", "quotes": ["AAPL", ""]},
        {"action": "subscribe", "quotes": ["ABCDEFGHIJKLMNOPQRSTUV"]},  # 22 characters
        {"action": "subscribe", "quotes": [".AAPL"]},
        {"action": "subscribe", "quotes": ["AAPL", 7]},
        {"action": "subscribe", "quotes": "AAPL"},
        {"action": "unsubscribe", "trades": {"AAPL": 1}},
        {"action": "dance"},
        {"quotes": ["AAPL"]},
        ["subscribe"],
    ],
)
async def test_malformed_actions_get_400_and_change_nothing(message: object) -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            await client.subscribe(quotes=["MSFT"])
            await client.send(message)
            assert await client.control() == error(400, "invalid syntax")
            assert await client.subscribe() == ack(quotes=["MSFT"])


async def test_undecodable_text_is_400() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server) as client:
            await client.send_raw('{"action": "auth", ')
            assert await client.control() == error(400, "invalid syntax")
            assert await client.auth() == {"T": "success", "msg": "authenticated"}


async def test_valid_symbol_shapes_are_accepted() -> None:
    symbols = ["BRK.B", "BTC/USD", "A", "SPY241220C00500000", "1234", "BF-B"]
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, authenticate=True) as client:
            assert await client.subscribe(bars=symbols) == ack(bars=sorted(symbols))


async def test_second_session_with_the_same_key_gets_406() -> None:
    with anyio.fail_after(5):
        async with running_server(KEYED) as server:
            async with connect(server, authenticate=True) as first:
                async with connect(server) as second:
                    assert await second.auth() == error(406, "connection limit exceeded")
                    with pytest.raises(ConnectionClosed):
                        await second.recv()
                # Another key is another slot; so is another endpoint of the same key.
                async with connect(server) as other:
                    assert (await other.auth("PKOTHER", "other"))["msg"] == "authenticated"
                async with connect(server, "/v2/sip") as sip:
                    assert (await sip.auth())["msg"] == "authenticated"
                assert await first.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])
            # The slot is free again once the first session has closed.
            await server.wait_until(lambda: not server.active_sessions)
            async with connect(server, authenticate=True):
                pass


async def test_http_429_at_upgrade_then_recovery() -> None:
    config = ServerConfig(faults=Faults(http_429_at_upgrade=True), bar_interval_s=None)
    with anyio.fail_after(5):
        async with running_server(config) as server:
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(server.url + "/v2/iex"):
                    pass
            assert rejected.value.status_code == 429
            assert server.stats.upgrades_rejected == 1
            server.faults.http_429_at_upgrade = False
            async with connect(server, authenticate=True):
                pass


async def test_msgpack_session_accepts_msgpack_and_json_actions() -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server:
            async with connect(server, use_msgpack=True) as client:
                assert await client.auth() == {"T": "success", "msg": "authenticated"}
                assert await client.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])
                await client.send_raw('{"action": "subscribe", "trades": ["MSFT"]}')
                assert await client.control() == ack(quotes=["AAPL"], trades=["MSFT"])
                await client.send_raw(b"\xc1")
                assert await client.control() == error(400, "invalid syntax")
            (ended,) = server.ended_sessions
            assert ended.format.value == "msgpack"


@pytest.mark.parametrize("code", [1000, 4001])
async def test_the_close_code_the_client_sends_is_recorded(code: int) -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server:
            async with connect(server, authenticate=True) as client:
                await client.ws.aclose(code)
            await server.wait_until(lambda: len(server.stats.client_close_codes) == 1)
            assert list(server.stats.client_close_codes) == [code]
            (ended,) = server.ended_sessions
            assert ended.client_close_code == code and ended.ended_by == "client"


async def test_server_shutdown_sends_close_1001_to_open_sessions() -> None:
    server = AlpacaCompatibleServer(QUIET)
    server_scope = trio.CancelScope()

    async def serve(*, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await server.run(task_status=task_status)

    with anyio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            async with connect(server, authenticate=True) as client:
                server_scope.cancel()
                with pytest.raises(ConnectionClosed) as closed:
                    await client.recv()
                assert closed.value.reason is not None and closed.value.reason.code == 1001


async def test_runs_under_an_anyio_task_group_and_exposes_its_port() -> None:
    server = AlpacaCompatibleServer(QUIET)
    with pytest.raises(RuntimeError):
        _ = server.port  # not bound yet
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.run)
            assert port == server.port and server.url == f"ws://127.0.0.1:{port}"
            async with connect(server, authenticate=True):
                pass
            tg.cancel_scope.cancel()


def key_headers(key: str = "PKTEST", secret: str = "secret") -> list[tuple[bytes, bytes]]:
    return [(b"APCA-API-KEY-ID", key.encode()), (b"APCA-API-SECRET-KEY", secret.encode())]


async def test_header_auth_at_the_upgrade() -> None:
    """Alpaca's documented header auth (the websocat example): the keys in the upgrade's
    APCA-API-KEY-ID / APCA-API-SECRET-KEY headers; ``connected`` then ``authenticated``, no auth
    message; a later auth message is 403, as for any second auth."""
    quiet_keyed = ServerConfig(keys={"PKTEST": "secret"}, faults=Faults(stall=True))
    with anyio.fail_after(5):
        async with (
            running_server(quiet_keyed) as server,
            connect(server, extra_headers=key_headers()) as client,
        ):
            assert await client.control() == {"T": "success", "msg": "authenticated"}
            assert await client.subscribe(quotes=["AAPL"]) == ack(quotes=["AAPL"])
            assert await client.auth() == error(403, "already authenticated")
            (session,) = server.sessions.values()
            assert session.key == "PKTEST" and server.stats.header_auths == 1


@pytest.mark.parametrize(
    "headers",
    [
        key_headers("PKTEST", "wrong"),
        key_headers("NOPE", "secret"),
        [(b"APCA-API-KEY-ID", b"PKTEST")],  # the secret missing
    ],
)
async def test_bad_header_keys_get_402_and_a_close(headers: list[tuple[bytes, bytes]]) -> None:
    with anyio.fail_after(5):
        async with running_server(KEYED) as server, connect(server, extra_headers=headers) as c:
            assert await c.control() == error(402, "auth failed")
            with pytest.raises(ConnectionClosed):
                await c.recv()
            assert not server.active_sessions


async def test_header_auth_takes_the_endpoints_one_slot() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(KEYED) as server,
            connect(server, extra_headers=key_headers()) as first,
        ):
            assert (await first.control())["msg"] == "authenticated"
            async with connect(server, extra_headers=key_headers()) as second:
                assert await second.control() == error(406, "connection limit exceeded")


async def test_internal_error_fault_is_500_at_auth_then_close() -> None:
    config = ServerConfig(faults=Faults(internal_error=True), bar_interval_s=None)
    with anyio.fail_after(5):
        async with running_server(config) as server, connect(server) as client:
            assert await client.auth() == error(500, "internal error")
            with pytest.raises(ConnectionClosed):
                await client.recv()
            server.faults.internal_error = False
            async with connect(server, authenticate=True):
                pass
