"""A checked write that Redis refuses half-way publishes nothing (found by the chaos soak,
``mds chaos --seed 3 --only redis.oom``: under OOM, prices were published older after newer)."""

from __future__ import annotations

import pytest

from adapters.redis import RedisUnavailable, open_redis_store
from tests.adapters.redis.helpers import T0, in_thread, price, unique
from tests.conditions import receive
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis


async def test_a_write_refused_for_memory_publishes_nothing_and_the_retry_publishes_once(
    own_redis_server: RedisServer,
) -> None:
    """Redis at maxmemory with noeviction refuses the script's SET. The batch is an outage and
    NOTHING is published (was: every price published first, then the SET refused, so
    subscribers got prices that were never cached and the writer's retry published them again,
    older after newer). Once memory is back, the retry caches and publishes each price once,
    in order."""
    async with open_redis_store(own_redis_server.url, require_connection=True) as store:
        s = unique()
        batch = [price(s, T0 + i) for i in range(5)]
        await store.cache.put_many([price(unique(), T0)])  # the script is loaded
        with own_redis_server.client() as c:
            await in_thread(lambda: c.config_set("maxmemory-policy", "noeviction"))
            await in_thread(lambda: c.config_set("maxmemory", "1"))
            await in_thread(c.config_resetstat)
            with pytest.raises(RedisUnavailable):
                await store.cache.put_many(batch)
            stats = await in_thread(lambda: c.info("commandstats"))
            assert isinstance(stats, dict)
            assert stats.get("cmdstat_publish", {}).get("calls", 0) == 0
            assert await in_thread(lambda: c.get(f"price:{s}")) is None
            await in_thread(lambda: c.config_set("maxmemory", "0"))
        async with store.bus.subscribe([s]) as prices:
            await store.cache.put_many(batch)
            assert await receive(prices, 5) == batch
