"""RedisPriceCache on a standalone server: what the contract suite cannot see from outside."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import redis.retry

from adapters.redis import RedisConnection, RedisPriceCache, RedisUnavailable, open_redis_store
from adapters.redis.connection import redact_url
from adapters.redis.event_bus import RedisEventBus
from adapters.redis.price_cache import AppliedPrices
from domain.errors import FatalStoreError
from ports.event_bus import EventBus
from ports.price_cache import PriceCache
from tests.adapters.redis.helpers import T0, in_thread, price, unique
from tests.conditions import receive
from tests.ports import refused_port
from tests.redis_servers import RedisServer, start_server

pytestmark = pytest.mark.redis


def test_adapters_satisfy_the_ports(redis_server: RedisServer) -> None:
    conn = RedisConnection(redis_server.url)
    cache: PriceCache = RedisPriceCache(conn)  # mypy checks the Protocols here
    bus: EventBus = RedisEventBus(conn)
    assert cache.ttl_s == 300.0
    assert isinstance(bus, RedisEventBus) and isinstance(cache, RedisPriceCache)
    conn.close()


async def test_put_and_publish_is_one_server_call(redis_server: RedisServer) -> None:
    """With publish=True, a batch costs one EVALSHA (with the PUBLISHes inside) and the
    bus publishes nothing more."""
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        batch = [price(unique(), T0 + i) for i in range(50)]
        await store.cache.put_many(batch[:1])  # script loaded
        with redis_server.client() as c:
            await in_thread(lambda: c.config_resetstat())
            applied = await store.cache.put_many(batch)
            await store.bus.publish_many(applied)
            stats = await in_thread(lambda: c.info("commandstats"))
        assert isinstance(stats, dict)
        assert stats["cmdstat_evalsha"]["calls"] == 1
        # The script's own SET/PUBLISH are counted too: 50 publishes = none by the bus.
        assert stats["cmdstat_publish"]["calls"] == 50
        assert isinstance(applied, AppliedPrices) and applied.published
        assert store.bus.skipped_already_published == 50


async def test_bus_reuses_the_cache_encoding_when_it_publishes(redis_server: RedisServer) -> None:
    async with open_redis_store(
        redis_server.url, publish_in_cache=False, require_connection=True
    ) as store:
        s = unique()
        async with store.bus.subscribe([s]) as prices:
            applied = await store.cache.put_many([price(s, T0)])
            assert isinstance(applied, AppliedPrices) and not applied.published
            assert applied.payloads == [price(s, T0).to_json()]
            await store.bus.publish_many(applied)
            assert await receive(prices, 1) == [price(s, T0)]


async def test_noscript_after_script_flush_reloads_transparently(
    redis_server: RedisServer,
) -> None:
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        s = unique()
        await store.cache.put_many([price(s, T0)])
        with redis_server.client() as c:
            await in_thread(lambda: c.script_flush())
            sha = store.cache._sha
            assert await in_thread(lambda: c.script_exists(sha)) == [False]
            applied = await store.cache.put_many([price(s, T0 + 1)])
            assert await in_thread(lambda: c.script_exists(sha)) == [True]
        assert list(applied) == [price(s, T0 + 1)]


async def test_malformed_cached_value_is_absent_and_then_overwritten(
    redis_server: RedisServer,
) -> None:
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        bad, wrong_type, ok = unique("BAD"), unique("HASH"), unique()
        with redis_server.client() as c:
            await in_thread(lambda: c.set("price:" + bad, b"{not json"))
            await in_thread(lambda: c.hset("price:" + wrong_type, "a", "b"))
        await store.cache.put_many([price(ok, T0)])
        got = await store.cache.get_many([bad, ok])
        assert got == {ok: price(ok, T0)}
        assert store.cache.malformed == 1
        # A value without a readable timestamp (or of another type) never blocks new writes.
        fixed = [price(bad, T0 - 10), price(wrong_type, T0 - 10)]
        assert list(await store.cache.put_many(fixed)) == fixed
        assert await store.cache.get_many([bad, wrong_type]) == {
            bad: fixed[0],
            wrong_type: fixed[1],
        }


async def test_ttl_below_a_second_and_configurable_prefixes(redis_server: RedisServer) -> None:
    async with open_redis_store(
        redis_server.url,
        ttl_s=1.5,
        key_prefix="px:",
        channel_prefix="px.updated.",
        require_connection=True,
    ) as store:
        s = unique()
        async with store.bus.subscribe([s]) as prices:
            await store.cache.put_many([price(s, T0)])
            assert await receive(prices, 1) == [price(s, T0)]
        with redis_server.client() as c:
            pttl = await in_thread(lambda: c.pttl("px:" + s))
            assert await in_thread(lambda: c.exists("price:" + s)) == 0
        assert isinstance(pttl, int) and 1000 < pttl <= 1500


async def test_password_in_url_works_and_is_never_shown(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra_args=("--requirepass", "s3cret-pw"))
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/2"
        async with open_redis_store(url, require_connection=True) as store:
            s = unique()
            await store.cache.put_many([price(s, T0)])
            assert await store.cache.get(s) == price(s, T0)
            assert "s3cret" not in repr(store.connection)
            assert "***" in store.connection.redacted_url
        with redis.Redis(port=server.port, password="s3cret-pw", db=2) as c:
            assert await in_thread(lambda: c.exists("price:" + s)) == 1  # db from the URL
        bad = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(FatalStoreError) as info:  # a setting, not an outage
            async with open_redis_store(bad, require_connection=True):
                pass
        assert "wrong" not in str(info.value)
        assert str(info.value).endswith("check REDIS_URL")
    finally:
        server.stop()


def test_redact_url() -> None:
    assert redact_url("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


async def test_errors_are_builtin_connection_errors_with_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused connection raises at once: redis-py's retry takes no backoff pause (its
    default would sleep between up to 3 more attempts and hide the outage for seconds)."""
    slept: list[float] = []
    monkeypatch.setattr(redis.retry, "sleep", slept.append)  # the retry loop's only pause
    with refused_port() as port:
        conn = RedisConnection(f"redis://127.0.0.1:{port}/0")
        cache = RedisPriceCache(conn)
        with pytest.raises(ConnectionError) as info:
            await cache.put_many([price("X", T0)])
    assert isinstance(info.value, RedisUnavailable)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert slept == []
    conn.close()


async def test_no_double_publish_when_cache_and_bus_are_built_apart(
    redis_server: RedisServer,
) -> None:
    """Wired from two connections to the same Redis, the bus still sees the batch as
    published by the cache."""
    conn_a, conn_b = RedisConnection(redis_server.url), RedisConnection(redis_server.url)
    cache = RedisPriceCache(conn_a, publish=True)
    bus = RedisEventBus(conn_b)
    s = unique()
    marker = price(s, T0 + 99)
    try:
        async with bus.subscribe([s]) as prices:
            for batch in ([price(s, T0)], [price(s, T0 + 1)], [marker]):
                await bus.publish_many(await cache.put_many(batch))
            got = await receive(prices, 3)
            assert got == [price(s, T0), price(s, T0 + 1), marker]
            await bus.publish_many([price(s, T0 + 100)])  # a plain list is published
            assert await receive(prices, 1) == [price(s, T0 + 100)]
    finally:
        conn_a.close()
        conn_b.close()


async def test_a_future_stamped_value_written_straight_into_redis_is_replaced(
    redis_server: RedisServer,
) -> None:
    """Defect 4, the Redis guard: a value stamped in 2099 SET by hand (another writer, a
    restore, a bug; here not even in our fixed-width form) no longer freezes the symbol:
    the next real price replaces it. A value stamped within the skew still orders."""
    s = unique()
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        with redis_server.client() as c:
            hand = (
                f'{{"symbol":"{s}","bid":1,"ask":2,"mid":1.5,'
                '"timestamp":"2099-01-01T00:00:00Z","exchange":"IEX"}'
            )
            await in_thread(lambda: c.set(f"price:{s}", hand))
            real = price(s, T0 + 1)
            assert list(await store.cache.put_many([real])) == [real]
            assert await in_thread(lambda: c.get(f"price:{s}")) == real.to_json()
            # Within the skew the guard still holds: 1 s ahead of now orders the next write.
            soon = price(s, time.time_ns() + 1_000_000_000)
            assert list(await store.cache.put_many([soon])) == [soon]
            assert list(await store.cache.put_many([price(s, T0 + 2)])) == []
