"""Position sources against respx-mocked HTTP, in virtual time (trio's MockClock with autojump):
retries and rate-limit waits are asserted as clock deltas, and nothing really sleeps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import respx
import trio.testing

from adapters.http.position_source import (
    AlpacaPositionSource,
    GatewayPositionSource,
    safe_url,
)
from domain.assets import AssetClass
from domain.errors import PositionSourceError
from ports.position_source import PositionSource

GATEWAY = "https://gateway.example/positions"
ALPACA = "https://paper-api.alpaca.markets"
KEY = "PKTESTKEY0123456789"
SECRET = "s3cr3t-DO-NOT-LOG-abcdefghijklmnop"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


def gateway(**kwargs: Any) -> GatewayPositionSource:
    return GatewayPositionSource(GATEWAY, **kwargs)


def alpaca(**kwargs: Any) -> AlpacaPositionSource:
    return AlpacaPositionSource(ALPACA, KEY, SECRET, **kwargs)


async def fetch(source: GatewayPositionSource | AlpacaPositionSource) -> frozenset[str]:
    port: PositionSource = source  # mypy checks the adapters against the port here
    async with source:
        with anyio.fail_after(120):  # virtual seconds: a guard, not a wait
            return frozenset(await port.open_positions())


# --- gateway: shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        [
            {"symbol": "AAPL", "qty": 10},
            {"symbol": "MSFT", "qty": "2.5"},
            {"symbol": "TSLA", "qty": -3},
            {"symbol": "NVDA", "qty": "-0.5"},
            {"symbol": "IBM", "qty": 0},
            {"symbol": "GE", "qty": "0.000"},
        ],
        {
            "account": "main",
            "positions": [
                {"symbol": "AAPL", "qty": 10.0, "avg_price": 1},
                {"symbol": "MSFT", "qty": "2.5"},
                {"symbol": "TSLA", "qty": "-3"},
                {"symbol": "NVDA", "qty": -0.5},
                {"symbol": "IBM", "qty": "0"},
                {"symbol": "GE", "qty": -0.0},
            ],
        },
    ],
    ids=["list", "object-with-positions"],
)
async def test_gateway_shapes_quantities_and_shorts(body: object) -> None:
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        assert await fetch(gateway()) == {"AAPL", "MSFT", "TSLA", "NVDA"}


@pytest.mark.parametrize("body", [[], {"positions": []}])
async def test_gateway_empty_answer_is_no_positions(body: object) -> None:
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        assert await fetch(gateway()) == frozenset()


async def test_gateway_does_not_net_entries_of_one_symbol() -> None:
    body = [{"symbol": "AAPL", "qty": 5}, {"symbol": "AAPL", "qty": -5}]
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        assert await fetch(gateway()) == {"AAPL"}


async def test_gateway_invalid_symbols_are_skipped_and_counted() -> None:
    body = [
        {"symbol": "AAPL", "qty": 1},
        {"symbol": "aapl", "qty": 1},
        {"symbol": "", "qty": 1},
        {"symbol": None, "qty": 1},
        {"symbol": "X" * 500, "qty": 1},
        {"symbol": "BRK.B", "qty": 1},
    ]
    source = gateway()
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        assert await fetch(source) == {"AAPL", "BRK.B"}
    assert source.skipped_symbols == 4


class _Lines(logging.Handler):
    """The messages the position source logs (read from its logger's records)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("make", [gateway, alpaca])
async def test_one_malformed_row_is_skipped_counted_and_logged_once(
    make: Callable[[], GatewayPositionSource | AlpacaPositionSource],
) -> None:
    """Issue 11: one ``qty: "NaN"`` row discarded the whole answer (and so every position)."""
    body = [
        {"symbol": "AAPL", "qty": "10", "asset_class": "us_equity"},
        {"symbol": "MSFT", "qty": "NaN", "asset_class": "us_equity"},
        {"symbol": "TSLA", "qty": "-3", "asset_class": "us_equity"},
        "garbage",
    ]
    source = make()
    url = GATEWAY if isinstance(source, GatewayPositionSource) else f"{ALPACA}/v2/positions"
    lines = _Lines()
    logger = logging.getLogger("adapters.http.position_source")
    logger.addHandler(lines)
    try:
        with respx.mock:
            respx.get(url).mock(return_value=httpx.Response(200, json=body))
            async with source:
                for _ in range(3):  # the same answer at every poll
                    assert await source.open_position_symbols() == {"AAPL", "TSLA"}
    finally:
        logger.removeHandler(lines)
    assert source.skipped_rows == 6
    assert len(lines.lines) == 1, lines.lines
    assert "2 malformed" in lines.lines[0] and "NaN" in lines.lines[0]


async def test_ten_thousand_bad_rows_log_one_short_line() -> None:
    body = [{"symbol": "AAPL", "qty": 1}] + [
        {"symbol": f"S{i}", "qty": "NaN"} for i in range(10_000)
    ]
    lines = _Lines()
    logger = logging.getLogger("adapters.http.position_source")
    logger.addHandler(lines)
    try:
        with respx.mock:
            respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
            assert await fetch(gateway()) == {"AAPL"}
    finally:
        logger.removeHandler(lines)
    (line,) = lines.lines
    assert "10000 malformed" in line and "9995 more" in line and len(line) < 1000


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"<html>502 Bad Gateway</html>",
        b'{"data": []}',
        b'"AAPL"',
        b"42",
        b"[1, 2]",
        b'[{"symbol": "AAPL"}]',
        b'[{"qty": 1}]',
        b'[{"symbol": "AAPL", "qty": "ten"}]',
        b'[{"symbol": "AAPL", "qty": ""}]',
        b'[{"symbol": "AAPL", "qty": "NaN"}]',
        b'[{"symbol": "AAPL", "qty": "-Infinity"}]',
        b'[{"symbol": "AAPL", "qty": true}]',
        b'[{"symbol": "AAPL", "qty": null}]',
        b'[{"symbol": "AAPL", "qty": [1]}]',
        b'{"positions": {"AAPL": 1}}',
    ],
)
async def test_gateway_malformed_answer_raises_without_retry(content: bytes) -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(return_value=httpx.Response(200, content=content))
        with pytest.raises(PositionSourceError):
            await fetch(gateway())
        assert route.call_count == 1


async def test_gateway_answer_larger_than_the_cap_raises() -> None:
    body = [{"symbol": "AAPL", "qty": 1}] * 1000
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        with pytest.raises(PositionSourceError, match="larger than"):
            await fetch(gateway(max_body_bytes=1024))


# --- retries, timeouts, statuses -----------------------------------------------------------------


async def test_500_then_success_is_retried_after_the_backoff() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(
            side_effect=[
                httpx.Response(500),
                httpx.Response(200, json=[{"symbol": "AAPL", "qty": 1}]),
            ]
        )
        start = anyio.current_time()
        assert await fetch(gateway(backoff_s=0.5)) == {"AAPL"}
        assert anyio.current_time() - start == pytest.approx(0.5)
        assert route.call_count == 2


async def test_persistent_500_raises_after_bounded_retries() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(return_value=httpx.Response(503))
        start = anyio.current_time()
        with pytest.raises(PositionSourceError, match="HTTP 503") as info:
            await fetch(gateway(retries=2, backoff_s=0.5))
        assert anyio.current_time() - start == pytest.approx(0.5 + 1.0)
        assert route.call_count == 3
    assert "3 attempts" in str(info.value)


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout],
)
async def test_timeout_raises_position_source_error_from_the_cause(
    error: type[httpx.TimeoutException],
) -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(side_effect=error("slow"))
        with pytest.raises(PositionSourceError, match="timed out") as info:
            await fetch(gateway(retries=1, backoff_s=0.1))
        assert route.call_count == 2
    assert isinstance(info.value.__cause__, error)


async def test_connection_error_is_retried_then_succeeds() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(
            side_effect=[
                httpx.ConnectError("refused"),
                httpx.RemoteProtocolError("peer closed"),
                httpx.Response(200, json=[]),
            ]
        )
        assert await fetch(gateway(retries=2)) == frozenset()
        assert route.call_count == 3


@pytest.mark.parametrize("status", [400, 404, 301, 418])
async def test_client_errors_are_not_retried(status: int) -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(
            return_value=httpx.Response(status, text="no such\x00 thing\n")
        )
        with pytest.raises(PositionSourceError, match=f"HTTP {status}") as info:
            await fetch(gateway())
        assert route.call_count == 1
    assert "\x00" not in str(info.value)


async def test_a_failure_is_never_an_empty_set_even_when_retries_are_zero() -> None:
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(500))
        with pytest.raises(PositionSourceError):
            await fetch(gateway(retries=0))


async def test_url_credentials_and_query_never_appear_in_errors() -> None:
    url = "https://user:hunter22@gateway.example/positions?token=tok-abc123"
    with respx.mock:
        respx.get(url).mock(return_value=httpx.Response(500))
        with pytest.raises(PositionSourceError) as info:
            async with GatewayPositionSource(url, retries=0) as source:
                await source.open_position_symbols()
    text = f"{info.value} {info.value!r} {source!r}"
    assert "hunter22" not in text and "tok-abc123" not in text
    assert "https://gateway.example/positions" in text
    assert safe_url("http://[::1]:8080/p?q=1") == "http://[::1]:8080/p"


async def test_gateway_sends_configured_headers() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=[]))
        await fetch(gateway(headers={"Authorization": "Bearer t0ken"}))
        assert route.calls.last.request.headers["Authorization"] == "Bearer t0ken"


async def test_cancellation_during_backoff_propagates() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(return_value=httpx.Response(500))
        async with gateway(retries=5, backoff_s=1.0) as source:
            with anyio.move_on_after(1.5) as scope:
                await source.open_position_symbols()
        assert scope.cancelled_caught
        assert route.call_count == 2


async def test_use_without_opening_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await gateway().open_position_symbols()


async def test_source_can_be_reopened_and_refuses_nested_open() -> None:
    source = gateway()
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=[]))
        for _ in range(2):
            async with source:
                assert await source.open_position_symbols() == frozenset()
                with pytest.raises(RuntimeError, match="already open"):
                    await source.__aenter__()


def test_constructor_validates_parameters() -> None:
    with pytest.raises(ValueError, match="http"):
        GatewayPositionSource("ftp://gateway.example/positions")
    with pytest.raises(ValueError, match="timeout_s"):
        GatewayPositionSource(GATEWAY, timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        GatewayPositionSource(GATEWAY, retries=-1)
    with pytest.raises(ValueError, match="both"):
        AlpacaPositionSource(ALPACA, KEY, "")


# --- rate limits ---------------------------------------------------------------------------------


async def test_429_waits_for_retry_after() -> None:
    with respx.mock:
        respx.get(GATEWAY).mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "3"}),
                httpx.Response(200, json=[{"symbol": "SPY", "qty": 1}]),
            ]
        )
        start = anyio.current_time()
        assert await fetch(gateway(backoff_s=0.5)) == {"SPY"}
        assert anyio.current_time() - start == pytest.approx(3.0)


async def test_429_waits_until_x_ratelimit_reset() -> None:
    wall = 1_700_000_000.0
    with respx.mock:
        respx.get(f"{ALPACA}/v2/positions").mock(
            side_effect=[
                httpx.Response(
                    429,
                    json={"code": 42910000, "message": "rate limit exceeded"},
                    headers={"X-Ratelimit-Limit": "200", "X-Ratelimit-Reset": str(int(wall) + 7)},
                ),
                httpx.Response(200, json=[]),
            ]
        )
        start = anyio.current_time()
        assert await fetch(alpaca(wall_clock=lambda: wall)) == frozenset()
        assert anyio.current_time() - start == pytest.approx(7.0)


async def test_429_wait_is_capped() -> None:
    with respx.mock:
        route = respx.get(GATEWAY).mock(
            return_value=httpx.Response(429, headers={"Retry-After": "3600"})
        )
        start = anyio.current_time()
        with pytest.raises(PositionSourceError, match="rate limited"):
            await fetch(gateway(retries=1, max_retry_wait_s=10.0))
        assert anyio.current_time() - start == pytest.approx(10.0)
        assert route.call_count == 2


# --- Alpaca --------------------------------------------------------------------------------------

ALPACA_POSITIONS = [
    {
        "asset_id": "904837e3-3b76-47ec-b432-046db621571b",
        "symbol": "AAPL",
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": "100.0",
        "qty": "5",
        "qty_available": "5",
        "side": "long",
        "market_value": "600.0",
        "cost_basis": "500.0",
        "unrealized_pl": "100.0",
        "unrealized_plpc": "0.20",
        "current_price": "120.0",
        "lastday_price": "119.0",
        "change_today": "0.0084",
    },
    {"symbol": "TSLA", "qty": "-10", "side": "short", "asset_class": "us_equity"},
    {"symbol": "GME", "qty": "3", "side": "short", "asset_class": "us_equity"},
    {"symbol": "SPY", "qty": "0.25", "side": "long", "asset_class": "us_equity"},
    {"symbol": "FLAT", "qty": "0", "side": "long", "asset_class": "us_equity"},
    {"symbol": "BTCUSD", "qty": "0.1", "side": "long", "asset_class": "crypto"},
    {"symbol": "AAPL250117C00150000", "qty": "1", "side": "long", "asset_class": "us_option"},
    {"symbol": "NOCLASS", "qty": "1", "side": "long"},
]


async def test_alpaca_sends_key_headers_and_returns_non_zero_equities() -> None:
    with respx.mock:
        route = respx.get(f"{ALPACA}/v2/positions").mock(
            return_value=httpx.Response(200, json=ALPACA_POSITIONS)
        )
        assert await fetch(alpaca(asset_classes=frozenset({"us_equity"}))) == {
            "AAPL", "TSLA", "GME", "SPY", "NOCLASS"
        }  # fmt: skip
        request = route.calls.last.request
        assert request.headers["APCA-API-KEY-ID"] == KEY
        assert request.headers["APCA-API-SECRET-KEY"] == SECRET
        assert request.url.path == "/v2/positions"


async def test_alpaca_positions_keep_their_asset_class_and_crypto_gets_the_stream_form() -> None:
    with respx.mock:
        respx.get(f"{ALPACA}/v2/positions").mock(
            return_value=httpx.Response(200, json=ALPACA_POSITIONS)
        )
        async with alpaca() as source:
            positions = await source.open_positions()
    assert positions == {
        "AAPL": AssetClass.US_EQUITY,
        "TSLA": AssetClass.US_EQUITY,
        "GME": AssetClass.US_EQUITY,
        "SPY": AssetClass.US_EQUITY,
        "BTC/USD": AssetClass.CRYPTO,  # Alpaca's position says BTCUSD; the stream wants BTC/USD
        "AAPL250117C00150000": AssetClass.US_OPTION,
        "NOCLASS": AssetClass.US_EQUITY,  # no class: by its shape
    }


async def test_alpaca_unknown_asset_class_is_skipped_and_counted() -> None:
    body = [
        {"symbol": "AAPL", "qty": "1", "asset_class": "us_equity"},
        {"symbol": "XAUUSD", "qty": "1", "asset_class": "metals"},
    ]
    with respx.mock:
        respx.get(f"{ALPACA}/v2/positions").mock(return_value=httpx.Response(200, json=body))
        async with alpaca() as source:
            assert await source.open_positions() == {"AAPL": AssetClass.US_EQUITY}
    assert source.skipped_symbols == 1


async def test_gateway_items_may_name_their_asset_class() -> None:
    body = [
        {"symbol": "AAPL", "qty": 1},
        {"symbol": "ETHUSD", "qty": "0.5", "asset_class": "crypto"},
        {"symbol": "SOL/USD", "qty": 2},
        {"symbol": "SPY250620P00500000", "qty": -1},
        {"symbol": "ODD", "qty": 1, "asset_class": "US_OPTION"},
    ]
    with respx.mock:
        respx.get(GATEWAY).mock(return_value=httpx.Response(200, json=body))
        async with GatewayPositionSource(GATEWAY) as source:
            positions = await source.open_positions()
    assert positions == {
        "AAPL": AssetClass.US_EQUITY,
        "ETH/USD": AssetClass.CRYPTO,
        "SOL/USD": AssetClass.CRYPTO,
        "SPY250620P00500000": AssetClass.US_OPTION,
        "ODD": AssetClass.US_OPTION,  # the item's class wins over the shape
    }


async def test_alpaca_base_url_trailing_slash_and_live_url() -> None:
    live = "https://api.alpaca.markets"
    with respx.mock:
        route = respx.get(f"{live}/v2/positions").mock(return_value=httpx.Response(200, json=[]))
        assert await fetch(AlpacaPositionSource(live + "/", KEY, SECRET)) == frozenset()
        assert route.call_count == 1


@pytest.mark.parametrize("content", [b'{"positions": []}', b"[{}]", b"[]x"])
async def test_alpaca_malformed_answer_raises(content: bytes) -> None:
    with respx.mock:
        respx.get(f"{ALPACA}/v2/positions").mock(return_value=httpx.Response(200, content=content))
        with pytest.raises(PositionSourceError):
            await fetch(alpaca())


@pytest.mark.parametrize("status", [401, 403])
async def test_alpaca_rejected_keys_say_check_the_keys_without_quoting_them(status: int) -> None:
    # A hostile or buggy answer that echoes the secret must not carry it into our message.
    echo = {"code": 40110000, "message": f"request is not authorized for {KEY}/{SECRET}"}
    source = alpaca()
    with respx.mock:
        route = respx.get(f"{ALPACA}/v2/positions").mock(
            return_value=httpx.Response(status, json=echo)
        )
        with pytest.raises(PositionSourceError) as info:
            await fetch(source)
        assert route.call_count == 1  # not retried
    error = info.value
    assert "ALPACA_API_KEY" in str(error) and "ALPACA_SECRET_KEY" in str(error)
    chain: list[BaseException] = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    text = " ".join(f"{e} {e!r}" for e in chain) + repr(source)
    assert KEY not in text and SECRET not in text


async def test_alpaca_other_errors_redact_the_keys() -> None:
    with respx.mock:
        respx.get(f"{ALPACA}/v2/positions").mock(
            return_value=httpx.Response(422, text=f"bad request {SECRET}")
        )
        with pytest.raises(PositionSourceError, match="HTTP 422") as info:
            await fetch(alpaca())
    assert SECRET not in str(info.value)


async def test_calls_are_capped_per_minute_retries_included() -> None:
    """MDS_POSITION_CALLS_PER_MINUTE=20 (burst 5): 30 reads take 5 at once, then one every
    3 s; a retry takes a call of the budget too (Alpaca's 200/min are shared with trading)."""
    source = alpaca(max_calls_per_minute=20)
    with respx.mock:
        route = respx.get(f"{ALPACA}/v2/positions").mock(
            return_value=httpx.Response(200, json=[{"symbol": "AAPL", "qty": "1"}])
        )
        async with source:
            start = anyio.current_time()
            for _ in range(30):
                assert await source.open_position_symbols() == {"AAPL"}
            assert anyio.current_time() - start == pytest.approx(25 * 3.0)
            assert route.call_count == 30
            route.mock(side_effect=[httpx.Response(500), httpx.Response(200, json=[])])
            start = anyio.current_time()
            assert await source.open_position_symbols() == frozenset()
            # two calls, 3 s apart by the cap (more than the 0.5 s retry backoff)
            assert anyio.current_time() - start == pytest.approx(2 * 3.0)
