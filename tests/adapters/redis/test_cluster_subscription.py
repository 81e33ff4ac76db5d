"""A cluster subscription survives one shard's trouble (issue 11, "one shard's trouble should
touch only its symbols"): a dead master, or a subscribed channel's slot moving, re-opens only
that shard's channels; their symbols get a :class:`SubscriptionGap` (re-read the cache) once
they are subscribed again, every other symbol keeps flowing on the same iterator, no gap.

Before: the whole subscription ended with ``ConnectionError`` (every symbol re-subscribed and
re-read the cache for one shard's trouble)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress

import anyio
import pytest

from adapters.redis import PriceReader, RedisConnection, RedisEventBus, RedisMode, RedisPriceCache
from domain.price import Price
from ports.event_bus import SubscriptionGap
from tests.adapters.redis.helpers import T0, price, unique
from tests.adapters.redis.test_cluster_faults import keyslot, node_id, node_of
from tests.conditions import wait_for
from tests.redis_servers import RedisClusterHandle, RedisServer

pytestmark = pytest.mark.redis


def channel(symbol: str) -> str:
    return f"price.updated.{symbol}"


def channels_on_every_node(cluster: RedisClusterHandle, stem: str, each: int) -> list[str]:
    """``each`` symbols whose price CHANNEL lives on each master (3 * each in all)."""
    found: dict[int, list[str]] = {n.port: [] for n in cluster.nodes}
    i = 0
    while any(len(v) < each for v in found.values()):
        symbol = f"{stem}{i}"
        port = node_of(cluster, channel(symbol)).port
        if len(found[port]) < each:
            found[port].append(symbol)
        i += 1
    return [s for v in found.values() for s in v]


class Consumer:
    """Reads a subscription as a gap-aware consumer does: a :class:`SubscriptionGap` is noted
    (where it fell in the stream) and reading goes on with the same iterator."""

    def __init__(self) -> None:
        self.got: list[Price] = []
        self.gaps: list[tuple[int, frozenset[str]]] = []

    async def run(self, prices: AsyncIterator[Price]) -> None:
        while True:
            try:
                async for p in prices:
                    self.got.append(p)
                return
            except SubscriptionGap as gap:
                self.gaps.append((len(self.got), gap.symbols))

    def seen(self, symbol: str, ts: int) -> bool:
        return any(p.symbol == symbol and p.ts_event_ns == ts for p in self.got)

    def gapped(self) -> set[str]:
        return {s for _, symbols in self.gaps for s in symbols}


async def publish_until_seen(
    bus: RedisEventBus, consumer: Consumer, symbols: list[str], ts: int, timeout_s: float = 20.0
) -> None:
    """Publish ``ts`` for ``symbols`` until the consumer has received it for each (a publish
    to a shard that is moving or down fails or goes nowhere: retried)."""

    def all_seen() -> bool:
        return all(consumer.seen(s, ts) for s in symbols)

    with anyio.fail_after(timeout_s):
        while not all_seen():
            with suppress(ConnectionError):
                await bus.publish_many([price(s, ts) for s in symbols if not consumer.seen(s, ts)])
            with suppress(TimeoutError):
                await wait_for(all_seen, timeout_s=0.3)


@pytest.mark.parametrize("by", ["symbols", "pattern"])
async def test_a_dead_master_gaps_only_its_symbols_the_others_keep_flowing(
    own_redis_cluster: RedisClusterHandle, by: str
) -> None:
    """By pattern, too: the symbols resolved from the cache at entry, re-scans on the shards
    that stayed up go on (a re-scan that cannot reach the dead node is skipped, not fatal)."""
    cluster = own_redis_cluster
    for node in cluster.nodes:
        with node.client() as c:
            c.config_set("cluster-require-full-coverage", "no")
    stem = unique("SHK") + "X"
    symbols = channels_on_every_node(cluster, stem, 2)
    dead = cluster.nodes[2]
    on_dead = {s for s in symbols if node_of(cluster, channel(s)).port == dead.port}
    alive = [s for s in symbols if s not in on_dead]
    conn = RedisConnection(cluster.url, mode=RedisMode.CLUSTER)
    bus = RedisEventBus(conn, cluster_rescan_s=0.2)
    consumer = Consumer()
    if by == "pattern":  # a cluster pattern resolves to the symbols whose keys exist
        await RedisPriceCache(conn).put_many([price(s, T0) for s in symbols])
    try:
        async with (
            PriceReader(cluster.url, cluster=True) as reader,
            (
                reader.subscribe(symbols) if by == "symbols" else bus.subscribe(pattern=f"{stem}*")
            ) as prices,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(consumer.run, prices)
            await publish_until_seen(bus, consumer, symbols, T0 + 1)

            dead.kill9()
            killed_at = anyio.current_time()
            # The other shards' symbols keep flowing on the same subscription, no gap, for a
            # second (five re-scan periods of the pattern case: a window, not a wait).
            n = 2
            while n < 6 or anyio.current_time() - killed_at < 1.0:
                await publish_until_seen(bus, consumer, alive, T0 + n)
                n += 1
            assert consumer.gaps == []

            dead.start()  # rejoins with its nodes.conf: its slots are served again
            await wait_for(lambda: consumer.gapped() == on_dead, timeout_s=20)
            await publish_until_seen(bus, consumer, symbols, T0 + 10_000)
            tg.cancel_scope.cancel()
    finally:
        conn.close()
    # Exactly the dead shard's symbols, once; never the others'.
    assert sorted(consumer.gapped()) == sorted(on_dead)
    assert len(consumer.gaps) == 1
    # In order per symbol, nothing of the alive symbols lost.
    for s in alive:
        assert [p.ts_event_ns for p in consumer.got if p.symbol == s] == sorted(
            {p.ts_event_ns for p in consumer.got if p.symbol == s}
        )
        assert {T0 + n for n in (1, 2, 3, 4, 5, 10_000)} <= {
            p.ts_event_ns for p in consumer.got if p.symbol == s
        }


def move_slot(cluster: RedisClusterHandle, slot: int, source: RedisServer) -> RedisServer:
    """Give ``slot`` (no keys in it) to another master, as the last step of a reshard does."""
    target = next(n for n in cluster.nodes if n is not source)
    target_id, source_id = node_id(target), node_id(source)
    with target.client() as t, source.client() as s:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    for node in (target, source, *cluster.nodes):
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return target


async def test_a_moved_channel_gaps_only_its_symbol(
    own_redis_cluster: RedisClusterHandle,
) -> None:
    cluster = own_redis_cluster
    symbols = channels_on_every_node(cluster, unique("MOV"), 2)
    moving = symbols[0]
    source = node_of(cluster, channel(moving))
    conn = RedisConnection(cluster.url, mode=RedisMode.CLUSTER)
    bus = RedisEventBus(conn)
    consumer = Consumer()
    others = [s for s in symbols if s != moving]
    try:
        async with (
            PriceReader(cluster.url, cluster=True) as reader,
            reader.subscribe(symbols) as prices,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(consumer.run, prices)
            await publish_until_seen(bus, consumer, symbols, T0 + 1)

            target = move_slot(cluster, keyslot(channel(moving)), source)
            await wait_for(lambda: consumer.gapped() == {moving}, timeout_s=10)
            assert node_of(cluster, channel(moving)).port == target.port
            for n in range(2, 5):
                await publish_until_seen(bus, consumer, symbols, T0 + n)
            tg.cancel_scope.cancel()
    finally:
        conn.close()
    assert consumer.gaps and all(symbols == {moving} for _, symbols in consumer.gaps)
    for s in others:
        assert {T0 + n for n in range(1, 5)} <= {
            p.ts_event_ns for p in consumer.got if p.symbol == s
        }
