"""Benchmark: the checked (latest-wins) Lua write against a plain ``SET PX`` + ``PUBLISH``
pipeline, batch sizes 10 / 100 / 1000, on redis-server processes this script starts on free
ports (standalone, and a three-master cluster with ``--cluster``).

    .venv/bin/python -m tests.adapters.redis.bench_checked_write [--seconds 0.5] [--cluster]

Every batch holds distinct symbols with newer timestamps than the last, so every price is
applied (the checked write's worst case: GET + SET + PUBLISH per price). Encoding the JSON is
included in every variant. Times are per batch, median of 5 rounds; no subscribers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from itertools import count
from typing import Any

import anyio
import redis
from redis.cluster import RedisCluster

from adapters.redis import _redispy
from adapters.redis.connection import RedisConnection, RedisMode
from adapters.redis.event_bus import RedisEventBus
from adapters.redis.price_cache import RedisPriceCache, put_prices_script
from domain.price import Price
from tests.redis_servers import start_cluster, start_server

T0 = 1_700_000_000 * 1_000_000_000
SIZES = (10, 100, 1000)


def make_batches(size: int) -> Callable[[], list[Price]]:
    """Each call: ``size`` distinct symbols, all newer than the previous call's."""
    symbols = [f"B{size}X{i:04d}" for i in range(size)]
    ticks = count(1)

    def next_batch() -> list[Price]:
        ts = T0 + next(ticks) * 1000
        return [Price(s, 100.25, 100.27, 100.26, ts + i, "V") for i, s in enumerate(symbols)]

    return next_batch


def per_call(fn: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """Median seconds per call over ``rounds`` rounds of about ``seconds / rounds`` each."""
    for _ in range(3):
        fn()
    results = []
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append((now - start) / n)
    return statistics.median(results)


def plain_pipeline(client: redis.Redis, next_batch: Callable[[], list[Price]]) -> Callable[[], Any]:
    def run() -> Any:
        pipe = _redispy.pipeline(client)
        for p in next_batch():
            payload = p.to_json()
            _redispy.queue(pipe, "SET", "price:" + p.symbol, payload, "PX", "300000")
            _redispy.queue(pipe, "PUBLISH", "price.updated." + p.symbol, payload)
        return pipe.execute()

    return run


def server_time(
    client: redis.Redis, command: str, fn: Callable[[], object], seconds: float
) -> float:
    """Seconds per call the server spent in ``command`` (INFO commandstats) while running fn."""
    client.config_resetstat()
    per_call(fn, seconds)
    stats = client.info("commandstats")[f"cmdstat_{command}"]
    return float(stats["usec_per_call"]) / 1e6


def checked(cache: RedisPriceCache, nb: Callable[[], list[Price]]) -> Callable[[], object]:
    return lambda: cache.put_many_sync(nb())


def packing(connection: Any, size: int, args: list[object]) -> Callable[[], object]:
    return lambda: connection.pack_command("EVALSHA", "0" * 40, size, *args)


def report(rows: list[tuple[str, int, float]]) -> None:
    print(f"{'variant':<48} {'batch':>6} {'µs/batch':>10} {'µs/price':>9} {'prices/s':>10}")
    for name, size, seconds in rows:
        print(
            f"{name:<48} {size:>6} {seconds * 1e6:>10.1f} {seconds * 1e6 / size:>9.2f} "
            f"{size / seconds:>10,.0f}"
        )


def bench_standalone(seconds: float) -> None:
    server = start_server()
    rows: list[tuple[str, int, float]] = []
    try:
        conn = RedisConnection(server.url)
        publishing = RedisPriceCache(conn, publish=True)
        checking = RedisPriceCache(conn, publish=False)
        bus = RedisEventBus(conn)
        client = conn.standalone()
        for size in SIZES:
            nb = make_batches(size)
            rows.append(
                (
                    "plain pipeline SET PX + PUBLISH",
                    size,
                    per_call(plain_pipeline(client, nb), seconds),
                )
            )
            rows.append(
                (
                    "checked Lua, SET+PUBLISH in script (chosen)",
                    size,
                    per_call(checked(publishing, nb), seconds),
                )
            )

            rows.append(
                (
                    "  of which: server-side script time",
                    size,
                    server_time(client, "evalsha", checked(publishing, nb), seconds),
                )
            )

            def checked_then_publish(nb: Callable[[], list[Price]] = nb) -> None:
                applied = checking.put_many_sync(nb())
                bus.publish_many_sync(applied, applied.payloads)

            rows.append(
                (
                    "checked Lua, then PUBLISH pipeline",
                    size,
                    per_call(checked_then_publish, seconds),
                )
            )

            def encode(nb: Callable[[], list[Price]] = nb) -> object:
                batch = nb()
                return publishing._args(
                    batch, [p.to_json() for p in batch], [p.timestamp for p in batch], True
                )

            rows.append(
                ("  of which: make batch, encode JSON, build args", size, per_call(encode, seconds))
            )
            batch = nb()
            keys = ["price:" + p.symbol for p in batch]
            stamps = [p.timestamp for p in batch]
            args = [*keys, *publishing._args(batch, [p.to_json() for p in batch], stamps, True)]
            packer = client.connection_pool.get_connection()
            try:
                rows.append(
                    (
                        "  of which: pack EVALSHA (hiredis)",
                        size,
                        per_call(packing(packer, size, args), seconds),
                    )
                )
            finally:
                client.connection_pool.release(packer)
        rows.extend(async_rows(server.url, seconds))
        conn.close()
    finally:
        server.stop()
    print("\n== standalone redis-server", redis_version(), "(loopback)")
    report(rows)


def async_rows(url: str, seconds: float) -> list[tuple[str, int, float]]:
    """The same chosen write through ``await cache.put_many`` (one thread hop) under trio."""
    out: list[tuple[str, int, float]] = []

    async def main() -> None:
        conn = RedisConnection(url)
        cache = RedisPriceCache(conn, publish=True)
        for size in SIZES:
            nb = make_batches(size)
            for _ in range(3):
                await cache.put_many(nb())
            results = []
            for _ in range(5):
                n = 0
                start = time.perf_counter()
                while time.perf_counter() - start < seconds / 5:
                    await cache.put_many(nb())
                    n += 1
                results.append((time.perf_counter() - start) / n)
            out.append(("await put_many (trio, 1 thread hop)", size, statistics.median(results)))
        conn.close()

    anyio.run(main, backend="trio")
    return out


def bench_cluster(seconds: float) -> None:
    cluster = start_cluster(3)
    rows: list[tuple[str, int, float]] = []
    try:
        conn = RedisConnection(cluster.url, mode=RedisMode.CLUSTER)
        cache = RedisPriceCache(conn, publish=True)
        rc = conn.cluster()
        sha = conn.register_script(put_prices_script())
        for node in _redispy.primaries(rc):
            _redispy.execute(rc.get_redis_connection(node), "SCRIPT", "LOAD", put_prices_script())
        for size in SIZES:
            nb = make_batches(size)
            rows.append(
                (
                    "cluster: plain pipeline SET PX + SPUBLISH",
                    size,
                    per_call(cluster_plain(rc, nb), seconds),
                )
            )
            rows.append(
                (
                    "cluster: Lua per node + SPUBLISH pipeline (chosen)",
                    size,
                    per_call(checked(cache, nb), seconds),
                )
            )
            rows.append(
                (
                    "cluster: Lua per key in pipeline + SPUBLISH",
                    size,
                    per_call(cluster_per_key(rc, sha, nb), seconds),
                )
            )
        conn.close()
    finally:
        cluster.stop()
    print("\n== 3-master cluster (loopback, same machine)")
    report(rows)


def cluster_plain(rc: RedisCluster, nb: Callable[[], list[Price]]) -> Callable[[], Any]:
    def run() -> Any:
        pipe = _redispy.cluster_pipeline(rc)
        for p in nb():
            payload = p.to_json()
            _redispy.queue(pipe, "SET", "price:" + p.symbol, payload, "PX", "300000")
            _redispy.queue(pipe, "SPUBLISH", "price.updated." + p.symbol, payload)
        return pipe.execute()

    return run


def cluster_per_key(rc: RedisCluster, sha: str, nb: Callable[[], list[Price]]) -> Callable[[], Any]:
    def run() -> Any:
        batch = nb()
        payloads = [p.to_json() for p in batch]
        pipe = _redispy.cluster_pipeline(rc)
        for p, payload in zip(batch, payloads, strict=True):
            _redispy.queue(
                pipe,
                "EVALSHA",
                sha,
                1,
                "price:" + p.symbol,
                "300000",
                "0",
                "6",
                "price.updated.",
                payload,
                p.timestamp,
            )
        flags = pipe.execute()
        pipe = _redispy.cluster_pipeline(rc)
        for p, payload, flag in zip(batch, payloads, flags, strict=True):
            if flag == b"1":
                _redispy.queue(pipe, "SPUBLISH", "price.updated." + p.symbol, payload)
        return pipe.execute()

    return run


def redis_version() -> str:
    import subprocess

    out = subprocess.run(["redis-server", "--version"], capture_output=True, check=False)
    return out.stdout.decode().split()[2] if out.returncode == 0 else "?"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per variant and size")
    parser.add_argument("--cluster", action="store_true", help="also benchmark a cluster")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, redis-py {redis.__version__}")
    bench_standalone(args.seconds)
    if args.cluster:
        bench_cluster(args.seconds)


if __name__ == "__main__":
    main(sys.argv[1:])
