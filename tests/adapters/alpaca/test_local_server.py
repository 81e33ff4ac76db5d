"""End to end against the local Alpaca-compatible server (adapters.alpaca_compatible_server):
the adapter and the server were written independently, so these catch disagreements about the
protocol, not just bugs in one of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from adapters.alpaca import AlpacaFeedConfig, AlpacaQuoteFeed, Secret
from adapters.alpaca_compatible_server import AlpacaCompatibleServer, Faults, ServerConfig
from domain.errors import (
    FatalFeedError,
    FeedDisconnected,
    FeedStalled,
    FeedUnavailable,
    SymbolsRejected,
)
from domain.market import MarketEvent, Quote, Subscriptions

GUARD_S = 10.0
KEYS = {"PKLOCAL1": "local-secret-1"}
SYMBOLS = frozenset({"AAPL", "MSFT", "SPY", "BRK.B"})


@asynccontextmanager
async def local_server(**config: Any) -> AsyncIterator[AlpacaCompatibleServer]:
    settings: dict[str, Any] = {"keys": KEYS, "rate": 500.0, "batch": 5, "seed": 1,
                                "bar_interval_s": None}  # fmt: skip
    settings.update(config)
    server = AlpacaCompatibleServer(ServerConfig(**settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def make_feed(server: AlpacaCompatibleServer, **overrides: Any) -> AlpacaQuoteFeed:
    settings: dict[str, Any] = {"connect_timeout_s": 3.0, "auth_timeout_s": 3.0,
                                "subscribe_ack_timeout_s": 2.0, "close_timeout_s": 1.0}  # fmt: skip
    key = overrides.pop("key", "PKLOCAL1")
    secret = overrides.pop("secret", KEYS["PKLOCAL1"])
    settings["url"] = f"{server.url}/v2/iex"
    settings.update(overrides)
    return AlpacaQuoteFeed(AlpacaFeedConfig(Secret(key), Secret(secret), **settings))


async def collect(session: Any, count: int) -> list[MarketEvent]:
    out: list[MarketEvent] = []
    async for batch in session.events():
        out.extend(batch)
        if len(out) >= count:
            return out
    raise AssertionError("events() ended")  # pragma: no cover


@pytest.mark.parametrize("auth", ["header", "message"])
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_auth_subscribe_and_data_flow(fmt: str, auth: str) -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = make_feed(server, fmt=fmt, auth=auth)
            async with feed.connect() as session:
                assert server.stats.header_auths == (auth == "header")
                assert server.stats.auth_attempts == 1  # no fallback auth message
                ack = await session.subscribe(Subscriptions.quotes(SYMBOLS))
                assert ack.confirmed == Subscriptions.quotes(SYMBOLS)
                assert ack.missing == frozenset()
                events = await collect(session, 200)
                await session.unsubscribe(Subscriptions.quotes({"MSFT", "SPY"}))
                later = await collect(session, 100)
            await server.wait_until(lambda: 1000 in server.stats.client_close_codes)
    assert {e.symbol for e in events} == SYMBOLS
    assert all(isinstance(e, Quote) and e.ts_event_ns > 0 for e in events)
    assert {e.symbol for e in later} == {"AAPL", "BRK.B"}
    assert feed.stats.decode_errors == {}
    assert feed.stats.messages["quote"] >= 300


async def test_a_second_connection_gets_406_with_a_minimum_delay() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            async with make_feed(server).connect() as first:
                await first.subscribe(Subscriptions.quotes({"AAPL"}))
                with pytest.raises(FeedUnavailable) as caught:
                    async with make_feed(server).connect():
                        pytest.fail("the slot is taken")
                assert len(await collect(first, 10)) >= 10  # the first one is unaffected
            # Once the first session has closed cleanly, the slot is free at once.
            await server.wait_until(lambda: not server.active_sessions)
            async with make_feed(server).connect() as again:
                await again.subscribe(Subscriptions.quotes({"AAPL"}))
    assert caught.value.code == 406
    assert caught.value.min_delay >= 15.0


async def test_wrong_keys_are_fatal_after_one_attempt() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            with pytest.raises(FatalFeedError) as caught:
                async with make_feed(server, secret="wrong").connect():
                    pass
            assert server.stats.auth_attempts == 1
            assert server.stats.connections_accepted == 1
    assert caught.value.code == 402


async def test_insufficient_subscription_is_fatal() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server(faults=Faults(insufficient_subscription=True)) as server:
            with pytest.raises(FatalFeedError) as caught:
                async with make_feed(server).connect():
                    pass
    assert caught.value.code == 409


async def test_http_429_at_upgrade() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server(faults=Faults(http_429_at_upgrade=True)) as server:
            with pytest.raises(FeedUnavailable) as caught:
                async with make_feed(server).connect():
                    pass
    assert caught.value.code == 429
    assert caught.value.min_delay >= 1.0


async def test_symbol_limit_405() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            local_server(symbol_limit=3) as server,
            make_feed(server).connect() as session,
        ):
            with pytest.raises(SymbolsRejected) as caught:
                await session.subscribe(Subscriptions.quotes(SYMBOLS))
            assert caught.value.limit_exceeded
            ack = await session.subscribe(Subscriptions.quotes({"AAPL", "MSFT"}))
            assert ack.confirmed.symbols() == {"AAPL", "MSFT"}


async def test_drop_surfaces_and_the_next_session_resubscribes() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = make_feed(server)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes(SYMBOLS))
                await collect(session, 20)
                await server.drop_connections()
                # Seen from the dropped TCP connection: a ping timeout (10 + 10 s by default)
                # would trip GUARD_S instead.
                with pytest.raises(FeedDisconnected):
                    async for _ in session.events():
                        pass
            async with feed.connect() as again:
                ack = await again.subscribe(Subscriptions.quotes(SYMBOLS))
                assert ack.confirmed == Subscriptions.quotes(SYMBOLS)
                assert {e.symbol for e in await collect(again, 100)} == SYMBOLS


async def test_a_mute_server_trips_the_watchdog() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            local_server() as server,
            make_feed(server, data_watchdog_s=0.3).connect() as session,
        ):
            await session.subscribe(Subscriptions.quotes({"AAPL"}))
            await collect(session, 10)
            server.faults.stall = True
            with pytest.raises(FeedStalled):
                async for _ in session.events():
                    pass


async def test_slow_client_407() -> None:
    with trio.fail_after(GUARD_S):
        async with (
            local_server() as server,
            make_feed(server).connect() as session,
        ):
            await session.subscribe(Subscriptions.quotes({"AAPL"}))
            server.faults.send_407_then_close = True
            with pytest.raises(FeedDisconnected) as caught:
                async for _ in session.events():
                    pass
    assert caught.value.code == 407


async def test_malformed_frames_are_counted_and_data_keeps_flowing() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server(faults=Faults(malformed_every=3)) as server:
            feed = make_feed(server)
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.wait_until(lambda: server.stats.malformed_frames_sent >= 10)
                events = await collect(session, 50)
    assert all(isinstance(e, Quote) and e.bid_price >= 0 for e in events)
    # bad_encoding, not_a_list, wrong_types and unknown_type are refused; the server's
    # "missing_fields" quote has no prices at all, which the protocol allows (empty sides).
    assert {"bad_json", "not_a_list", "bad_field", "unknown_type"} <= set(feed.stats.decode_errors)


@pytest.mark.parametrize("auth", ["header", "message"])
async def test_internal_error_500_is_retryable(auth: str) -> None:
    with trio.fail_after(GUARD_S):
        async with local_server(faults=Faults(internal_error=True)) as server:
            with pytest.raises(FeedUnavailable, match="500"):
                async with make_feed(server, auth=auth).connect():
                    pytest.fail("must not get a session")


async def test_a_url_that_is_no_stream_is_a_setting_error() -> None:
    """Alpaca answers a wrong stream path with HTTP 404 at the upgrade; retrying cannot fix
    it: FatalFeedError naming ALPACA_STREAM_URL (was: FeedUnavailable, retried forever)."""
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = AlpacaQuoteFeed(
                AlpacaFeedConfig(
                    Secret("PKLOCAL1"), Secret(KEYS["PKLOCAL1"]), url=f"{server.url}/v2/iexx"
                )
            )
            with pytest.raises(FatalFeedError) as caught:
                async with feed.connect():
                    pytest.fail("must not get a session")
    assert caught.value.code == 404 and caught.value.setting == "ALPACA_STREAM_URL"
    assert server.stats.upgrades_rejected == 1
