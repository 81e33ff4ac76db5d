"""Faults on the stream: repeated drops, refusals that must be backed off from (406, 407, HTTP
429), bad credentials, and malformed frames mixed with good ones."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import anyio
import pytest

from adapters.alpaca.feed import CONNECTION_LIMIT_MIN_DELAY_S
from adapters.alpaca_compatible_server.config import Faults, ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader
from domain.backoff import BackoffPolicy
from tests.adapters.alpaca.hostile_peer import PeerConnection, hostile_peer
from tests.conditions import wait_for
from tests.e2e.service_process import KEY, SECRET, ServiceProcess, metric_total, start_service
from tests.fault.helpers import (
    NewestPrices,
    alpaca_server,
    quotes_of_active_session,
    service_process,
    subscribe_prices,
    wall_ns,
)
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
STREAM = ServerConfig(rate=400, batch=10, bar_interval_s=None, seed=11)
# Deterministic back-off for the spacing assertions: 0.5, 1, 2, 2, ... s (no jitter).
BACKOFF = {
    "MDS_RECONNECT_BASE_DELAY": "0.5",
    "MDS_RECONNECT_MAX_DELAY": "2",
    "MDS_RECONNECT_JITTER": "false",
}
# Scheduling slack allowed below a policy delay (timers, a loaded 2-core machine).
EARLY_S = 0.05


def streaming(health: dict[str, object]) -> bool:
    return health["status"] == "healthy" and health["subscribed_symbols"] == len(SYMBOLS)


async def wait_streaming(server: AlpacaCompatibleServer, service: ServiceProcess) -> None:
    await service.wait_health(streaming)
    with anyio.fail_after(10):
        await server.wait_until(lambda: quotes_of_active_session(server) >= set(SYMBOLS))


# --- 1. a connection dropped every few seconds ------------------------------------------------

DROP_EVERY_S = 3.0
DROPS_FOR_S = 24.0


async def test_connection_dropped_every_3_s_resubscribes_in_full_and_prices_keep_flowing(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """The server drops every connection 3 s after accepting it, for 24 s (the issue's "a
    minute", shortened to keep the suite fast): every drop is followed by a reconnection whose
    session holds ALL the symbols, and after each one a Redis subscriber sees new prices
    (venue timestamps after the re-subscription) for every symbol. No 406 (the old session is
    always gone first), no failed auth, the process stays up and ends healthy."""
    async with (
        alpaca_server(STREAM) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS)
        ) as service,
    ):
        await wait_streaming(server, service)
        seen = NewestPrices()
        cycles = 0
        async with PriceReader(own_redis_server.url) as reader, anyio.create_task_group() as tg:
            await tg.start(subscribe_prices, reader, SYMBOLS, seen)
            last_id = max(server.sessions)
            server.faults.drop_every_s = DROP_EVERY_S
            started = anyio.current_time()
            while anyio.current_time() - started < DROPS_FOR_S:

                def resubscribed(after: int = last_id) -> bool:
                    return any(
                        s.id > after
                        and s.authenticated
                        and s.subscriptions["quotes"] >= set(SYMBOLS)
                        for s in server.sessions.values()
                    )

                # A drop, a back-off of at most 1 s (MDS_RECONNECT_MAX_DELAY), a reconnect.
                with anyio.fail_after(DROP_EVERY_S + 5):
                    await server.wait_until(resubscribed)
                    subscribed_at = wall_ns()
                    last_id = max(server.sessions)
                    await wait_for(partial(seen.all_newer_than, SYMBOLS, subscribed_at))
                cycles += 1
            server.faults.drop_every_s = None
            tg.cancel_scope.cancel()

        await wait_streaming(server, service)
        metrics = await service.metrics()
        ended = [s for s in server.ended_sessions if s.authenticated]

    stats = server.stats
    assert cycles >= 6, cycles
    # Exactly one new session per drop (plus the first), each fully subscribed, none refused.
    assert stats.connections_dropped >= cycles
    assert stats.auth_successes == stats.connections_dropped + 1
    assert stats.connections_accepted == stats.auth_attempts == stats.auth_successes
    assert all(s.subscriptions["quotes"] >= set(SYMBOLS) for s in ended)
    assert not stats.errors_sent, stats.errors_sent
    assert metrics["mds_reconnects_total"] == stats.connections_dropped
    assert SECRET not in service.log()


# --- 2. refusals that must be backed off from --------------------------------------------------


async def test_407_slow_client_closes_are_retried_with_doubling_capped_delays(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Every session is closed with 407 (slow client) at its first data frame, four times in a
    row: with MDS_RECONNECT_BASE_DELAY=0.5, MAX_DELAY=2 and no jitter, the reconnects are
    spaced at least 0.5, 1, 2 and 2 s (doubling, capped): four attempts in ~5.5 s, not a
    storm. Once the fault is cleared the next attempt streams again."""
    async with (
        alpaca_server(STREAM) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS), **BACKOFF
        ) as service,
    ):
        await wait_streaming(server, service)
        accepted_before = server.stats.connections_accepted
        server.faults.send_407_then_close = True
        with anyio.fail_after(30):
            await server.wait_until(lambda: server.stats.errors_sent[407] >= 4)
        server.faults.send_407_then_close = False
        with anyio.fail_after(10):
            await server.wait_until(
                lambda: server.stats.connections_accepted >= accepted_before + 4
            )
        await wait_streaming(server, service)

    # Times stamped by the server itself (was: by a test task woken after the fact, which under
    # load stamped a close late and made a gap look shorter than it was: failed 1 run in 10).
    # closes[i] ended a session; connects[i] is the reconnect after it.
    closes = list(server.stats.error_times[407])
    connects = list(server.stats.accept_times)[accepted_before:]
    gaps = [connect - close for close, connect in zip(closes, connects, strict=False)]
    assert len(gaps) == 4, (closes, connects)
    for gap, policy in zip(gaps, (0.5, 1.0, 2.0, 2.0), strict=True):
        assert gap >= policy - EARLY_S, gaps
    # No storm: exactly one connection per refusal, the last one streaming.
    assert server.stats.connections_accepted == 5
    assert server.stats.errors_sent[407] == 4


async def test_http_429_at_the_upgrade_waits_at_least_5_s(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """After a drop, the reconnect's WebSocket upgrade is answered HTTP 429 (Retry-After: 1):
    the adapter asks for at least 5 s (its floor for 429, above the 1 s asked and the 0.5-1 s
    of the policy), so no connection at all is attempted for 5 s; the next attempt, with the
    fault cleared, streams again."""
    async with (
        alpaca_server(STREAM) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS), **BACKOFF
        ) as service,
    ):
        await wait_streaming(server, service)
        accepted_before = server.stats.connections_accepted
        server.faults.http_429_at_upgrade = True
        await server.drop_connections()
        with anyio.fail_after(10):
            await server.wait_until(lambda: server.stats.upgrades_rejected >= 1)
        server.faults.http_429_at_upgrade = False
        with anyio.fail_after(10):
            await server.wait_until(
                lambda: server.stats.connections_accepted >= accepted_before + 2
            )
        await wait_streaming(server, service)
    # Stamped by the server itself (see the 407 test; was: by test tasks woken after the fact,
    # which under load could stamp the 429 late and make the gap look shorter than it was).
    rejected = list(server.stats.rejected_upgrade_times)
    connects = list(server.stats.accept_times)[accepted_before:]

    assert len(rejected) == 1
    # connects[0] is the refused attempt, connects[1] the next one.
    assert connects[1] - rejected[0] >= 5.0 - EARLY_S, (rejected, connects)
    assert server.stats.connections_accepted == 3  # the first session, the 429, the recovery


async def test_406_connection_limit_waits_at_least_15_s_before_the_next_attempt(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """After a drop, the reconnect's auth is refused with 406 (connection limit: another session
    holds Alpaca's single slot). The adapter asks for at least 15 s (Alpaca may keep a dropped
    session ~90 s; hammering would not free it): no connection is attempted for 15 s, then the
    service, with the fault cleared, streams again. (This test takes ~17 s because of that
    floor.)"""
    async with (
        alpaca_server(STREAM) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS), **BACKOFF
        ) as service,
    ):
        await wait_streaming(server, service)
        accepted_before = server.stats.connections_accepted
        server.faults.reject_connections_with_406 = True
        await server.drop_connections()
        with anyio.fail_after(10):
            await server.wait_until(lambda: server.stats.errors_sent[406] >= 1)
        server.faults.reject_connections_with_406 = False
        with anyio.fail_after(CONNECTION_LIMIT_MIN_DELAY_S + 10):
            await server.wait_until(
                lambda: server.stats.connections_accepted >= accepted_before + 2
            )
        await wait_streaming(server, service)
        health = await service.health()
        health_at = anyio.current_time()
    # Stamped by the server itself (see the 407 test), on the same (trio) clock as health_at.
    refused = list(server.stats.error_times[406])
    connects = list(server.stats.accept_times)[accepted_before:]

    assert len(refused) == 1
    assert connects[1] - refused[0] >= CONNECTION_LIMIT_MIN_DELAY_S - EARLY_S, (refused, connects)
    assert server.stats.connections_accepted == 3  # the first session, the 406, the recovery
    # Exactly two consecutive failures: the drop and the 406. The count goes back to 0 only
    # once the recovered session has been up for BackoffPolicy.reset_after_s, and health was
    # read well before that (checked, so the expectation holds however slow the machine).
    assert health_at - connects[1] < BackoffPolicy().reset_after_s
    assert health is not None and health["reconnect_attempts"] == 2


# --- 3. bad credentials -------------------------------------------------------------------------


async def test_bad_credentials_exit_3_after_exactly_one_auth_with_one_clear_line(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """The server refuses the credentials (402): the process exits with code 3 after exactly one
    auth attempt (one connection: never retried), with one CRITICAL log line naming
    ALPACA_API_KEY; neither the secret nor the key id appears anywhere in its output."""
    config = ServerConfig(rate=400, bar_interval_s=None, faults=Faults(refuse_auth=True))
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS), **BACKOFF
        ) as service,
    ):
        code = await service.wait_exit(20)
    output = service.log()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    critical = [r for r in records if r["level"] == "CRITICAL"]

    assert code == 3
    assert server.stats.auth_attempts == 1
    assert server.stats.connections_accepted == 1
    assert server.stats.errors_sent[402] == 1
    assert len(critical) == 1 and "ALPACA_API_KEY" in critical[0]["msg"], critical
    assert len([line for line in output.splitlines() if "ALPACA_API_KEY" in line]) == 1
    assert SECRET not in output and KEY not in output


# --- 4. malformed frames among good ones --------------------------------------------------------


@pytest.mark.parametrize("wire", ["json", "msgpack"])
async def test_malformed_frames_are_counted_and_every_good_quote_is_priced(
    tmp_path: Path, own_redis_server: RedisServer, wire: str
) -> None:
    """Every second data frame is followed by a malformed one (in rotation: bad encoding, not a
    list, a quote missing its fields, wrong types, an unknown type). Every good quote the server
    sent is priced (mds_prices_computed_total == the server's messages_sent) and written, every
    bad frame is counted and never priced: as a decode error, except the quote missing its
    prices, which the decoder reads (its documented rule: a missing bp/ap is an empty side) as
    a quote without a mid, counted in mds_no_mid_total. The session goes on: one connection,
    no reconnect."""
    config = ServerConfig(rate=2000, batch=10, bar_interval_s=None, seed=5)
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path,
            server,
            own_redis_server.url,
            MDS_SYMBOLS=",".join(SYMBOLS),
            ALPACA_STREAM_FORMAT=wire,
        ) as service,
    ):
        await wait_streaming(server, service)
        server.faults.malformed_every = 2
        with anyio.fail_after(20):
            await server.wait_until(lambda: server.stats.malformed_frames_sent >= 250)
        # Quiesce the stream, then the service must have seen exactly what was sent.
        server.faults.stall = True

        def bad(m: dict[str, float]) -> float:
            return metric_total(m, "mds_decode_errors_total") + metric_total(m, "mds_no_mid_total")

        async def caught_up() -> bool:
            m = await service.metrics()
            return (
                m["mds_prices_computed_total"] == server.stats.messages_sent
                and bad(m) == server.stats.malformed_frames_sent
                and m["mds_pending_writes"] == 0
            )

        await wait_for(caught_up, timeout_s=10, step_s=0.1)
        metrics = await service.metrics()
        health = await service.health()

    sent = server.stats.messages_sent
    malformed = server.stats.malformed_frames_sent
    no_mid = metric_total(metrics, "mds_no_mid_total")
    decode_errors = metric_total(metrics, "mds_decode_errors_total")
    assert metrics["mds_prices_computed_total"] == sent
    assert metrics['mds_messages_total{type="quote"}'] == sent + no_mid
    assert metrics["mds_prices_written_total"] + metrics["mds_conflated_total"] == sent
    assert decode_errors + no_mid == malformed
    # One kind in five is the quote without prices; the other four are decode errors.
    assert no_mid <= malformed / 5 + 1 and decode_errors >= 4 * (malformed // 5)
    reasons = {k for k, v in metrics.items() if k.startswith("mds_decode_errors_total") and v}
    assert len(reasons) >= 3, reasons
    assert metrics["mds_reconnects_total"] == 0
    assert server.stats.connections_accepted == 1
    assert health is not None and health["status"] == "healthy"


# --- a stall: data stops, pings answered ------------------------------------------------------

STALL_THRESHOLD_S = 2.0


async def test_a_stall_keeps_health_degraded_across_watchdog_reconnects_until_data_flows(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """The venue stops sending data but answers pings (MDS_DATA_TIMEOUT=2). /health leaves
    healthy within the threshold (plus sampling slack) and, sampled every 0.1 s for 6 s, never
    says healthy again while the venue is silent, although the data watchdog reconnects twice
    and each new session is connected and subscribed (was: healthy between reconnects). The
    detail says how long there has been no data, and mds_stream_silent is 1. Data again:
    healthy, and the gauge 0."""
    async with (
        alpaca_server(STREAM) as server,
        service_process(
            tmp_path,
            server,
            own_redis_server.url,
            MDS_SYMBOLS=",".join(SYMBOLS),
            MDS_DATA_TIMEOUT=f"{STALL_THRESHOLD_S:g}",
            **BACKOFF,
        ) as service,
    ):
        await wait_streaming(server, service)
        accepted = server.stats.connections_accepted
        server.faults.stall = True
        stalled_at = anyio.current_time()
        await service.wait_health(lambda h: h["status"] != "healthy", timeout_s=10)
        left_after = anyio.current_time() - stalled_at
        samples: list[tuple[float, object, object]] = []
        while anyio.current_time() - stalled_at < left_after + 6.0:
            h = await service.health()
            t = anyio.current_time() - stalled_at
            samples.append((t, h and h["status"], h and h["detail"]))
            await anyio.sleep(0.1)
        reconnects = server.stats.connections_accepted - accepted
        during = await service.metrics()
        server.faults.stall = False
        await service.wait_health(lambda h: h["status"] == "healthy", timeout_s=15)
        after = await service.metrics()

    assert left_after <= STALL_THRESHOLD_S + 1.5, left_after  # loaded machine: sampling slack
    assert reconnects >= 2, reconnects  # the watchdog did reconnect meanwhile
    healthy = [round(t, 1) for t, status, _ in samples if status == "healthy"]
    assert healthy == [], f"/health said healthy during the stall at {healthy} s"
    assert any("stream: no data for" in str(detail) for _, _, detail in samples), samples
    silent = 'mds_stream_silent{stream="us_equity"}'
    assert during[silent] == 1 and after[silent] == 0  # what MdsFeedSilent alerts on


# --- an endpoint that accepts TCP and never answers the upgrade --------------------------------


async def test_an_endpoint_that_never_answers_the_upgrade_is_retried_and_sigterm_still_exits(
    tmp_path: Path,
) -> None:
    """A stuck proxy or load balancer: TCP accepted, the HTTP upgrade never answered. The
    service gives up each attempt at the 10 s connect timeout and reconnects with backoff
    (was: hung for ever on the first attempt, 0 reconnects), stays up, says it is not
    connected, and SIGTERM during a hung attempt still exits 0 promptly."""
    async with hostile_peer(PeerConnection.silent) as peer:
        service = start_service(tmp_path, peer.url(), None)
        try:
            await wait_for(lambda: len(peer.connections) >= 3, timeout_s=45, step_s=0.1)
            health = await service.health()
            assert health is not None and health["websocket_connected"] is False
            assert metric_total(await service.metrics(), "mds_reconnects_total") >= 2
            # The earlier attempts' sockets were released, not left open.
            assert all(c.eof_at is not None for c in peer.connections[:2])
            took = await anyio.to_thread.run_sync(service.terminate)
            assert service.proc.returncode == 0
            assert took < 2.0 + 1.0  # the 2 s bound, plus process scheduling on a busy machine
        finally:
            service.kill()
