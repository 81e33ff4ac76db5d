"""The HTTP API through httpx's ASGI transport, on trio (the fake view awaits trio primitives, so
a test would fail on any other backend), plus the real hypercorn server on a loopback port."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import quote

import anyio
import httpx
import pytest
import sniffio
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import PositionSourceError
from domain.price import Price, exact_mid
from domain.staleness import AgedPrice
from domain.timestamps import parse_rfc3339_ns
from entrypoints.http_api import (
    MAX_SYMBOLS_PER_REQUEST,
    HealthInfo,
    ServiceView,
    SubscriptionsInfo,
    Unavailable,
    create_app,
    serve_http,
)
from entrypoints.metrics import MetricsSnapshot, ServiceMetrics
from tests.price_contract import check_http_price

TS = "2024-07-24T07:56:53.639713735Z"


def aged(symbol: str, bid: float, ask: float, age_s: float = 0.25) -> AgedPrice:
    price = Price(symbol, bid, ask, exact_mid(bid, ask), parse_rfc3339_ns(TS), "IEX", "V", "V")
    return AgedPrice(price, age_s, age_s > 300)


class FakeView:
    """An in-memory ServiceView whose state tests set and inspect."""

    def __init__(self) -> None:
        self.health_info = HealthInfo(
            status="healthy",
            websocket_connected=True,
            subscribed_symbols=2,
            reconnect_attempts=0,
            last_message_time="2024-07-24T07:56:54.000000000Z",
            connection_state="connected",
            redis="ok",
            uptime_s=12.5,
            role="leader",
            ready=True,
        )
        self.prices: dict[str, AgedPrice] = {
            "AAPL": aged("AAPL", 150.25, 150.27),
            "MSFT": aged("MSFT", 1.0001, 1.0002),
            "BTC/USD": aged("BTC/USD", 64000.5, 64001.25),
            "OLD": aged("OLD", 10.0, 10.02, age_s=900.0),
        }
        self.subs = SubscriptionsInfo(
            desired=("AAPL", "MSFT", "TSLA"), confirmed=("AAPL", "MSFT"), left_out=("TSLA",)
        )
        self.store_down = False
        self.sync_error: Exception | None = None
        self.requested: list[list[str]] = []
        self.syncs = 0
        self.slow_prices = 0.0
        self.entered_prices = trio.Event()

    def health(self) -> HealthInfo:
        return self.health_info

    async def get_prices(self, symbols: Sequence[str]) -> Mapping[str, AgedPrice]:
        await trio.lowlevel.checkpoint()  # only works on trio
        self.entered_prices.set()
        if self.slow_prices:
            await trio.sleep(self.slow_prices)
        self.requested.append(list(symbols))
        if self.store_down:
            raise ConnectionError("redis down")
        return {s: self.prices[s] for s in symbols if s in self.prices}

    def subscriptions(self) -> SubscriptionsInfo:
        return self.subs

    async def sync_now(self) -> SubscriptionsInfo:
        await trio.lowlevel.checkpoint()
        self.syncs += 1
        if self.sync_error is not None:
            raise self.sync_error
        return self.subs


@pytest.fixture
def view() -> FakeView:
    return FakeView()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


@pytest.fixture
async def client(view: FakeView, metrics: ServiceMetrics) -> AsyncIterator[httpx.AsyncClient]:
    port: ServiceView = view  # mypy checks the fake against the Protocol
    app = create_app(port, registry=metrics.registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mds.test") as c:
        yield c


async def test_runs_on_trio(client: httpx.AsyncClient) -> None:
    assert sniffio.current_async_library() == "trio"
    assert (await client.get("/prices/AAPL")).status_code == 200


# --- health and readiness ------------------------------------------------------------------------


async def test_health_reports_every_field(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "healthy",
        "websocket_connected": True,
        "subscribed_symbols": 2,
        "reconnect_attempts": 0,
        "last_message_time": "2024-07-24T07:56:54.000000000Z",
        "connection_state": "connected",
        "redis": "ok",
        "uptime_s": 12.5,
        "role": "leader",
        "ready": True,
        "detail": None,
        "streams": {},
    }
    assert r.headers["cache-control"] == "no-store"


async def test_head_health_and_ready_answer_like_get(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready"):
        r = await client.head(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("application/json")


async def test_no_swagger_ui_from_a_cdn_but_the_schema_is_served(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/docs")).status_code == 404
    assert (await client.get("/redoc")).status_code == 404
    schema = (await client.get("/openapi.json")).json()
    assert "/health" in schema["paths"]


async def test_health_is_200_even_when_failed(client: httpx.AsyncClient, view: FakeView) -> None:
    view.health_info = HealthInfo(
        status="failed",
        websocket_connected=False,
        subscribed_symbols=0,
        reconnect_attempts=7,
        last_message_time=None,
        connection_state="failed",
        redis="memory",
        uptime_s=1.0,
        role="leader",
        ready=False,
        detail="auth failed (code 402); check ALPACA_API_KEY",
    )
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and r.json()["last_message_time"] is None
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {
        "ready": False,
        "status": "failed",
        "detail": "auth failed (code 402); check ALPACA_API_KEY",
    }


async def test_ready_when_ready(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True


# --- one price -----------------------------------------------------------------------------------


async def test_price_body_and_exact_numbers(client: httpx.AsyncClient) -> None:
    r = await client.get("/prices/AAPL")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert '"mid":150.26,' in r.text and "150.26000000000002" not in r.text
    assert r.json() == {
        "symbol": "AAPL",
        "bid": 150.25,
        "ask": 150.27,
        "mid": 150.26,
        "timestamp": TS,
        "exchange": "IEX",
        "bid_exchange": "V",
        "ask_exchange": "V",
        "age_s": 0.25,
        "stale": False,
    }
    check_http_price(r.json())
    msft = await client.get("/prices/MSFT")
    assert '"mid":1.00015,' in msft.text


async def test_stale_price_is_served_and_flagged(client: httpx.AsyncClient) -> None:
    r = await client.get("/prices/OLD")
    assert r.status_code == 200 and r.json()["stale"] is True and r.json()["age_s"] == 900.0
    check_http_price(r.json())


@pytest.mark.parametrize("path", ["/prices/aapl", "/prices/%20Aapl%20", "/prices/AAPL%0A"])
async def test_symbol_is_normalised_then_validated(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200 and r.json()["symbol"] == "AAPL"


@pytest.mark.parametrize("path", ["/prices/BTC/USD", "/prices/BTC%2FUSD", "/prices/btc/usd"])
async def test_symbols_with_a_slash(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200 and r.json()["symbol"] == "BTC/USD"
    check_http_price(r.json())


async def test_unknown_symbol_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/prices/ZZZZ")
    assert r.status_code == 404
    assert r.json() == {"detail": "no price cached for ZZZZ", "symbol": "ZZZZ"}


@pytest.mark.parametrize(
    "raw",
    [
        "$$$",
        "%00",
        "AA%00PL",
        "%FF%FE",
        "%C3%9F",  # ß, which str.upper() would turn into a valid "SS"
        "%EF%AC%81",  # the "ﬁ" ligature -> "FI"
        "%F0%9F%9A%80",  # an emoji
        "AAPL%0AMSFT",
        "A" * 22,
        "X" * 20_000,
        "%2E%2E",
        "-AAPL",
        "",
    ],
)
async def test_malformed_symbol_is_422_with_a_short_message(
    client: httpx.AsyncClient, raw: str
) -> None:
    r = await client.get(f"/prices/{raw}")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("invalid symbol")
    assert len(detail) < 200
    assert "\x00" not in detail and "\n" not in detail


async def test_store_unavailable_is_503(client: httpx.AsyncClient, view: FakeView) -> None:
    view.store_down = True
    r = await client.get("/prices/AAPL")
    assert r.status_code == 503 and r.json()["detail"] == "price store unavailable"
    r = await client.get("/prices", params={"symbols": "AAPL"})
    assert r.status_code == 503


# --- several prices ------------------------------------------------------------------------------


async def test_several_prices_with_missing(client: httpx.AsyncClient, view: FakeView) -> None:
    r = await client.get("/prices", params={"symbols": "aapl, MSFT,ZZZZ,AAPL,,MISSING"})
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["prices", "missing"]
    assert list(body["prices"]) == ["AAPL", "MSFT"]
    assert body["prices"]["AAPL"]["mid"] == 150.26
    for price in body["prices"].values():
        check_http_price(price)
    assert body["missing"] == ["ZZZZ", "MISSING"]
    assert view.requested == [["AAPL", "MSFT", "ZZZZ", "MISSING"]]  # deduplicated, in order


async def test_repeated_symbols_parameters_add_up(client: httpx.AsyncClient) -> None:
    r = await client.get("/prices?symbols=AAPL&symbols=BTC/USD,msft")
    assert r.status_code == 200
    assert set(r.json()["prices"]) == {"AAPL", "BTC/USD", "MSFT"}


@pytest.mark.parametrize("query", ["", "?symbols=", "?symbols=,,%20,", "?other=AAPL"])
async def test_no_symbols_is_422(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get(f"/prices{query}")
    assert r.status_code == 422 and "give symbols" in r.json()["detail"]


async def test_list_length_is_capped(client: httpx.AsyncClient, view: FakeView) -> None:
    symbols = [f"S{i}" for i in range(MAX_SYMBOLS_PER_REQUEST)]
    ok = await client.get("/prices", params={"symbols": ",".join(symbols)})
    assert ok.status_code == 200 and len(ok.json()["missing"]) == MAX_SYMBOLS_PER_REQUEST
    too_many = await client.get("/prices", params={"symbols": ",".join([*symbols, "ONE"])})
    assert too_many.status_code == 422
    assert "too many symbols: 201" in too_many.json()["detail"]
    assert len(view.requested) == 1  # the oversized request never reached the view


async def test_malformed_symbol_in_list_is_422_listing_each(client: httpx.AsyncClient) -> None:
    r = await client.get("/prices", params={"symbols": "AAPL,b@d,\u00df,MSFT"})
    assert r.status_code == 422
    body = r.json()
    assert len(body["invalid"]) == 2 and body["detail"] == body["invalid"][0]
    assert "'B@D'" not in body["detail"] and "'b@d'" in body["detail"]


# --- subscriptions -------------------------------------------------------------------------------


async def test_subscriptions(client: httpx.AsyncClient) -> None:
    r = await client.get("/subscriptions")
    assert r.status_code == 200
    assert r.json() == {
        "desired": ["AAPL", "MSFT", "TSLA"],
        "confirmed": ["AAPL", "MSFT"],
        "left_out": ["TSLA"],
        "rejected": [],
        "unconfirmed": [],
        "last_sync_error": None,
        "unrouted": [],
        "streams": {},
    }


async def test_sync_now(client: httpx.AsyncClient, view: FakeView) -> None:
    r = await client.post("/subscriptions/sync")
    assert r.status_code == 200 and r.json()["confirmed"] == ["AAPL", "MSFT"]
    assert view.syncs == 1
    assert (await client.get("/subscriptions/sync")).status_code == 405


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (PositionSourceError("gateway timed out"), "positions unavailable: gateway timed out"),
        (Unavailable("standby: the leader syncs"), "standby: the leader syncs"),
    ],
)
async def test_sync_failure_is_503(
    client: httpx.AsyncClient, view: FakeView, error: Exception, detail: str
) -> None:
    view.sync_error = error
    r = await client.post("/subscriptions/sync")
    assert r.status_code == 503 and r.json() == {"detail": detail}


# --- metrics -------------------------------------------------------------------------------------


async def test_metrics_exposes_the_registry(
    client: httpx.AsyncClient, metrics: ServiceMetrics
) -> None:
    metrics.observe_write(0.0004, 12)
    metrics.observe_quote_age(0.02)
    metrics.refresh_from(MetricsSnapshot(messages_by_type={"quote": 5}, reconnects=3))
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for line in (
        'mds_messages_total{type="quote"} 5.0',
        "mds_reconnects_total 3.0",
        "mds_cache_write_seconds_count 1.0",
        "mds_quote_age_seconds_count 1.0",
        'mds_connection_state{state="disconnected"} 1.0',
    ):
        assert line in r.text


async def test_no_registry_no_metrics(view: FakeView) -> None:
    transport = httpx.ASGITransport(app=create_app(view))
    async with httpx.AsyncClient(transport=transport, base_url="http://mds.test") as c:
        assert (await c.get("/metrics")).status_code == 404


# --- odd input, generated ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60), raw=st.binary(max_size=40))
async def test_odd_input_never_gives_a_server_error(text: str, raw: bytes) -> None:
    view = FakeView()
    transport = httpx.ASGITransport(app=create_app(view), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://mds.test") as c:
        for url in (
            f"/prices/{quote(text, safe='')}",
            f"/prices/{quote(raw, safe='')}",
            f"/prices?symbols={quote(text, safe='')}",
            f"/prices?symbols={quote(raw, safe='')}",
        ):
            r = await c.get(url)
            assert r.status_code in (200, 404, 422), (url, r.status_code, r.text)
            json.loads(r.text)


# --- the real server -----------------------------------------------------------------------------


async def test_serve_http_binds_answers_and_stops_on_cancel(view: FakeView) -> None:
    app = create_app(view)
    # Stops at once with nothing in flight: a graceful wait of an hour would trip the guard.
    serve = functools.partial(serve_http, graceful_timeout_s=3600.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            binds = await tg.start(serve, app, "127.0.0.1", 0)
            assert len(binds) == 1 and binds[0].startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=binds[0]) as c:
                r = await c.get("/prices/AAPL")
                assert r.status_code == 200 and r.json()["mid"] == 150.26
            tg.cancel_scope.cancel()


async def test_cancel_lets_a_request_in_flight_finish(view: FakeView) -> None:
    view.slow_prices = 0.3
    app = create_app(view)
    results: list[int] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            server = anyio.CancelScope()

            async def run_server(*, task_status: anyio.abc.TaskStatus[list[str]]) -> None:
                with server:
                    await serve_http(app, "127.0.0.1", 0, task_status=task_status)

            binds = await outer.start(run_server)

            async def request() -> None:
                async with httpx.AsyncClient(base_url=binds[0]) as c:
                    results.append((await c.get("/prices/AAPL")).status_code)

            outer.start_soon(request)
            await view.entered_prices.wait()
            server.cancel()  # shutdown while the request is inside the view
    assert results == [200]


async def test_bind_failure_is_one_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # pytest.raises(OSError) would not match an ExceptionGroup: one plain error comes out.
        with anyio.fail_after(10), pytest.raises(OSError, match="in use"):
            await serve_http(create_app(FakeView()), "127.0.0.1", port)
