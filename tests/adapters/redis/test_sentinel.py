"""Sentinel mode: the master is found through a sentinel; writes, reads and pub/sub work."""

from __future__ import annotations

import anyio
import pytest
import redis

from adapters.redis import PriceReader, RedisMode, open_redis_store
from tests.adapters.redis.helpers import T0, in_thread, price, unique
from tests.conditions import receive
from tests.redis_servers import RedisSentinelHandle

pytestmark = pytest.mark.redis


async def test_store_and_reader_through_sentinel(redis_sentinel: RedisSentinelHandle) -> None:
    s = unique("SEN")
    url = "redis://ignored-in-sentinel-mode:1/3"  # db (and credentials, TLS) come from the URL
    async with open_redis_store(
        url,
        mode=RedisMode.SENTINEL,
        sentinels=redis_sentinel.sentinels,
        master_name=redis_sentinel.master_name,
        require_connection=True,
    ) as store:
        async with store.bus.subscribe([s]) as prices:
            applied = await store.cache.put_many([price(s, T0)])
            await store.bus.publish_many(applied)
            assert await receive(prices, 1) == [price(s, T0)]
        assert await store.cache.get(s) == price(s, T0)
    with redis.Redis(port=redis_sentinel.master.port, db=3) as c:
        assert await in_thread(lambda: c.get("price:" + s)) == price(s, T0).to_json()
    with PriceReader(
        url,
        mode=RedisMode.SENTINEL,
        sentinels=redis_sentinel.sentinels,
        master_name=redis_sentinel.master_name,
    ) as reader:
        aged = await anyio.to_thread.run_sync(reader.get_sync, s)
    assert aged is not None and aged.price == price(s, T0)


def test_sentinel_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="sentinel"):
        PriceReader("redis://x:1/0", mode=RedisMode.SENTINEL, sentinels=[], master_name="m")
    with pytest.raises(ValueError, match="host:port"):
        PriceReader("redis://x:1/0", mode=RedisMode.SENTINEL, sentinels=["nope"], master_name="m")


async def test_sentinel_without_url_and_with_host_port_pairs(
    redis_sentinel: RedisSentinelHandle,
) -> None:
    """The settings' shapes: REDIS_URL unset, sentinels as (host, port) pairs."""
    host, port = redis_sentinel.sentinels[0].split(":")
    s = unique("SEN")
    async with open_redis_store(
        None,
        mode="sentinel",
        sentinels=[(host, int(port))],
        master_name=redis_sentinel.master_name,
        require_connection=True,
    ) as store:
        await store.cache.put_many([price(s, T0)])
        assert await store.cache.get(s) == price(s, T0)


def test_mode_names() -> None:
    assert RedisMode("single") is RedisMode.STANDALONE
    assert RedisMode("cluster") is RedisMode.CLUSTER
    with pytest.raises(ValueError):
        RedisMode("memory")
    with pytest.raises(ValueError, match="URL is required"):
        PriceReader(None)
