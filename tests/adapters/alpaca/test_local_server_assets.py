"""The Alpaca adapter against the local server's crypto and option streams (separate
endpoints, each its own session and connection slot)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from adapters.alpaca_compatible_server import Faults
from domain.errors import FatalFeedError
from domain.market import Quote, Subscriptions
from domain.price import Price, price_from_quote
from tests.adapters.alpaca.test_local_server import GUARD_S, collect, local_server, make_feed

OPTION = "AAPL250117C00150000"
PAIRS = frozenset({"BTC/USD", "SHIB/USD", "ETH/USDT", "SOL/USD"})


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_crypto_pairs_stream_with_fractional_sizes_and_exact_mids(fmt: str) -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = make_feed(server, fmt=fmt, url=f"{server.url}/v1beta3/crypto/us")
            async with feed.connect() as session:
                ack = await session.subscribe(Subscriptions.quotes(PAIRS))
                assert ack.confirmed.symbols() == PAIRS
                events = await collect(session, 200)
    quotes = [e for e in events if isinstance(e, Quote)]
    assert {q.symbol for q in quotes} == PAIRS
    assert any(q.bid_size != int(q.bid_size) for q in quotes)  # fractional sizes
    assert all(q.bid_exchange == "" and q.tape == "" for q in quotes)
    for q in quotes:
        price = price_from_quote(q, "CRYPTO_US")
        assert isinstance(price, Price)
        exact = (Decimal(repr(q.bid_price)) + Decimal(repr(q.ask_price))) / 2
        assert price.mid == float(exact)


async def test_option_contracts_stream_over_msgpack() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = make_feed(server, fmt="msgpack", url=f"{server.url}/v1beta1/indicative")
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({OPTION}))
                events = await collect(session, 20)
    quotes = [e for e in events if isinstance(e, Quote)]
    assert quotes and {q.symbol for q in quotes} == {OPTION}
    assert all(len(q.conditions) == 1 and q.bid_exchange for q in quotes)


async def test_the_option_stream_refuses_json_with_412_for_its_stream_only() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server() as server:
            feed = make_feed(
                server,
                fmt="json",
                url=f"{server.url}/v1beta1/opra",
                url_setting="ALPACA_OPTIONS_STREAM_URL",
            )
            with pytest.raises(FatalFeedError) as caught:
                async with feed.connect():
                    pass
    assert caught.value.code == 412
    assert caught.value.lane_only and caught.value.setting == "ALPACA_OPTIONS_STREAM_URL"


async def test_a_fault_limited_to_the_option_path_leaves_stocks_and_crypto_alone() -> None:
    with trio.fail_after(GUARD_S):
        async with local_server(
            faults=Faults(insufficient_subscription=True, paths=frozenset({"/v1beta1/opra"}))
        ) as server:
            options = make_feed(server, fmt="msgpack", url=f"{server.url}/v1beta1/opra")
            with pytest.raises(FatalFeedError) as caught:
                async with options.connect():
                    pass
            assert caught.value.code == 409 and caught.value.lane_only
            stocks = make_feed(server, fmt="msgpack")
            crypto = make_feed(server, fmt="json", url=f"{server.url}/v1beta3/crypto/us")
            # One key holds a slot on each endpoint at once.
            async with stocks.connect() as s1, crypto.connect() as s2:
                await s1.subscribe(Subscriptions.quotes({"AAPL"}))
                await s2.subscribe(Subscriptions.quotes({"BTC/USD"}))
                assert {e.symbol for e in await collect(s1, 5)} == {"AAPL"}
                assert {e.symbol for e in await collect(s2, 5)} == {"BTC/USD"}
