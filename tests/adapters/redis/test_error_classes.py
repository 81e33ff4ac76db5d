"""Every error redis-py can raise is classified at the adapter edge (issue 11, defect 1).

Each test puts a REAL redis-server into one state (out of memory, read-only replica, master
down, loading, busy script, failing background save, flushed script cache, password required,
wrong password, frozen) and drives each role's call through the adapters: the writer's checked
write (``RedisPriceCache.put_many``), the standby's lease call (``RedisLease.acquire``), the
consumer's read (``PriceReader.get_many``) and the start-up check (``open_redis_store``). Each
must end as "ok", an outage (``RedisUnavailable``, a ``ConnectionError``: degrade and retry) or
a setting (``RedisMisconfigured``: one line ending "check REDIS_URL"); never another
exception. After the state is cleared, every role works again without a restart."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis

from adapters.redis import PriceReader, RedisConnection, RedisOptions, open_redis_store
from adapters.redis.connection import RedisMisconfigured, RedisUnavailable, classify
from adapters.redis.lease import RedisLease
from adapters.redis.price_cache import RedisPriceCache
from tests.adapters.redis.helpers import price
from tests.conditions import wait_for
from tests.ports import refused_port
from tests.redis_servers import RedisServer, start_server

pytestmark = pytest.mark.redis

FAST = RedisOptions(socket_timeout_s=0.5, connect_timeout_s=0.5)
DEBUG_ARGS = ("--enable-debug-command", "yes", "--enable-protected-configs", "yes")


@pytest.fixture
def debug_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_server(tmp_path, extra_args=DEBUG_ARGS)
    try:
        yield server
    finally:
        server.stop()


async def outcome(call: Callable[[], Awaitable[object]]) -> str:
    """'ok', 'outage' or 'setting'; any other exception fails the test with its traceback."""
    try:
        await call()
    except RedisUnavailable:
        return "outage"
    except RedisMisconfigured as e:
        assert str(e).endswith("check REDIS_URL"), e
        assert "\n" not in str(e)
        return "setting"
    return "ok"


async def roles(url: str) -> dict[str, str]:
    """The outcome of each role's call against ``url``."""
    conn = RedisConnection(url, options=FAST)
    reader = PriceReader(url, options=FAST)
    cache = RedisPriceCache(conn, publish=True)
    lease = RedisLease(conn, name="classes")
    n = [0]

    async def write() -> None:
        n[0] += 1
        await cache.put_many([price("AAPL", time.time_ns() + n[0])])

    async def start() -> None:
        async with open_redis_store(url, options=FAST):
            pass  # entered: started (degraded when Redis is not serving)

    try:
        return {
            "start": await outcome(start),
            "writer": await outcome(write),
            "lease": await outcome(lambda: lease.acquire(0.2)),
            "reader": await outcome(lambda: reader.get_many(["AAPL"])),
        }
    finally:
        conn.close()
        reader.close()


def admin(server: RedisServer) -> redis.Redis:
    return server.client()


ALL_OK = {"start": "ok", "writer": "ok", "lease": "ok", "reader": "ok"}


async def assert_recovers(url: str) -> None:
    async def all_ok() -> bool:
        return await roles(url) == ALL_OK

    await wait_for(all_ok, timeout_s=10, step_s=0.05)


async def test_out_of_memory_is_an_outage_for_writers_and_reads_go_on(
    debug_server: RedisServer,
) -> None:
    """maxmemory reached with noeviction (OOM; redis-py 8 drops the prefix): the writer and
    the lease see an outage, reads and start-up work; clearing the limit recovers."""
    with admin(debug_server) as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")
        got = await roles(debug_server.url)
        assert got == {"start": "ok", "writer": "outage", "lease": "outage", "reader": "ok"}
        r.config_set("maxmemory", "0")
    await assert_recovers(debug_server.url)


async def test_read_only_replica_is_an_outage(debug_server: RedisServer) -> None:
    """The server became a replica (READONLY): writes are an outage, stale reads work."""
    with admin(debug_server) as r, refused_port() as nobody:
        r.replicaof("127.0.0.1", str(nobody))
        got = await roles(debug_server.url)
        assert got == {"start": "ok", "writer": "outage", "lease": "outage", "reader": "ok"}
        r.replicaof("NO", "ONE")
    await assert_recovers(debug_server.url)


async def test_replica_without_master_and_no_stale_reads_is_an_outage(
    debug_server: RedisServer,
) -> None:
    """MASTERDOWN (replica-serve-stale-data no): every call, the start-up check too."""
    with admin(debug_server) as r, refused_port() as nobody:
        r.config_set("replica-serve-stale-data", "no")
        r.replicaof("127.0.0.1", str(nobody))
        got = await roles(debug_server.url)
        assert got == {"start": "ok", "writer": "outage", "lease": "outage", "reader": "outage"}
        r.replicaof("NO", "ONE")
    await assert_recovers(debug_server.url)


async def test_loading_dataset_is_an_outage(debug_server: RedisServer) -> None:
    """LOADING (DEBUG RELOAD of 20 000 keys slowed by key-load-delay): every role."""
    with admin(debug_server) as r:
        r.execute_command("DEBUG", "POPULATE", "20000", "filler")
        r.config_set("key-load-delay", "200")
        r.config_set("loading-process-events-interval-bytes", "1024")
    reload = threading.Thread(target=_debug_reload, args=(debug_server,), daemon=True)
    reload.start()
    try:
        await wait_for(lambda: _loading(debug_server), timeout_s=5)
        got = await roles(debug_server.url)
        assert got == {
            "start": "ok",
            "writer": "outage",
            "lease": "outage",
            "reader": "outage",
        }
    finally:
        with admin(debug_server) as r:
            await wait_for(lambda: not _loading(debug_server), timeout_s=30, step_s=0.1)
            r.config_set("key-load-delay", "0")
        await anyio.to_thread.run_sync(reload.join, 10)
    await assert_recovers(debug_server.url)


def _debug_reload(server: RedisServer) -> None:
    with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=60) as r:
        r.execute_command("DEBUG", "RELOAD")


def _loading(server: RedisServer) -> bool:
    with admin(server) as r:
        try:
            r.ping()
        except redis.exceptions.BusyLoadingError:
            return True
    return False


async def test_busy_script_is_an_outage(debug_server: RedisServer) -> None:
    """BUSY (another client's script runs past busy-reply-threshold): every role, the
    start-up check too; SCRIPT KILL recovers."""
    with admin(debug_server) as r:
        r.config_set("busy-reply-threshold", "50")
    script = threading.Thread(target=_endless_script, args=(debug_server,), daemon=True)
    script.start()
    try:
        await wait_for(lambda: _busy(debug_server), timeout_s=5)
        got = await roles(debug_server.url)
        assert got == {
            "start": "ok",
            "writer": "outage",
            "lease": "outage",
            "reader": "outage",
        }
    finally:
        with admin(debug_server) as r:
            r.script_kill()
        await anyio.to_thread.run_sync(script.join, 10)
    await assert_recovers(debug_server.url)


def _endless_script(server: RedisServer) -> None:
    with (
        redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=60) as r,
        contextlib.suppress(redis.exceptions.ResponseError),  # ended by SCRIPT KILL
    ):
        r.eval("while true do end", 0)


def _busy(server: RedisServer) -> bool:
    with admin(server) as r:
        try:
            r.ping()
        except redis.exceptions.ResponseError as e:
            return str(e).startswith("BUSY")
    return False


async def test_failing_background_save_is_an_outage_for_writers(
    debug_server: RedisServer,
) -> None:
    """MISCONF (a BGSAVE into an unwritable dir with stop-writes-on-bgsave-error): an outage
    for writes, and for reads too (the server also refuses PING, which redis-py sends as the
    connection health check); turning saving off recovers."""
    with admin(debug_server) as r:
        r.config_set("save", "3600 1")
        r.config_set("dir", "/proc")
        r.bgsave()
        await wait_for(
            lambda: r.info("persistence")["rdb_last_bgsave_status"] == "err", timeout_s=5
        )
        got = await roles(debug_server.url)
        assert got == {"start": "ok", "writer": "outage", "lease": "outage", "reader": "outage"}
        r.config_set("save", "")
    await assert_recovers(debug_server.url)


async def test_flushed_script_cache_is_reloaded(
    debug_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """NOSCRIPT after SCRIPT FLUSH: the checked write loads its script again, no error; and
    nothing at INFO or above says so (it is what every first start does, not a fault)."""
    assert await roles(debug_server.url) == ALL_OK
    with admin(debug_server) as r:
        r.script_flush()
    with caplog.at_level(logging.INFO, "adapters.redis"):
        assert await roles(debug_server.url) == ALL_OK
    assert [r.getMessage() for r in caplog.records if "script" in r.getMessage()] == []


async def test_password_required_is_a_setting_naming_redis_url(tmp_path: Path) -> None:
    """NOAUTH ("HELLO must be called with the client already authenticated" on RESP3, or
    "Authentication required"): a setting error in every role, "check REDIS_URL"."""
    server = start_server(tmp_path, extra_args=("--requirepass", "s3cret-pw"))
    try:
        got = await roles(server.url)
        assert got == dict.fromkeys(ALL_OK, "setting")
        resp3 = f"{server.url}?protocol=3"  # "HELLO must be called with the client already..."
        assert await roles(resp3) == dict.fromkeys(ALL_OK, "setting")
        wrong = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        assert await roles(wrong) == dict.fromkeys(ALL_OK, "setting")  # WRONGPASS
        right = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        assert await roles(right) == ALL_OK
    finally:
        server.stop()


async def test_frozen_server_is_an_outage_within_the_socket_timeout(
    debug_server: RedisServer,
) -> None:
    """SIGSTOP: every call times out (an outage) within the socket timeout; SIGCONT recovers."""
    debug_server.pause()
    try:
        with anyio.fail_after(4 * (FAST.socket_timeout_s + FAST.connect_timeout_s) + 2):
            got = await roles(debug_server.url)
        assert got == {"start": "ok", "writer": "outage", "lease": "outage", "reader": "outage"}
    finally:
        debug_server.resume()
    await assert_recovers(debug_server.url)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (redis.exceptions.OutOfMemoryError("command not allowed", status_code="OOM"), "outage"),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script."), "outage"),
        (redis.exceptions.ResponseError("MISCONF cannot persist"), "outage"),
        (redis.exceptions.ReadOnlyError("You can't write", status_code="READONLY"), "outage"),
        (redis.exceptions.MasterDownError("Link down", status_code="MASTERDOWN"), "outage"),
        (redis.exceptions.ClusterDownError("The cluster is down"), "outage"),
        (redis.exceptions.TryAgainError("Multiple keys"), "outage"),
        (redis.exceptions.ResponseError("ERR Script tried a non local key"), "outage"),
        (redis.exceptions.ResponseError("NOREPLICAS Not enough good replicas"), "outage"),
        (redis.exceptions.ResponseError("SOMETHINGNEW from a future server"), "outage"),
        (redis.exceptions.TimeoutError("Timeout reading"), "outage"),
        (redis.exceptions.ConnectionError("Connection reset by peer"), "outage"),
        (ConnectionResetError(104, "reset"), "outage"),
        (redis.exceptions.AuthenticationError("invalid username-password pair"), "setting"),
        (redis.exceptions.NoPermissionError("this user has no permissions"), "setting"),
        (ValueError("a bug in our code"), None),
    ],
)
def test_the_table_classifies_each_error(error: BaseException, expected: str | None) -> None:
    """The one classification table, also for errors a test cannot provoke on one server."""
    found = classify(error)
    assert (found[0].value if found else None) == expected
