"""AlpacaQuoteFeed against a scripted loopback server: handshake, error codes, subscriptions,
filtering, malformed input, liveness (watchdog, ping), clean close, and secrets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import orjson
import pytest
import trio

from adapters.alpaca import AlpacaFeedConfig, AlpacaQuoteFeed, Secret
from domain.connection import ConnectionState
from domain.errors import (
    FatalFeedError,
    FeedDisconnected,
    FeedStalled,
    FeedUnavailable,
    RetryableFeedError,
    SymbolsRejected,
)
from domain.market import Channel, MarketEvent, Quote, Subscriptions, Trade
from ports.quote_feed import QuoteFeed
from tests.adapters.alpaca.conftest import KEY, SECRET, LogRecords
from tests.adapters.alpaca.fake_server import Script, ServerConnection, fake_alpaca
from tests.adapters.alpaca.proxy import freezable_proxy
from tests.ports import refused_port

GUARD_S = 10.0
# A timeout no test waits out: a path that fell back to it would trip GUARD_S instead. Tests use
# it for "promptly, not by the timeout" instead of a wall-clock bound that fails under load.
NEVER_S = 3600.0


def make_feed(url: str, **overrides: Any) -> AlpacaQuoteFeed:
    settings: dict[str, Any] = {
        "connect_timeout_s": 3.0,
        "auth_timeout_s": 3.0,
        "subscribe_ack_timeout_s": 2.0,
        "ping_interval_s": 5.0,
        "ping_timeout_s": 5.0,
        "close_timeout_s": 1.0,
        "auth": "message",  # the scripted handshake; header auth has its own tests
    }
    settings.update(overrides)
    return AlpacaQuoteFeed(AlpacaFeedConfig(Secret(KEY), Secret(SECRET), url=url, **settings))


def quote(
    symbol: str, bid: float = 100.0, ask: float = 100.5, ts: str = "2024-07-24T07:56:53.1Z"
) -> dict[str, Any]:
    return {"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": 1, "ax": "V", "ap": ask, "as": 2,
            "c": ["R"], "z": "C", "t": ts}  # fmt: skip


async def next_batch(events: Any) -> Sequence[MarketEvent]:
    batch: Sequence[MarketEvent] = await events.__anext__()
    return batch


# -- handshake -------------------------------------------------------------------------------


async def test_authenticates_and_reports_states() -> None:
    states: list[ConnectionState] = []
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            feed = make_feed(server.url)
            async with feed.connect(states.append) as session:
                assert session.confirmed == Subscriptions()
                conn = server.last
                assert conn.received[0] == {"action": "auth", "key": KEY, "secret": SECRET}
                assert conn.headers["content-type"] == "application/json"
                assert isinstance(conn.raw_received[0], str)  # a JSON text frame
    assert states == [ConnectionState.CONNECTING, ConnectionState.AUTHENTICATING]
    assert feed.stats.messages["success"] == 2


@pytest.mark.parametrize("reply", ["separate", "same_frame"])
async def test_header_auth_sends_no_auth_message(reply: str) -> None:
    """ALPACA_AUTH=header: the keys go in the upgrade's headers and no frame carries them;
    ``authenticated`` may follow ``connected`` in its own frame or share it."""
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(header_auth=reply)) as server:
            # No fallback wait: with it, the connect would sit out NEVER_S and trip the guard.
            feed = make_feed(server.url, auth="header", header_auth_wait_s=NEVER_S)
            async with feed.connect() as session:
                conn = server.last
                assert conn.headers["apca-api-key-id"] == KEY
                assert conn.headers["apca-api-secret-key"] == SECRET
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert all(m.get("action") != "auth" for m in conn.received)
                assert all(SECRET not in str(raw) for raw in conn.raw_received)


async def test_header_auth_falls_back_to_the_message_when_unconfirmed(logs: LogRecords) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(header_auth="ignore")) as server:
            feed = make_feed(server.url, auth="header", header_auth_wait_s=0.2)
            async with feed.connect():
                assert server.last.received[0] == {"action": "auth", "key": KEY, "secret": SECRET}
    assert any("sending the auth message" in r.getMessage() for r in logs.records)


async def test_header_auth_with_bad_keys_is_fatal() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(valid_keys=("other", "keys"))) as server:
            with pytest.raises(FatalFeedError, match="402"):
                async with make_feed(server.url, auth="header").connect():
                    pytest.fail("must not get a session")


async def test_402_is_fatal_and_never_retried(logs: LogRecords) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(valid_keys=("other", "keys"))) as server:
            feed = make_feed(server.url)
            with pytest.raises(FatalFeedError) as caught:
                async with feed.connect():
                    pytest.fail("must not get a session")
            assert server.upgrade_attempts == 1
            assert len(server.connections) == 1
    assert caught.value.code == 402
    assert caught.value.setting == "ALPACA_API_KEY / ALPACA_SECRET_KEY"
    assert "ALPACA_API_KEY" in str(caught.value)
    assert feed.stats.errors_by_code[402] == 1
    assert SECRET not in logs.everything()
    assert SECRET not in str(caught.value)


async def test_409_is_fatal_and_names_the_url_setting() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=409)) as server:
            with pytest.raises(FatalFeedError) as caught:
                async with make_feed(server.url).connect():
                    pass
    assert caught.value.code == 409
    assert caught.value.setting == "ALPACA_STREAM_URL"
    assert "v2/iex" in str(caught.value)


@pytest.mark.parametrize("code", [408, 411])
async def test_other_plan_errors_are_fatal(code: int) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=code)) as server:
            with pytest.raises(FatalFeedError) as caught:
                async with make_feed(server.url).connect():
                    pass
    assert caught.value.code == code


async def test_412_stream_needs_msgpack_is_fatal_and_never_retried() -> None:
    """Alpaca 412 ("option not supported": a stream, e.g. options, that speaks only msgpack)
    cannot be fixed by reconnecting: it must stop the service, never back off and retry."""
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=412)) as server:
            feed = make_feed(server.url)
            with pytest.raises(FatalFeedError) as caught:
                async with feed.connect():
                    pytest.fail("must not get a session")
            assert server.upgrade_attempts == 1
    assert not isinstance(caught.value, RetryableFeedError)
    assert caught.value.code == 412
    assert caught.value.setting == "ALPACA_STREAM_URL"
    assert "msgpack" in str(caught.value)
    assert feed.stats.errors_by_code[412] == 1


async def test_406_connection_limit_is_retryable_with_a_minimum_delay() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=406)) as server:
            with pytest.raises(FeedUnavailable) as caught:
                async with make_feed(server.url).connect():
                    pass
    assert caught.value.code == 406
    assert caught.value.min_delay >= 15.0
    assert caught.value.slot_taken  # a new owner retries it fast (domain.backoff.SlotRetry)
    assert "connection limit" in str(caught.value)
    assert "another session" in str(caught.value)


async def test_404_auth_timeout_is_retryable() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=404)) as server:
            with pytest.raises(FeedUnavailable) as caught:
                async with make_feed(server.url).connect():
                    pass
    assert caught.value.code == 404


async def test_no_auth_answer_times_out_as_unavailable() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(authenticate=False)) as server:
            start = trio.current_time()
            with pytest.raises(FeedUnavailable, match="not authenticated within"):
                async with make_feed(server.url, auth_timeout_s=0.3).connect():
                    pass
            assert trio.current_time() - start >= 0.3  # its deadline, not an earlier one
            await server.wait_for(lambda: server.last.closed.is_set())
            assert server.last.close_code == 1000  # closed cleanly even on failure


async def test_no_greeting_times_out_as_unavailable() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(greet=False)) as server:
            with pytest.raises(FeedUnavailable, match="no 'connected' greeting"):
                async with make_feed(server.url, connect_timeout_s=0.3).connect():
                    pass


@pytest.mark.parametrize(("headers", "min_delay"), [([], 5.0), ([(b"Retry-After", b"30")], 30.0)])
async def test_http_429_at_upgrade_is_retryable(
    headers: list[tuple[bytes, bytes]], min_delay: float
) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(reject_status=429, reject_headers=headers)) as server:
            with pytest.raises(FeedUnavailable) as caught:
                async with make_feed(server.url).connect():
                    pass
            assert server.upgrade_attempts == 1
    assert caught.value.code == 429
    assert caught.value.min_delay == min_delay
    assert isinstance(caught.value.__cause__, Exception)  # raised from the transport's error


async def test_connection_refused_is_retryable() -> None:
    with (
        refused_port() as port,
        trio.fail_after(GUARD_S),
        pytest.raises(FeedUnavailable, match="cannot connect"),
    ):
        async with make_feed(f"ws://127.0.0.1:{port}/v2/iex").connect():
            pass


def test_the_adapter_implements_the_port() -> None:
    feed: QuoteFeed = make_feed("wss://stream.data.alpaca.markets/v2/iex")  # checked by mypy
    assert feed.stats.frames == 0


# -- transport security (no network) -----------------------------------------------------------


def test_plain_ws_to_a_remote_host_is_refused_without_network() -> None:
    with pytest.raises(FatalFeedError) as caught:
        make_feed("ws://stream.data.alpaca.markets/v2/iex")
    assert caught.value.setting == "ALPACA_STREAM_URL"
    assert "MDS_ALLOW_INSECURE_WS" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "wss://stream.data.alpaca.markets/v2/iex",
        "ws://127.0.0.1:1/v2/iex",
        "ws://127.8.9.10:1/v2/iex",
        "ws://localhost:1/v2/iex",
        "ws://[::1]:1/v2/iex",
    ],
)
def test_secure_or_loopback_urls_are_accepted(url: str) -> None:
    make_feed(url)


@pytest.mark.parametrize("url", ["http://example.com/", "wss:///v2/iex", "ws://h:99999/x"])
def test_malformed_urls_are_fatal(url: str) -> None:
    with pytest.raises(FatalFeedError):
        make_feed(url)


def test_allow_insecure_warns_loudly(logs: LogRecords) -> None:
    make_feed("ws://10.1.2.3:8080/v2/iex", allow_insecure=True)
    warnings = logs.at(30)
    assert len(warnings) == 1
    assert "INSECURE" in warnings[0]


# -- subscriptions -----------------------------------------------------------------------------


async def test_subscribe_returns_the_full_set_and_missing_symbols(logs: LogRecords) -> None:
    async def drop_unknown(conn: ServerConnection, action: dict[str, Any]) -> bool:
        if action.get("action") == "subscribe":  # the venue silently ignores ZZZZ
            action["quotes"] = [s for s in action.get("quotes", []) if s != "ZZZZ"]
        await server.default_action(conn, action)
        return True

    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca(Script(on_action=drop_unknown)) as server,
            make_feed(server.url).connect() as session,
        ):
            first = await session.subscribe(Subscriptions.quotes({"AAPL", "MSFT"}))
            assert first.confirmed == Subscriptions.quotes({"AAPL", "MSFT"})
            assert first.missing == frozenset()
            second = await session.subscribe(Subscriptions.quotes({"SPY", "ZZZZ"}))
            assert second.confirmed.symbols() == {"AAPL", "MSFT", "SPY"}
            assert second.missing == {"ZZZZ"}
            assert session.confirmed == second.confirmed
            assert server.last.received[1] == {"action": "subscribe", "quotes": ["AAPL", "MSFT"]}
    assert any("ZZZZ" in w for w in logs.at(30))


async def test_subscribe_is_chunked_and_each_chunk_acknowledged() -> None:
    symbols = {f"S{i:02d}" for i in range(7)}
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca() as server,
            make_feed(server.url, subscribe_chunk=3).connect() as session,
        ):
            ack = await session.subscribe(
                Subscriptions({Channel.QUOTES: frozenset(symbols), Channel.TRADES: {"S00"}})  # type: ignore[dict-item]
            )
            sent = server.last.received[1:]
    assert ack.confirmed.symbols(Channel.QUOTES) == symbols
    assert ack.confirmed.symbols(Channel.TRADES) == {"S00"}
    assert [len(m.get("quotes", [])) for m in sent] == [3, 3, 1]
    assert sent[0]["trades"] == ["S00"]
    assert all("trades" not in m for m in sent[1:])


async def test_lenient_ack_parsing() -> None:
    script = Script(omit_empty_channels=True, extra_ack_keys={"corrections": ["AAPL"], "x": 1})
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca(script) as server,
            make_feed(server.url).connect() as session,
        ):
            ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
    assert ack.confirmed == Subscriptions.quotes({"AAPL"})


async def test_unsubscribe_and_data_for_unconfirmed_symbols_is_filtered() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca() as server,
            make_feed(server.url).connect() as session,
        ):
            await session.subscribe(Subscriptions.quotes({"AAPL", "MSFT"}))
            conn = server.last
            events = session.events()
            await conn.send([quote("AAPL"), quote("MSFT")])
            assert [e.symbol for e in await next_batch(events)] == ["AAPL", "MSFT"]
            ack = await session.unsubscribe(Subscriptions.quotes({"MSFT"}))
            assert ack.confirmed == Subscriptions.quotes({"AAPL"})
            assert conn.received[-1] == {"action": "unsubscribe", "quotes": ["MSFT"]}
            # The venue keeps sending MSFT for a moment, and a trade nobody asked for.
            trade = {"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 1.0, "s": 1,
                     "t": "2024-07-24T07:56:53Z", "z": "C"}  # fmt: skip
            await conn.send([quote("MSFT")])
            await conn.send([trade, quote("MSFT"), quote("AAPL", 101.0, 101.5)])
            batch = await next_batch(events)
            assert [(type(e), e.symbol) for e in batch] == [(Quote, "AAPL")]
            assert session.filtered_out == 3


async def test_wildcard_confirms_every_symbol_of_its_channel() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca() as server,
            make_feed(server.url).connect() as session,
        ):
            await session.subscribe(Subscriptions({Channel.TRADES: frozenset({"*"})}))
            trade = {"T": "t", "S": "XYZ", "i": 7, "x": "V", "p": 2, "s": 5,
                     "t": "2024-07-24T07:56:53Z", "z": "C"}  # fmt: skip
            await server.last.send([quote("XYZ"), trade])
            batch = await next_batch(session.events())
    assert batch == [Trade("XYZ", 7, "V", 2.0, 5, (), "C", batch[0].ts_event_ns,
                           batch[0].ts_received_ns)]  # fmt: skip


async def test_405_rejects_the_chunk_and_the_session_goes_on() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(symbol_limit=2)) as server:
            async with make_feed(server.url).connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                with pytest.raises(SymbolsRejected) as caught:
                    await session.subscribe(Subscriptions.quotes({"MSFT", "SPY"}))
                assert caught.value.limit_exceeded
                assert caught.value.code == 405
                assert caught.value.symbols == {"MSFT", "SPY"}
                assert session.confirmed == Subscriptions.quotes({"AAPL"})
                # Still alive: a smaller change works and data flows.
                ack = await session.subscribe(Subscriptions.quotes({"MSFT"}))
                assert ack.confirmed.symbols() == {"AAPL", "MSFT"}
                await server.last.send([quote("MSFT")])
                assert [e.symbol for e in await next_batch(session.events())] == ["MSFT"]
            assert session._failure is not None  # closed by us, not by an error before
    assert session._failure.reason == "session closed by the client"


async def test_400_on_subscribe_rejects_those_symbols_and_logs_the_message(
    logs: LogRecords,
) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(invalid_symbols=frozenset({"BAD$"}))) as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                with pytest.raises(SymbolsRejected) as caught:
                    await session.subscribe(Subscriptions.quotes({"BAD$", "AAPL"}))
                assert caught.value.code == 400
                assert not caught.value.limit_exceeded
                assert caught.value.symbols == {"BAD$", "AAPL"}
                ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert ack.confirmed.symbols() == {"AAPL"}
    errors = logs.at(40)
    assert len(errors) == 1
    assert '{"action":"subscribe","quotes":["AAPL","BAD$"]}' in errors[0]
    assert feed.stats.errors_by_code[400] == 1


async def test_410_on_subscribe_rejects_those_symbols_and_the_session_goes_on() -> None:
    """Alpaca 410 ("invalid subscribe action for this feed", e.g. a channel the feed does not
    carry): the pending change fails with SymbolsRejected(code=410), nothing fatal, no drop."""

    async def refuse_once(conn: ServerConnection, action: dict[str, Any]) -> bool:
        if action.get("action") == "subscribe" and "TSLA" in action.get("quotes", []):
            await conn.send_error(410, "invalid subscribe action for this feed")
            return True
        return False

    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(on_action=refuse_once)) as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                with pytest.raises(SymbolsRejected) as caught:
                    await session.subscribe(Subscriptions.quotes({"TSLA", "AAPL"}))
                assert caught.value.code == 410
                assert not caught.value.limit_exceeded
                assert caught.value.symbols == {"TSLA", "AAPL"}
                ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert ack.confirmed.symbols() == {"AAPL"}
                await server.last.send([quote("AAPL")])
                assert [e.symbol for e in await next_batch(session.events())] == ["AAPL"]
    assert feed.stats.errors_by_code[410] == 1


async def test_400_on_auth_is_fatal_and_the_logged_message_is_redacted(logs: LogRecords) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(auth_error=400)) as server:
            with pytest.raises(FatalFeedError):
                async with make_feed(server.url).connect():
                    pass
    errors = "\n".join(logs.at(40))
    assert '{"action":"auth","key":"***","secret":"***"}' in errors
    assert SECRET not in logs.everything()
    assert KEY not in logs.everything()


async def test_no_ack_ends_the_session() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(ack=False)) as server:
            with pytest.raises(FeedDisconnected, match="no subscription ack"):
                async with make_feed(server.url, subscribe_ack_timeout_s=0.3).connect() as session:
                    with pytest.raises(FeedDisconnected, match="no subscription ack"):
                        await session.subscribe(Subscriptions.quotes({"AAPL"}))
                    async for _ in session.events():
                        pass


async def test_a_late_ack_behind_flowing_data_is_still_awaited() -> None:
    """On a busy stream the ack queues behind data frames: while frames keep arriving the
    subscribe keeps waiting past subscribe_ack_timeout_s (up to six of them)."""
    with trio.fail_after(GUARD_S):
        async with fake_alpaca(Script(ack=False)) as server:
            feed = make_feed(server.url, subscribe_ack_timeout_s=0.3)
            async with feed.connect() as session, trio.open_nursery() as nursery:
                conn = server.last

                async def late_ack() -> None:
                    for _ in range(10):  # 1 s of data, more than three ack timeouts
                        await conn.send([quote("AAPL", 1.0, 2.0)])
                        await trio.sleep(0.1)
                    await conn.send(conn.ack_frame(Script()))

                nursery.start_soon(late_ack)
                ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert ack.confirmed.symbols() == {"AAPL"}


async def test_403_is_ignored_and_the_session_goes_on() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                await server.last.send_error(403, "already authenticated")
                ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
                assert ack.confirmed.symbols() == {"AAPL"}
    assert feed.stats.errors_by_code[403] == 1


@pytest.mark.parametrize("code", [407, 401, 500])
async def test_session_errors_end_events_with_feed_disconnected(code: int) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.last.send([quote("AAPL")])
                await server.last.send_error(code)
                received: list[MarketEvent] = []
                with pytest.raises(FeedDisconnected) as caught:
                    async for batch in session.events():
                        received.extend(batch)
                with pytest.raises(FeedDisconnected):  # and later calls say so too
                    await session.subscribe(Subscriptions.quotes({"MSFT"}))
    assert caught.value.code == code
    assert [e.symbol for e in received] == ["AAPL"]  # what came before the error is delivered
    assert feed.stats.errors_by_code[code] == 1


# -- malformed input ---------------------------------------------------------------------------


async def test_malformed_frames_are_counted_and_skipped(logs: LogRecords) -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL", "MSFT"}))
                conn = server.last
                await conn.send("[{not json")
                await conn.send('{"T":"q"}')  # not a list
                mixed: list[Any] = [
                    quote("AAPL", 1.0, 2.0),
                    {"T": "q", "S": "MSFT"},
                    {"T": "zz", "S": "AAPL"},
                    "junk",
                    quote("MSFT", 3.0, 4.0),
                ]
                await conn.send(orjson.dumps(mixed).decode())
                await conn.send([{"T": "q", "S": "AAPL", "bp": "1", "t": "2024-07-24T07:56:53Z"}])
                await conn.send([quote("AAPL", 5.0, 6.0)])
                events = session.events()
                got: list[Any] = []
                while len(got) < 3:  # frames waiting together may come as one batch
                    got.extend(await next_batch(events))
    assert [(e.symbol, e.bid_price) for e in got] == [("AAPL", 1.0), ("MSFT", 3.0), ("AAPL", 5.0)]
    assert feed.stats.decode_errors == {
        "bad_json": 1, "not_a_list": 1, "missing_field": 1, "unknown_type": 1,
        "not_an_object": 1, "bad_field": 1,
    }  # fmt: skip
    assert feed.stats.messages["quote"] == 3
    warnings = [w for w in logs.at(30) if "malformed" in w]
    assert len(warnings) == 6  # one per reason (rate-limited per reason)


# -- liveness ----------------------------------------------------------------------------------


async def test_silence_while_subscribed_raises_feed_stalled() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca() as server,
            make_feed(server.url, data_watchdog_s=0.4).connect() as session,
        ):
            await trio.sleep(0.6)  # not subscribed: silence is fine
            await session.subscribe(Subscriptions.quotes({"AAPL"}))
            subscribed_at = trio.current_time()
            with pytest.raises(FeedStalled):
                async for _ in session.events():
                    pass
            waited = trio.current_time() - subscribed_at
    assert waited >= 0.35  # from the subscription, not from the connect (0.6 s earlier)


async def test_frozen_connection_fails_on_ping_timeout() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server, freezable_proxy(server.port) as proxy:
            feed = make_feed(
                proxy.url(), ping_interval_s=0.2, ping_timeout_s=0.3, close_timeout_s=0.2
            )
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await trio.sleep(0.5)  # pings answered while traffic flows
                proxy.freeze()
                with pytest.raises(FeedDisconnected, match="no pong"):  # the ping deadline
                    async for _ in session.events():
                        pass
            proxy.thaw()


async def test_server_drop_surfaces_promptly_and_a_new_connect_works() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            feed = make_feed(server.url)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.last.ws.aclose(1011, "going away")
                # The server's close code: the close frame ended it, not a ping timeout (5 + 5 s).
                with pytest.raises(FeedDisconnected, match="1011"):
                    async for _ in session.events():
                        pass
            async with feed.connect() as again:
                ack = await again.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.last.send([quote("AAPL")])
                assert [e.symbol for e in await next_batch(again.events())] == ["AAPL"]
            assert len(server.connections) == 2
            assert ack.confirmed.symbols() == {"AAPL"}


# -- closing -----------------------------------------------------------------------------------


async def test_leaving_sends_a_close_frame() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            async with make_feed(server.url).connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
            await server.last.closed.wait()
            assert server.last.close_code == 1000
            with pytest.raises(FeedDisconnected, match="closed"):
                async for _ in session.events():
                    pass


async def test_cancellation_still_sends_a_close_frame() -> None:
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            # Not the whole close timeout: waiting out NEVER_S would trip the guard.
            with trio.CancelScope() as scope:
                async with make_feed(server.url, close_timeout_s=NEVER_S).connect() as session:
                    await session.subscribe(Subscriptions.quotes({"AAPL"}))
                    scope.cancel()
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            await server.last.closed.wait()
            assert server.last.close_code == 1000


async def test_a_body_error_passes_through_unwrapped_and_closes_cleanly() -> None:
    class Boom(Exception):
        pass

    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            with pytest.raises(Boom):
                async with make_feed(server.url).connect():
                    raise Boom
            await server.last.closed.wait()
            assert server.last.close_code == 1000


# -- msgpack -----------------------------------------------------------------------------------


async def test_msgpack_session_end_to_end() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            fake_alpaca() as server,
            make_feed(server.url, fmt="msgpack").connect() as session,
        ):
            ack = await session.subscribe(Subscriptions.quotes({"AAPL"}))
            conn = server.last
            await conn.send([{"T": "q", "S": "AAPL", "bx": "V", "bp": 187, "bs": 3, "ax": "V",
                              "ap": 187.5, "as": 1, "c": ["R"], "z": "C",
                              "t": msgpack.Timestamp(1721807813, 639713735)}])  # fmt: skip
            batch = await next_batch(session.events())
    assert conn.headers["content-type"] == "application/msgpack"
    assert all(isinstance(raw, bytes) for raw in conn.raw_received)  # our actions in msgpack
    assert conn.received[0] == {"action": "auth", "key": KEY, "secret": SECRET}
    assert ack.confirmed.symbols() == {"AAPL"}
    q = batch[0]
    assert isinstance(q, Quote)
    assert q[:10] == ("AAPL", 187.0, 3, 187.5, 1, "V", "V", ("R",), "C", 1721807813639713735)


# -- secrets -----------------------------------------------------------------------------------


async def test_secrets_never_appear_in_reprs_errors_or_logs(logs: LogRecords) -> None:
    config = AlpacaFeedConfig(Secret(KEY), Secret(SECRET))
    for text in (repr(config), str(config), f"{config.secret_key}", repr(config.api_key)):
        assert SECRET not in text
        assert KEY not in text
    errors: list[BaseException] = []
    with trio.fail_after(GUARD_S):
        for script in (Script(), Script(auth_error=402), Script(auth_error=400),
                       Script(invalid_symbols=frozenset({"X!"}))):  # fmt: skip
            async with fake_alpaca(script) as server:
                try:
                    async with make_feed(server.url).connect() as session:
                        await session.subscribe(Subscriptions.quotes({"X!", "AAPL"}))
                        await server.last.send_error(401, "not authenticated")
                        async for _ in session.events():
                            pass
                except Exception as e:
                    errors.append(e)
    # Each script ends its own way: the 401 drop, bad keys, a refused auth, a refused symbol.
    assert [type(e) for e in errors] == [
        FeedDisconnected,
        FatalFeedError,
        FatalFeedError,
        SymbolsRejected,
    ]
    assert [getattr(e, "code", None) for e in errors] == [401, 402, 400, 400]
    everything = logs.everything() + "".join(f"{e!r}{e}{e.__cause__!r}" for e in errors)
    assert "alpaca" in everything  # the adapter did log
    assert SECRET not in everything
