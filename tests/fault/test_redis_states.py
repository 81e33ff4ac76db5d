"""The service as a real process against a Redis put into states nobody scripted before
(issue 11): out of memory in an HA pair, a password it lacks, frozen at shutdown."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
import redis

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.redis.reader import PriceReader
from tests.conditions import wait_for
from tests.e2e.service_process import ServiceProcess, metric_total
from tests.fault.helpers import (
    alpaca_server,
    authenticated_sessions,
    cached_timestamps,
    pending_writes_reach,
    quotes_of_active_session,
    service_process,
    wall_ns,
)
from tests.redis_servers import RedisClusterHandle, RedisServer, start_server

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

SYMBOLS = ("AAPL", "MSFT", "NVDA")
CONFIG = ServerConfig(rate=500, batch=10, bar_interval_s=None, seed=41)


def set_oom(server: RedisServer, on: bool) -> None:
    with server.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1" if on else "0")


async def health_of(service: ServiceProcess) -> dict[str, object]:
    health = await service.health()
    assert service.proc.poll() is None, f"service exited:\n{service.log()[-3000:]}"
    return health or {}


async def test_an_ha_pair_lives_through_redis_out_of_memory_from_start_to_recovery(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Defect 1: both HA instances start against a Redis at maxmemory with noeviction (the
    lease's SET is refused with OOM): both stay up, standing by, /health degraded with redis
    degraded (their own lease traffic fails). The limit is lifted: one leads and streams, the
    other stands by, healthy. OOM again while streaming: the leader degrades (writes refused)
    and stays up, the standby stays up. Lifted again: fresh prices, healthy. Before: OOM was not
    an outage: traceback, exit 1, in both roles and again at every restart."""
    redis = own_redis_server
    set_oom(redis, True)
    ha = {"MDS_SYMBOLS": ",".join(SYMBOLS), "MDS_HA": "true", "MDS_HA_LEASE_TTL": "2"}
    async with (
        alpaca_server(CONFIG) as server,
        service_process(tmp_path, server, redis.url, **ha) as first,
        service_process(tmp_path, server, redis.url, **ha) as second,
        PriceReader(redis.url) as reader,
    ):
        pair = (first, second)

        async def all_match(*wanted: tuple[str, str, str]) -> bool:
            seen = sorted(
                (str(h.get("role")), str(h.get("status")), str(h.get("redis")))
                for h in [await health_of(s) for s in pair]
            )
            return seen == sorted(wanted)

        degraded_standby = ("standby", "degraded", "degraded")
        # Two interpreters start at once: generous under CPU contention (a bound, not a sleep).
        await wait_for(lambda: all_match(degraded_standby, degraded_standby), timeout_s=45)
        assert quotes_of_active_session(server) == frozenset()  # nobody streams

        set_oom(redis, False)
        await wait_for(
            lambda: all_match(("leader", "healthy", "ok"), ("standby", "healthy", "ok")),
            timeout_s=20,
        )
        started_ns = wall_ns()

        async def fresh_since(ts_ns: int) -> bool:
            stamps = await cached_timestamps(reader, SYMBOLS)
            return all(ts > ts_ns for ts in stamps.values())

        await wait_for(lambda: fresh_since(started_ns), timeout_s=10)

        set_oom(redis, True)
        await wait_for(
            lambda: all_match(("leader", "degraded", "degraded"), ("standby", "healthy", "ok")),
            timeout_s=10,
        )
        set_oom(redis, False)
        back_ns = wall_ns()
        await wait_for(lambda: fresh_since(back_ns), timeout_s=10)
        await wait_for(
            lambda: all_match(("leader", "healthy", "ok"), ("standby", "healthy", "ok")),
            timeout_s=10,
        )
        errors = [metric_total(await s.metrics(), "mds_cache_write_errors_total") for s in pair]
        assert max(errors) > 0  # the leader's writes were refused for a while
        assert all(s.proc.poll() is None for s in pair)


async def test_a_redis_that_wants_a_password_is_exit_2_with_one_line_naming_redis_url(
    tmp_path: Path,
) -> None:
    """NOAUTH at start ("HELLO must be called with the client already authenticated" on
    RESP3): exit 2 with one CRITICAL line ending "check REDIS_URL", no traceback. Before: the
    service ran degraded forever, retrying a password it did not have."""
    redis = start_server(tmp_path, extra_args=("--requirepass", "not-in-the-url"))
    try:
        async with (
            alpaca_server(CONFIG) as server,
            service_process(tmp_path, server, redis.url) as service,
        ):
            code = await service.wait_exit(15)
            log = service.log()
    finally:
        redis.stop()
    assert code == 2, log[-3000:]
    assert "Traceback" not in log
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1 and "check REDIS_URL" in critical[0], critical
    assert "not-in-the-url" not in log


async def test_sigterm_with_redis_frozen_exits_within_2_s(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Redis frozen (SIGSTOP) while prices stream, so writes hang in worker threads until the
    socket timeout: SIGTERM still ends the process within 2 s, exit 0 (the flush gives up at
    its deadline; a Redis call in flight is abandoned, not waited for). Before: 3.6-4.2 s."""
    async with (
        alpaca_server(CONFIG) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS)
        ) as service,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
        )
        own_redis_server.pause()
        try:
            await pending_writes_reach(service, 20)
            sent_at = anyio.current_time()
            service.proc.send_signal(signal.SIGTERM)
            code = await service.wait_exit(10)
            took = anyio.current_time() - sent_at
        finally:
            own_redis_server.resume()
    print(f"\nSIGTERM with Redis frozen: exit {code} after {took * 1000:.0f} ms")
    assert code == 0, service.log()[-3000:]
    assert took < 2.0, took


async def test_ha_after_redis_loses_its_data_one_instance_streams(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Defect 6 as a process: an HA pair streams (one leader); Redis is FLUSHALLed. Within a
    few renewal periods exactly one instance says leader and streams, and the venue never sees
    two authenticated sessions at once from then on (a second one would also be refused with
    406). Before: the new leader's INCR restarted at 1, both held "token 1", both led 40 s+."""
    ha = {"MDS_SYMBOLS": ",".join(SYMBOLS), "MDS_HA": "true", "MDS_HA_LEASE_TTL": "2"}
    peak = [0]
    async with (
        alpaca_server(CONFIG) as server,
        service_process(tmp_path, server, own_redis_server.url, **ha) as first,
        service_process(tmp_path, server, own_redis_server.url, **ha) as second,
        anyio.create_task_group() as tg,
    ):
        pair = (first, second)

        async def roles() -> list[str]:
            found = [await health_of(s) for s in pair]
            return sorted(str(h.get("role")) for h in found)

        async def one_leader_streaming() -> bool:
            return await roles() == ["leader", "standby"] and quotes_of_active_session(
                server
            ) >= set(SYMBOLS)

        await wait_for(one_leader_streaming, timeout_s=45, step_s=0.05)
        with own_redis_server.client() as r:
            r.flushall()

        def observe() -> bool:
            peak[0] = max(peak[0], authenticated_sessions(server))
            return False

        tg.start_soon(server.wait_until, observe)

        # The old leader's renewal (every 0.6 s) fails on identity and it steps down; whoever
        # takes the lease next holds back for a while before streaming (its history is unknown),
        # so for a moment both are standby. Wait for that hand-over first: right after the
        # FLUSHALL the old leader still says leader, which is not yet the settled state.
        async def both_standby() -> bool:
            return await roles() == ["standby", "standby"]

        await wait_for(both_standby, timeout_s=10, step_s=0.05)
        # Settle: then one leader streams, and for 3 s more the roles must stay one leader, one
        # standby (sampled, bounded).
        await wait_for(one_leader_streaming, timeout_s=10, step_s=0.05)
        settled_at = anyio.current_time()
        while anyio.current_time() - settled_at < 3.0:
            assert await roles() == ["leader", "standby"]
            await anyio.sleep(0.1)  # sampling a property that must hold 3 s, not a sync wait
        tg.cancel_scope.cancel()
    assert peak[0] == 1, peak
    assert server.stats.errors_sent[406] == 0


async def test_a_live_cluster_reshard_while_streaming_never_ends_the_process(
    tmp_path: Path, own_redis_cluster: RedisClusterHandle
) -> None:
    """Defect 8 as a process: the service streams into a three-master cluster while
    ``redis-cli --cluster reshard`` moves every slot of the first master that holds a price
    key to the second. Keys move one by one while their slot is MIGRATING, so the checked
    write meets "Script attempted to access a non local key". The process stays up through
    the reshard and every symbol is fresh afterwards. Before: the ResponseError ended it."""
    cluster = own_redis_cluster
    symbols = [f"RS{i}" for i in range(12)]
    async with (
        alpaca_server(CONFIG) as server,
        service_process(
            tmp_path,
            server,
            cluster.url,
            MDS_SYMBOLS=",".join(symbols),
            MDS_REDIS_CLUSTER="true",
        ) as service,
        PriceReader(cluster.url, cluster=True) as reader,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(symbols),
            timeout_s=45,
        )
        source, target = cluster.nodes[0], cluster.nodes[1]
        with redis.RedisCluster.from_url(cluster.url) as rc:
            slots = sorted(
                {rc.keyslot(f"price:{s}") for s in symbols} & set(_slots_of(rc, source.port))
            )
        assert slots, "no price key on the first master"
        target_id = _node_id(target)
        source_id = _node_id(source)
        for slot in slots:  # what `redis-cli --cluster reshard` does, slot by slot
            await anyio.to_thread.run_sync(
                _move_slot, cluster, slot, source, target, source_id, target_id
            )
            assert service.proc.poll() is None, service.log()[-3000:]
        moved_ns = wall_ns()

        async def fresh() -> bool:
            stamps = await cached_timestamps(reader, symbols)
            return all(ts > moved_ns for ts in stamps.values())

        await wait_for(fresh, timeout_s=15, step_s=0.05)
        await service.wait_health(lambda h: h["status"] == "healthy")
        assert service.proc.poll() is None


def _slots_of(rc: redis.RedisCluster, port: int) -> list[int]:
    out: list[int] = []
    for start, end, *nodes in rc.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
        if int(nodes[0][1]) == port:
            out.extend(range(int(start), int(end) + 1))
    return out


def _node_id(node: RedisServer) -> str:
    with node.client() as c:
        raw = c.execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _move_slot(
    cluster: RedisClusterHandle,
    slot: int,
    source: RedisServer,
    target: RedisServer,
    source_id: str,
    target_id: str,
) -> None:
    """Migrate one slot key by key (with a pause between keys, as a big slot would take),
    then hand it over on every node."""
    import time

    with source.client() as s, target.client() as t:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
            s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            time.sleep(0.3)  # keys moved, slot not yet handed over: the window of defect 8
        time.sleep(0.3)
        for node in cluster.nodes:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
