"""The latest-quotes REST adapter against respx-mocked HTTP, in virtual time: URLs and feeds per
class, batching, pacing, the deadline, and every error skipped and counted (never raised)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest
import respx
import trio.testing

from adapters.http.snapshot_source import AlpacaSnapshotSource
from domain.assets import AssetClass
from domain.timestamps import parse_rfc3339_ns
from ports.snapshot_source import SnapshotSource

BASE = "https://data.alpaca.markets"
KEY = "PKTESTKEY0123456789"
SECRET = "s3cr3t-DO-NOT-LOG-abcdefghijklmnop"
NOW = 1_700_000_000 * 1_000_000_000
ROW = {"bp": 150.25, "ap": 150.27, "bs": 1, "as": 2, "bx": "V", "ax": "Q",
       "t": "2024-01-02T15:04:05.123456789Z", "c": ["R"], "z": "C"}  # fmt: skip


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


def source(**kwargs: Any) -> AlpacaSnapshotSource:
    return AlpacaSnapshotSource(BASE, KEY, SECRET, lambda: NOW, **kwargs)


async def fetch(src: AlpacaSnapshotSource, cls: AssetClass, symbols: list[str]) -> list[Any]:
    port: SnapshotSource = src  # mypy checks the adapter against the port here
    async with src:
        with anyio.fail_after(600):  # virtual seconds: a guard, not a wait
            return await port.latest_quotes(cls, symbols)


@pytest.mark.parametrize(
    ("cls", "kwargs", "path", "params"),
    [
        (AssetClass.US_EQUITY, {"stock_feed": "sip"}, "/v2/stocks/quotes/latest",
         {"symbols": "AAPL,MSFT", "feed": "sip"}),
        (AssetClass.CRYPTO, {}, "/v1beta3/crypto/us/latest/quotes",
         {"symbols": "BTC/USD,ETH/USD"}),
        (AssetClass.US_OPTION, {"option_feed": "indicative"}, "/v1beta1/options/quotes/latest",
         {"symbols": "AAPL250117C00150000", "feed": "indicative"}),
    ],
)  # fmt: skip
async def test_each_class_asks_its_endpoint_with_keys_and_feed(
    cls: AssetClass, kwargs: dict[str, str], path: str, params: dict[str, str]
) -> None:
    symbols = params["symbols"].split(",")
    with respx.mock:
        route = respx.get(BASE + path, params=params).respond(
            json={"quotes": {s: ROW for s in symbols}}
        )
        quotes = await fetch(source(**kwargs), cls, symbols)
    assert route.call_count == 1
    request = route.calls[0].request
    assert request.headers["APCA-API-KEY-ID"] == KEY
    assert request.headers["APCA-API-SECRET-KEY"] == SECRET
    assert sorted(q.symbol for q in quotes) == sorted(symbols)
    q = quotes[0]
    assert (q.bid_price, q.ask_price, q.bid_size, q.ask_size) == (150.25, 150.27, 1, 2)
    assert q.ts_event_ns == parse_rfc3339_ns("2024-01-02T15:04:05.123456789Z")
    assert q.ts_received_ns == NOW
    assert q.conditions == ("R",)


async def test_symbols_are_batched_and_paced() -> None:
    symbols = [f"S{i:03d}" for i in range(250)]
    times: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        asked = request.url.params["symbols"].split(",")
        return httpx.Response(200, json={"quotes": {s: ROW for s in asked}})

    with respx.mock:
        respx.get(BASE + "/v2/stocks/quotes/latest").mock(side_effect=answer)
        src = source(batch_size=100, max_calls_per_minute=60)
        # burst 5, then one a second: 3 calls for 250 symbols go at once
        quotes = await fetch(src, AssetClass.US_EQUITY, symbols)
        assert len(quotes) == 250 and len(times) == 3
        src2 = source(batch_size=10, max_calls_per_minute=60)
        times.clear()
        await fetch(src2, AssetClass.US_EQUITY, symbols[:70])
    assert len(times) == 7
    assert times[5] - times[0] == pytest.approx(1.0) and times[6] - times[5] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("response", "counter"),
    [
        (httpx.Response(503), "errors"),
        (httpx.ConnectError("refused"), "errors"),
        (httpx.Response(200, content=b"not json"), "errors"),
        (httpx.Response(200, json={"message": "x"}), "errors"),
        (httpx.Response(403, json={"message": "forbidden"}), "refused"),
        (httpx.Response(429, headers={"Retry-After": "30"}), "rate_limited"),
    ],
    ids=["503", "connect", "not-json", "no-quotes", "403", "429"],
)
async def test_a_failing_batch_is_skipped_and_counted_never_raised(
    response: httpx.Response | Exception, counter: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = source(batch_size=2)
    with respx.mock, caplog.at_level(logging.WARNING):
        route = respx.get(BASE + "/v2/stocks/quotes/latest")
        route.side_effect = [response, httpx.Response(200, json={"quotes": {"C": ROW}})]
        start = anyio.current_time()
        quotes = await fetch(src, AssetClass.US_EQUITY, ["A", "B", "C"])
    assert [q.symbol for q in quotes] == ["C"]
    assert src.stats[counter] == 1 and src.stats["skipped_symbols"] == 2
    if counter == "rate_limited":  # the next call waited what the server asked
        assert anyio.current_time() - start == pytest.approx(30.0)
    assert SECRET not in caplog.text and KEY not in caplog.text


async def test_a_server_that_never_answers_is_cut_at_the_deadline() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    src = source(timeout_s=5.0)
    with respx.mock:
        respx.get(BASE + "/v1beta3/crypto/us/latest/quotes").mock(side_effect=hang)
        start = anyio.current_time()
        assert await fetch(src, AssetClass.CRYPTO, ["BTC/USD"]) == []
    assert anyio.current_time() - start == pytest.approx(5.0)
    assert src.stats["timeouts"] == 1 and src.stats["skipped_symbols"] == 1


async def test_malformed_rows_and_unasked_symbols_are_skipped_the_rest_used() -> None:
    body = {"quotes": {"A": ROW, "B": {**ROW, "bp": "x"}, "C": "no", "D": {**ROW, "t": "bad"},
                       "ZZZ": ROW}}  # fmt: skip
    src = source()
    with respx.mock:
        respx.get(BASE + "/v2/stocks/quotes/latest").respond(json=body)
        quotes = await fetch(src, AssetClass.US_EQUITY, ["A", "B", "C", "D", "E"])
    assert [q.symbol for q in quotes] == ["A"]
    assert src.stats["malformed_rows"] == 3
    assert src.stats["missing_symbols"] == 4  # B, C, D malformed and E absent


async def test_refused_credentials_are_logged_once_however_often_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    with respx.mock, caplog.at_level(logging.DEBUG, logger="adapters.http.snapshot_source"):
        respx.get(BASE + "/v2/stocks/quotes/latest").respond(401, json={"message": "no"})
        async with src:
            for _ in range(3):
                assert await src.latest_quotes(AssetClass.US_EQUITY, ["AAPL"]) == []
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and "refused the credentials" in loud[0].getMessage()
    assert src.stats["refused"] == 3 and src.stats["skipped_symbols"] == 3
