"""SIGTERM under load, and active/standby: the leader killed with SIGKILL."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader
from tests.conditions import wait_for
from tests.e2e.service_process import SECRET, ServiceProcess
from tests.fault.helpers import (
    NewestPrices,
    alpaca_server,
    authenticated_sessions,
    cached_timestamps,
    quotes_of_active_session,
    service_process,
    signal_and_wait_clean_exit,
    subscribe_prices,
    wall_ns,
)
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "TSLA")


async def track_peak(
    server: AlpacaCompatibleServer, read: Callable[[], int], peak: list[int]
) -> None:
    """Keep ``peak[0]`` at the highest ``read()`` seen, re-read at every change the server
    notifies (every auth, subscription, session start and end), until cancelled."""

    def observe() -> bool:
        peak[0] = max(peak[0], read())
        return False  # never satisfied: keep observing

    await server.wait_until(observe)


# --- 7. SIGTERM under load ------------------------------------------------------------------


async def test_sigterm_under_load_exits_0_within_2_s_with_every_published_price_cached(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """At 10 000 quotes/s, SIGTERM ends the process with code 0 within 2 s. Nothing pending is
    lost: after the exit, the newest price a Redis subscriber received for each symbol is the
    one in the cache (the last publish and the last cache write are the same price), no
    "could not be written" line is logged, and the server received a close frame (1000)."""
    config = ServerConfig(rate=10_000, batch=50, bar_interval_s=None, seed=23)
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS)
        ) as service,
        PriceReader(own_redis_server.url) as reader,
        anyio.create_task_group() as tg,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
        )
        seen = NewestPrices()
        await tg.start(subscribe_prices, reader, SYMBOLS, seen)
        await wait_for(lambda: seen.received >= 5_000 and len(seen.newest) == len(SYMBOLS))
        # Still streaming right now (under load when the signal comes): 500 more prices arrive.
        flowing_from = seen.received
        await wait_for(lambda: seen.received >= flowing_from + 500)

        code, took = await signal_and_wait_clean_exit(
            service, server, reader, seen, SYMBOLS, signal.SIGTERM
        )
        tg.cancel_scope.cancel()

    log = service.log()
    print(f"\nSIGTERM at 10 000 quotes/s: exit {code} after {took * 1000:.0f} ms")
    assert code == 0
    assert took < 2.0
    assert "could not be written" not in log
    assert '"msg":"stopped"' in log
    assert SECRET not in log


# --- 8. active/standby ------------------------------------------------------------------------

LEASE_TTL_S = 3.0
# /health is polled every 50 ms and a process needs a moment to answer: a little slack on top.
TAKEOVER_SLACK_S = 0.5


async def roles(services: list[ServiceProcess]) -> list[object]:
    found: list[object] = []
    for service in services:
        health = await service.health()
        found.append(None if health is None else health["role"])
    return found


async def test_ha_one_leader_and_the_standby_takes_over_within_the_lease_ttl(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Two instances with MDS_HA=true and MDS_HA_LEASE_TTL=3, one Redis, one venue, the SAME
    keys: exactly one is leader (/health role) and streams, the other stands by; the venue
    never sees two authenticated sessions at once (an overlap would also show as a 406). The
    leader is killed with SIGKILL: the standby becomes leader within the lease TTL, re-opens
    the single session and prices resume in Redis."""
    config = ServerConfig(rate=500, batch=10, bar_interval_s=None, seed=29)
    ha = {
        "MDS_SYMBOLS": ",".join(SYMBOLS),
        "MDS_HA": "true",
        "MDS_HA_LEASE_TTL": str(LEASE_TTL_S),
    }
    peak = [0]
    async with (
        alpaca_server(config) as server,
        anyio.create_task_group() as tg,
        PriceReader(own_redis_server.url) as reader,
    ):
        tg.start_soon(track_peak, server, lambda: authenticated_sessions(server), peak)
        async with (
            service_process(tmp_path, server, own_redis_server.url, **ha) as first,
            service_process(tmp_path, server, own_redis_server.url, **ha) as second,
        ):
            services = [first, second]

            async def one_leader_streaming() -> bool:
                found = await roles(services)
                if sorted(map(str, found)) != ["leader", "standby"]:
                    return False
                return quotes_of_active_session(server) >= set(SYMBOLS)

            await wait_for(one_leader_streaming, timeout_s=20, step_s=0.05)
            found = await roles(services)
            leader = services[found.index("leader")]
            standby = services[found.index("standby")]
            standby_health = await standby.health()
            assert standby_health is not None and standby_health["status"] == "healthy"
            assert authenticated_sessions(server) == 1
            started_ns = wall_ns()

            async def fresh_since(ts_ns: int) -> bool:
                stamps = await cached_timestamps(reader, SYMBOLS)
                return all(ts > ts_ns for ts in stamps.values())

            await wait_for(lambda: fresh_since(started_ns), timeout_s=10)

            leader.kill()  # SIGKILL
            killed_at = anyio.current_time()
            killed_ns = wall_ns()
            await standby.wait_health(lambda h: h["role"] == "leader", timeout_s=10)
            took_over_after = anyio.current_time() - killed_at
            await standby.wait_health(
                lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
            )
            await wait_for(lambda: fresh_since(killed_ns), timeout_s=10)
            resumed_after = anyio.current_time() - killed_at
            auth_successes = server.stats.auth_successes
        tg.cancel_scope.cancel()

    print(
        f"\nHA (lease TTL {LEASE_TTL_S:g} s): standby leader {took_over_after * 1000:.0f} ms "
        f"after SIGKILL; prices fresh again after {resumed_after * 1000:.0f} ms"
    )
    assert took_over_after <= LEASE_TTL_S + TAKEOVER_SLACK_S
    assert peak[0] == 1
    assert server.stats.errors_sent[406] == 0
    assert auth_successes == 2  # the first leader's session, then the new leader's


# --- a frozen leader (SIGSTOP) still holds the venue's single slot ---------------------------


async def test_a_new_leader_streams_within_a_second_of_the_venue_freeing_a_frozen_leaders_slot(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """The leader is frozen with SIGSTOP: its lease expires and the standby leads, but the venue
    still counts the frozen process's connection, so the new leader's connect gets 406. The
    venue frees the slot when it notices the dead connection (here: the server drops it once
    the new leader has met a 406). The new leader, which has had no session yet, retries every
    second (domain.backoff.SlotRetry), so prices resume within about a second of the slot being
    freed (was: the 15 s floor after every 406)."""
    config = ServerConfig(rate=500, batch=10, bar_interval_s=None, seed=31)
    ha = {
        "MDS_SYMBOLS": ",".join(SYMBOLS),
        "MDS_HA": "true",
        "MDS_HA_LEASE_TTL": str(LEASE_TTL_S),
    }
    async with (
        alpaca_server(config) as server,
        PriceReader(own_redis_server.url) as reader,
        service_process(tmp_path, server, own_redis_server.url, **ha) as first,
        service_process(tmp_path, server, own_redis_server.url, **ha) as second,
    ):
        services = [first, second]

        async def one_leader_streaming() -> bool:
            found = await roles(services)
            if sorted(map(str, found)) != ["leader", "standby"]:
                return False
            return quotes_of_active_session(server) >= set(SYMBOLS)

        await wait_for(one_leader_streaming, timeout_s=45, step_s=0.05)  # slow starts
        found = await roles(services)
        leader = services[found.index("leader")]
        standby = services[found.index("standby")]
        (frozen_id,) = [i for i, s in server.sessions.items() if s.authenticated]

        async def fresh_since(ts_ns: int) -> bool:
            stamps = await cached_timestamps(reader, SYMBOLS)
            return all(ts > ts_ns for ts in stamps.values())

        leader.proc.send_signal(signal.SIGSTOP)
        try:
            stopped_at = anyio.current_time()
            with anyio.fail_after(LEASE_TTL_S + 10):
                await server.wait_until(lambda: server.stats.errors_sent[406] >= 1)
            first_406_after = anyio.current_time() - stopped_at
            assert frozen_id in server.sessions  # the frozen leader still holds the slot
            await server.sessions[frozen_id].abort("the venue reaps the frozen connection")
            freed_at = anyio.current_time()
            freed_ns = wall_ns()
            await wait_for(lambda: fresh_since(freed_ns), timeout_s=20)
            resumed_after_free = anyio.current_time() - freed_at
            resumed_after_stop = anyio.current_time() - stopped_at
            health = await standby.health()
            assert health is not None and health["role"] == "leader"
        finally:
            leader.proc.send_signal(signal.SIGCONT)
    print(
        f"\nHA frozen leader (lease TTL {LEASE_TTL_S:g} s): first 406 {first_406_after:.2f} s "
        f"after SIGSTOP; prices fresh {resumed_after_free:.2f} s after the venue freed the slot "
        f"({resumed_after_stop:.2f} s after SIGSTOP; 406s: {server.stats.errors_sent[406]})"
    )
    assert resumed_after_free < 1.0 + 2.0  # the 1 s cadence plus connect, subscribe, write
