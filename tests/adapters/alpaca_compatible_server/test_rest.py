"""The local server answers Alpaca's market-data REST latest quotes on its stream port (paper
mode's initial image), through the service's own REST adapter; the streams are unchanged."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from adapters.alpaca_compatible_server import ServerConfig
from adapters.http.snapshot_source import AlpacaSnapshotSource
from domain.assets import AssetClass
from domain.price import Price, price_from_quote
from tests.adapters.alpaca_compatible_server.client import connect, running_server

KEYS = {"PKLOCAL": "local-secret"}
OPTION = "AAPL250117C00150000"


@pytest.mark.parametrize(
    ("cls", "symbols"),
    [
        (AssetClass.US_EQUITY, ["AAPL", "MSFT"]),
        (AssetClass.CRYPTO, ["BTC/USD", "SHIB/USD"]),
        (AssetClass.US_OPTION, [OPTION]),
    ],
)
async def test_latest_quotes_of_every_class_from_the_synthetic_market(
    cls: AssetClass, symbols: list[str]
) -> None:
    with anyio.fail_after(10):
        async with running_server(ServerConfig(keys=KEYS, seed=7)) as server:
            base = f"http://127.0.0.1:{server.port}"
            source = AlpacaSnapshotSource(
                base, "PKLOCAL", "local-secret", time.time_ns, stock_feed="iex"
            )
            async with source:
                before = time.time_ns()
                quotes = await source.latest_quotes(cls, symbols)
            assert server.stats.rest_requests == 1
    assert sorted(q.symbol for q in quotes) == sorted(symbols)
    for q in quotes:
        assert 0 < q.bid_price < q.ask_price
        assert before - 5 * 10**9 < q.ts_event_ns <= q.ts_received_ns
        assert isinstance(price_from_quote(q, "X"), Price)
    assert source.stats["skipped_symbols"] == 0


async def test_bad_keys_get_401_missing_symbols_400_and_the_streams_still_work() -> None:
    with anyio.fail_after(10):
        async with running_server(ServerConfig(keys=KEYS)) as server:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient() as client:
                path = "/v2/stocks/quotes/latest"
                bad = await client.get(
                    base + path,
                    params={"symbols": "AAPL"},
                    headers={"APCA-API-KEY-ID": "PKLOCAL", "APCA-API-SECRET-KEY": "wrong"},
                )
                good = {"APCA-API-KEY-ID": "PKLOCAL", "APCA-API-SECRET-KEY": "local-secret"}
                empty = await client.get(base + path, headers=good)
                many = await client.get(
                    base + "/v1beta1/options/quotes/latest",
                    params={"symbols": ",".join([OPTION] * 101)},
                    headers=good,
                )
            assert bad.status_code == 401
            assert empty.status_code == 400
            assert many.status_code == 400
            # A WebSocket upgrade on the same port is untouched by the REST handling.
            async with connect(server, "/v2/iex") as ws:
                assert (await ws.auth("PKLOCAL", "local-secret"))["T"] == "success"
