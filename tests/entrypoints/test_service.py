"""The runnable service: wiring from settings, the HTTP API over the running service, the
container's overrides, and the process: signals, exit codes, one clear line on errors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dependency_injector import providers

from adapters.clock import SystemClock
from adapters.memory import InMemoryPriceCache, ScriptedQuoteFeed, StaticPositionSource
from domain.market import Quote
from domain.price import Price
from entrypoints.container import Container
from entrypoints.service import Running, run
from entrypoints.settings import load_settings
from tests.conditions import wait_for
from tests.price_contract import check_http_price

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "entrypoints" / "service.py"

EMBEDDED = {"MDS_HTTP_PORT": "0", "MDS_SIM_RATE": "200", "MDS_LOG_FORMAT": "json"}


async def test_embedded_default_streams_prices_and_serves_the_api() -> None:
    settings = load_settings(EMBEDDED)
    async with anyio.create_task_group() as tg:
        running: Running = await tg.start(run, settings)
        service = running.service
        await wait_for(lambda: service.status.counters["prices_written"] >= 20)
        async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
            health = (await client.get("/health")).json()
            assert health["status"] == "healthy" and health["websocket_connected"] is True
            assert health["subscribed_symbols"] == 3 and health["redis"] == "memory"
            assert (await client.get("/ready")).status_code == 200
            price = (await client.get("/prices/AAPL")).json()
            check_http_price(price)
            assert price["exchange"] == "SIM"
            assert price["mid"] * 2 == pytest.approx(price["bid"] + price["ask"])
            assert (await client.get("/prices/NOPE")).status_code == 404
            subs = (await client.get("/subscriptions")).json()
            assert subs["confirmed"] == ["AAPL", "MSFT", "SPY"]
            metrics = (await client.get("/metrics")).text
            assert "mds_prices_written_total" in metrics or "mds_prices_written" in metrics
        tg.cancel_scope.cancel()


async def test_the_container_is_overridable_and_positions_drive_subscriptions() -> None:
    settings = load_settings(EMBEDDED | {"MDS_SYMBOLS": "SPY"})
    clock = SystemClock()
    feed = ScriptedQuoteFeed(clock)
    positions = StaticPositionSource({"NVDA"})
    container = Container(settings=settings)
    cache = InMemoryPriceCache(clock)
    with (
        container.feed.override(providers.Object(feed)),
        container.positions.override(providers.Object(positions)),
        container.cache.override(providers.Object(cache)),
    ):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings, container)
            await wait_for(lambda: feed.subscribed() == {"NVDA", "SPY"})
            positions.symbols = {"AMD"}
            async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
                answer = await client.post("/subscriptions/sync")
                assert answer.status_code == 200
                assert answer.json()["confirmed"] == ["AMD", "SPY"]
            assert running.service.cache is cache
            tg.cancel_scope.cancel()


async def test_a_quote_stamped_in_the_future_is_refused_counted_and_shown_in_health() -> None:
    """The issue's defect 4, as an operator sees it: one AAPL quote stamped in 2099 between
    real ones. /prices/AAPL keeps serving the real quotes (fresh, age >= 0), /health is
    degraded and says why, /metrics counts it; a price stamped in the future that sits in the
    cache (written by anything) is served stale, never fresh with a negative age."""
    settings = load_settings(EMBEDDED | {"MDS_SYMBOLS": "AAPL"})
    clock = SystemClock()
    feed = ScriptedQuoteFeed(clock)
    container = Container(settings=settings)
    cache = InMemoryPriceCache(clock)
    year_2099 = 4_070_908_800 * 1_000_000_000

    def quote(bid: float, ts_event_ns: int) -> Quote:
        now = clock.now_ns()
        return Quote("AAPL", bid, 1, bid + 0.02, 1, "V", "V", (), "C", ts_event_ns, now)

    with (
        container.feed.override(providers.Object(feed)),
        container.positions.override(providers.Object(StaticPositionSource(set()))),
        container.cache.override(providers.Object(cache)),
    ):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings, container)
            await wait_for(lambda: feed.subscribed() == {"AAPL"})
            feed.push(quote(100.0, clock.now_ns()))
            feed.push(quote(500.0, year_2099))
            feed.push(quote(101.0, clock.now_ns()))
            await wait_for(lambda: "AAPL" in cache.values and cache.values["AAPL"].bid == 101.0)
            msft = Price("MSFT", 1.0, 1.02, 1.01, year_2099, "IEX", "V", "V")
            await cache.put_many([msft])
            async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
                aapl = (await client.get("/prices/AAPL")).json()
                assert aapl["bid"] == 101.0 and aapl["stale"] is False and aapl["age_s"] >= 0
                future = (await client.get("/prices/MSFT")).json()
                assert future["stale"] is True and future["age_s"] < 0
                health = (await client.get("/health")).json()
                assert health["status"] == "degraded", health
                assert "stamped in the future" in health["detail"] and "AAPL" in health["detail"]
                metrics = (await client.get("/metrics")).text
                assert "mds_refused_future_total 1.0" in metrics
            assert running.service.status.counters["refused_older"] == 0
            tg.cancel_scope.cancel()


async def test_symbols_the_venue_does_not_confirm_show_in_subscriptions_and_health() -> None:
    settings = load_settings(EMBEDDED | {"MDS_SYMBOLS": "AAPL,NOPE"})
    clock = SystemClock()
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"NOPE"})
    container = Container(settings=settings)
    with (
        container.feed.override(providers.Object(feed)),
        container.positions.override(providers.Object(StaticPositionSource(set()))),
    ):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings, container)
            await wait_for(lambda: running.service.status.unconfirmed == {"NOPE"})
            async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
                subs = (await client.get("/subscriptions")).json()
                assert subs["confirmed"] == ["AAPL"] and subs["unconfirmed"] == ["NOPE"]
                health = (await client.get("/health")).json()
                assert (
                    "not confirmed by the venue" in health["detail"] and "NOPE" in health["detail"]
                )
            tg.cancel_scope.cancel()


def spawn(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MDS_", "ALPACA_", "APCA_"))}
    full.pop("REDIS_URL", None)
    full.update(env)
    return subprocess.Popen(
        [sys.executable, str(SERVICE)],
        env=full,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_process_cleanly_with_exit_0(sig: signal.Signals) -> None:
    """Exit 0, bounded by the wait below; the 2 s promise itself is measured by the fault tier
    (tests/fault/test_shutdown_and_ha.py, under load), not against a busy machine's clock here."""
    proc = spawn(EMBEDDED)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:  # wait for the "running" line, not a fixed time
            if "market-data-service running" in line:
                break
            assert time.monotonic() < deadline, "service did not start"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_an_invalid_setting_stops_the_start_naming_the_variable() -> None:
    proc = spawn(
        {
            "MDS_PRICE_TTL": "-1",
            "ALPACA_API_KEY": "PKSECRETKEYID",
            "MDS_FEED": "sim",
            "ALPACA_SECRET_KEY": "topsecretvalue",
        }
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "MDS_PRICE_TTL" in err and "topsecretvalue" not in err + out
    assert len([line for line in err.splitlines() if line.strip()]) <= 3


def test_help_documents_the_service() -> None:
    out = subprocess.run(
        [sys.executable, str(SERVICE), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "embedded default" in out and "Exit codes" in out


def _finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> str:
    """Its stderr once it exits; killed (never left running) when it does not in time."""
    try:
        return proc.communicate(timeout=timeout_s)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_taken_http_port_is_one_line_naming_the_setting_and_exit_4() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn(EMBEDDED | {"MDS_HTTP_PORT": str(port)})
        err = _finish(proc)
    assert proc.returncode == 4, err
    assert "Traceback" not in err and "ExceptionGroup" not in err
    critical = [line for line in _lines(err) if '"CRITICAL"' in line]
    assert len(critical) == 1
    assert (
        f"MDS_HTTP_PORT: cannot listen on 127.0.0.1:{port}: address already in use" in (critical[0])
    )


def test_a_malformed_replay_file_is_fatal_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "text": "[]"}\nnot a frame\n')
    proc = spawn(EMBEDDED | {"MDS_FEED": "replay", "MDS_REPLAY_FILE": str(bad)})
    err = _finish(proc)
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "reconnecting" not in err
    assert f"{bad} line 2 is not a recorded frame" in err and "MDS_REPLAY_FILE" in err


def test_a_missing_env_file_is_refused_with_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SERVICE), "--env-file", str(tmp_path / "nonexistent.env")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert _lines(out.stderr) == [
        f"market-data-service: --env-file: no such file: '{tmp_path / 'nonexistent.env'}'"
    ]


def test_unknown_variables_are_named_with_the_closest_real_one(tmp_path: Path) -> None:
    from entrypoints.settings import unknown_variables

    env_file = tmp_path / "my.env"
    env_file.write_text("MDS_SIMRATE=5\nMDS_SIM_RATE=5\n")
    warnings = unknown_variables(
        {"MDS_SYMBOL": "AAPL", "ALPACA_KEY": "x", "MDS_XYZZY": "1", "HOME": "/", "MDS_FEED": "sim"},
        env_file=env_file,
    )
    assert warnings == [
        "ALPACA_KEY (in the environment) is not a setting and is ignored; did you mean "
        "ALPACA_API_KEY?",
        "MDS_SYMBOL (in the environment) is not a setting and is ignored; did you mean "
        "MDS_SYMBOLS?",
        "MDS_XYZZY (in the environment) is not a setting and is ignored; see "
        "`mds run --print-config`",
        f"MDS_SIMRATE (in {env_file}) is not a setting and is ignored; did you mean MDS_SIM_RATE?",
    ]


def test_keys_without_symbols_or_positions_warn_that_nothing_will_be_priced() -> None:
    from entrypoints.service import nothing_to_price

    keys = {"ALPACA_API_KEY": "k", "ALPACA_SECRET_KEY": "s"}
    why = nothing_to_price(load_settings(keys))
    assert why is not None and "nothing will be priced" in why and "MDS_SYMBOLS" in why
    assert nothing_to_price(load_settings(keys | {"MDS_SYMBOLS": "AAPL"})) is None
    assert nothing_to_price(load_settings(EMBEDDED)) is None  # sim: AAPL, MSFT, SPY


async def test_health_says_when_nothing_will_be_priced() -> None:
    settings = load_settings(EMBEDDED | {"MDS_SYMBOLS": ""})
    clock = SystemClock()
    feed = ScriptedQuoteFeed(clock)
    container = Container(settings=settings)
    with container.feed.override(providers.Object(feed)):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings, container)
            async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
                health = (await client.get("/health")).json()
            tg.cancel_scope.cancel()
    assert health["websocket_connected"] is True and health["subscribed_symbols"] == 0
    assert "nothing will be priced" in health["detail"] and "MDS_SYMBOLS" in health["detail"]


async def test_the_summary_line_shows_rate_symbols_priced_and_a_few_prices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace
    from typing import cast

    from application.service import MarketDataService
    from application.status import ServiceStatus
    from domain.price import Price
    from entrypoints.service import log_summary

    clock = SystemClock()
    cache = InMemoryPriceCache(clock)
    status = ServiceStatus(started_at=0.0)
    status.confirmed = frozenset({"AAPL", "MSFT", "SPY", "NVDA", "AMD"})
    ts = 1_700_000_000 * 10**9
    await cache.put_many(
        [Price(s, 1.0, 1.02, 1.01, ts, "IEX") for s in ("AAPL", "AMD", "MSFT", "NVDA")]
    )
    fake = SimpleNamespace(status=status, cache=cache, confirmed=lambda: status.confirmed)
    service = cast(MarketDataService, fake)
    with caplog.at_level(logging.INFO, "mds"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(log_summary, service, 0.05)
            await wait_for(lambda: any("prices:" in r.getMessage() for r in caplog.records))
            tg.cancel_scope.cancel()
    line = next(r.getMessage() for r in caplog.records if "prices:" in r.getMessage())
    assert line == (
        "prices: 0/s; 4 of 5 subscribed symbols priced: AAPL 1.01, AMD 1.01, MSFT 1.01 (+1 more)"
    )


def test_the_running_line_says_where_prices_go_in_words() -> None:
    from entrypoints.service import describe_store

    assert describe_store(load_settings({})) == "memory (no REDIS_URL: in this process only)"
    single = load_settings({"REDIS_URL": "redis://:pw@r1:6379/0"})
    assert describe_store(single) == "Redis redis://:***@r1:6379/0"


@pytest.mark.parametrize(("keep_times", "stale"), [("false", False), ("true", True)])
async def test_the_bundled_replay_plays_as_if_live_unless_told_to_keep_times(
    keep_times: str, stale: bool
) -> None:
    settings = load_settings(
        EMBEDDED
        | {"MDS_FEED": "replay", "MDS_REPLAY_SPEED": "0", "MDS_REPLAY_KEEP_TIMES": keep_times}
    )
    async with anyio.create_task_group() as tg:
        running: Running = await tg.start(run, settings)
        await wait_for(lambda: running.service.status.counters["prices_written"] >= 3)
        async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
            price = (await client.get("/prices/AAPL")).json()
        tg.cancel_scope.cancel()
    assert price["stale"] is stale
    if not stale:
        assert price["age_s"] < 60  # the recording is months old; as if live, it is fresh


async def test_sse_send_timeout_also_bounds_a_stuck_peers_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MDS_SSE_SEND_TIMEOUT reaches both halves of "a client that stops reading is dropped":
    the stream's write deadline and the HTTP server's TCP_USER_TIMEOUT on accepted sockets
    (hypercorn's writes are shielded, so the kernel is what ends a blocked write). That the two
    together drop a stuck reader is test_http_sse's
    test_a_client_that_stops_reading_is_dropped_and_the_rest_go_on; this is the wiring."""
    from entrypoints import http_api

    serve_http, create_app = http_api.serve_http, http_api.create_app
    stuck_peer: list[float | None] = []
    send_timeout: list[float] = []

    async def recording_serve_http(*args: Any, **kwargs: Any) -> None:
        stuck_peer.append(kwargs.get("stuck_peer_timeout_s"))
        await serve_http(*args, **kwargs)

    def recording_create_app(*args: Any, **kwargs: Any) -> Any:
        send_timeout.append(kwargs["options"].sse_send_timeout_s)
        return create_app(*args, **kwargs)

    monkeypatch.setattr(http_api, "serve_http", recording_serve_http)
    monkeypatch.setattr(http_api, "create_app", recording_create_app)
    settings = load_settings({**EMBEDDED, "MDS_SSE_SEND_TIMEOUT": "2.5"})
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings)
            async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
                assert (await client.get("/health")).status_code == 200  # served through it
            tg.cancel_scope.cancel()
    assert stuck_peer == [2.5]
    assert send_timeout == [2.5]
