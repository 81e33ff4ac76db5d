"""Cluster mode on a three-master cluster: keys spread over nodes, checked writes per node,
sharded pub/sub for prices, plain pub/sub for signals, the reader."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
import redis

from adapters.redis import PriceReader, RedisMode, open_redis_store
from tests.adapters.redis.helpers import T0, in_thread, price, unique
from tests.conditions import receive
from tests.redis_servers import RedisClusterHandle, RedisServer

pytestmark = pytest.mark.redis


def publish_plain(node: RedisServer, channel: str, payload: bytes) -> None:
    with node.client() as c:
        c.publish(channel, payload)


def keys_per_node(cluster: RedisClusterHandle, pattern: str) -> list[int]:
    counts = []
    for node in cluster.nodes:
        with node.client() as c:
            counts.append(len(c.keys(pattern)))
    return counts


async def test_checked_writes_spread_over_nodes(redis_cluster: RedisClusterHandle) -> None:
    stem = unique("CL")
    symbols = [f"{stem}S{i}" for i in range(30)]
    async with open_redis_store(
        redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
    ) as store:
        batch = [price(s, T0 + 10) for s in symbols]
        assert list(await store.cache.put_many(batch)) == batch
        counts = await in_thread(lambda: keys_per_node(redis_cluster, f"price:{stem}S*"))
        assert isinstance(counts, list)
        assert sum(counts) == 30
        assert sum(1 for n in counts if n > 0) >= 2, counts  # no hash tags: slots spread

        # Latest-wins holds per key on every node.
        older = [price(s, T0 + 5) for s in symbols[:10]]
        newer = [price(s, T0 + 20) for s in symbols[10:20]]
        assert list(await store.cache.put_many(older + newer)) == newer
        got = await store.cache.get_many(symbols)
        assert got == {p.symbol: p for p in batch[:10] + newer + batch[20:]}

        # The stored bytes are the contract JSON; the TTL is set.
        with redis.RedisCluster.from_url(redis_cluster.url) as rc:
            raw = await in_thread(lambda: rc.get(f"price:{symbols[0]}"))
            ttl = await in_thread(lambda: rc.ttl(f"price:{symbols[0]}"))
        assert raw == batch[0].to_json()
        assert isinstance(ttl, int) and 298 < ttl <= 300

        # A value stamped in the future (written by anything) is replaceable on every node.
        future = [price(s, 4_070_908_800 * 1_000_000_000) for s in symbols]
        assert list(await store.cache.put_many(future)) == future
        real = [price(s, T0 + 30) for s in symbols]
        assert list(await store.cache.put_many(real)) == real


async def test_sharded_publish_reaches_subscribers_in_order(
    redis_cluster: RedisClusterHandle,
) -> None:
    symbols = [unique("SH") for _ in range(12)]
    async with (
        open_redis_store(
            redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
        ) as store,
        store.bus.subscribe(symbols) as prices,
    ):
        for n in range(30):
            applied = await store.cache.put_many([price(s, T0 + n) for s in symbols])
            await store.bus.publish_many(applied)  # no-op: the cache published
        got = await receive(prices, 12 * 30)
    for s in symbols:
        assert [p.ts_event_ns for p in got if p.symbol == s] == [T0 + n for n in range(30)]


async def test_bus_alone_spublishes(redis_cluster: RedisClusterHandle) -> None:
    symbols = [unique("BA") for _ in range(6)]
    async with (
        open_redis_store(
            redis_cluster.url,
            mode=RedisMode.CLUSTER,
            publish_in_cache=False,
            require_connection=True,
        ) as store,
        store.bus.subscribe(symbols) as prices,
    ):
        applied = await store.cache.put_many([price(s, T0) for s in symbols])
        await store.bus.publish_many(applied)
        got = await receive(prices, 6)
    assert sorted(p.symbol for p in got) == sorted(symbols)


async def test_reader_in_cluster_mode_gets_and_receives(redis_cluster: RedisClusterHandle) -> None:
    symbols = [unique("RC") for _ in range(5)]
    now = T0 + 20 * 1_000_000_000
    async with (
        open_redis_store(
            redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
        ) as store,
        PriceReader(redis_cluster.url, cluster=True, max_age_s=15, now_ns=lambda: now) as reader,
    ):
        async with reader.subscribe(symbols=symbols) as prices:
            await store.cache.put_many([price(s, T0 + i * 10**10) for i, s in enumerate(symbols)])
            got = await receive(prices, 5)
        assert sorted(p.symbol for p in got) == sorted(symbols)
        aged = await reader.get_many([*symbols, "NOT-THERE"])
        assert set(aged) == set(symbols)
        # Ages 20, 10, 0, -10, -20 s: the last two are stamped more than the future skew (5 s)
        # ahead of the reader's clock, so they are stale, not "fresh with a negative age".
        assert [aged[s].stale for s in symbols] == [True, False, False, True, True]
        assert aged[symbols[3]].age_s == pytest.approx(-10.0)
        assert aged[symbols[0]].age_s == pytest.approx(20.0)


async def test_pattern_in_cluster_resolves_from_cache_and_rescans(
    redis_cluster: RedisClusterHandle,
) -> None:
    stem = unique("CP")
    early, late = f"{stem}A", f"{stem}B"
    async with open_redis_store(
        redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
    ) as store:
        await store.cache.put_many([price(early, T0)])
        store.bus._rescan_s = 0.1
        named = f"{stem}N"  # matches the pattern, has no key yet: subscribed because named
        async with store.bus.subscribe([named], pattern=f"{stem}*") as prices:
            await store.cache.put_many([price(early, T0 + 1), price(named, T0)])
            got = await receive(prices, 2)
            assert sorted(got) == sorted([price(early, T0 + 1), price(named, T0)])
            # A symbol that appears later is picked up by the next re-scan.
            await store.cache.put_many([price(late, T0)])
            n = 1
            with anyio.fail_after(5):
                while True:
                    n += 1
                    await store.cache.put_many([price(late, T0 + n)])
                    with anyio.move_on_after(0.05):
                        update = await prices.__anext__()
                        assert update.symbol == late
                        break


async def test_noscript_on_a_node_reloads(redis_cluster: RedisClusterHandle) -> None:
    symbols = [unique("NS") for _ in range(10)]
    async with open_redis_store(
        redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
    ) as store:
        await store.cache.put_many([price(s, T0) for s in symbols])
        for node in redis_cluster.nodes:
            with node.client() as c:
                await in_thread(c.script_flush)
        batch = [price(s, T0 + 1) for s in symbols]
        assert list(await store.cache.put_many(batch)) == batch


async def test_signals_use_plain_pubsub_in_cluster(redis_cluster: RedisClusterHandle) -> None:
    async with (
        open_redis_store(
            redis_cluster.url, mode=RedisMode.CLUSTER, require_connection=True
        ) as store,
        store.bus.listen("positions.changed") as signals,
    ):
        # A plain PUBLISH on any node reaches a subscriber on any node.
        for node in redis_cluster.nodes:
            await in_thread(partial(publish_plain, node, "positions.changed", b"n"))
        await store.bus.notify("positions.changed", b"bus")
        got: list[bytes] = []
        with anyio.fail_after(5):
            async for payload in signals:
                got.append(payload)
                if len(got) == 4:
                    break
    assert got == [b"n", b"n", b"n", b"bus"]
