"""RedisEventBus on a standalone server: ordering under load, patterns, bounds, threads."""

from __future__ import annotations

import threading
from typing import cast

import anyio
import pytest

from adapters.inbox import Inbox
from adapters.redis import RedisOptions, open_redis_store
from adapters.redis.pubsub import POLL_S
from domain.price import Price
from tests.adapters.redis.helpers import T0, in_thread, price, unique
from tests.conditions import receive, wait_for
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis


def pubsub_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redis-pubsub-")]


async def test_every_update_arrives_in_order_per_symbol(redis_server: RedisServer) -> None:
    """20 symbols x 200 updates, written batch after batch as the application does."""
    symbols = [unique("ORD") for _ in range(20)]
    updates = 200
    async with (
        open_redis_store(redis_server.url, require_connection=True) as store,
        store.bus.subscribe(symbols) as prices,
    ):
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                for n in range(updates):
                    batch = [
                        price(s, T0 + n * 1000 + i, 100.0 + n / 100, 100.5 + n / 100)
                        for i, s in enumerate(symbols)
                    ]
                    applied = await store.cache.put_many(batch)
                    await store.bus.publish_many(applied)
                    if n % 20 == 0:
                        await anyio.sleep(0.002)  # a moderate, bursty rate

            tg.start_soon(writer)
            got = await receive(prices, len(symbols) * updates, timeout_s=20)
        stats = cast(Inbox[Price], prices).stats
    assert stats.dropped == 0 and stats.malformed == 0
    for i, s in enumerate(symbols):
        mine = [p.ts_event_ns for p in got if p.symbol == s]
        assert mine == [T0 + n * 1000 + i for n in range(updates)]


async def test_pattern_subscription(redis_server: RedisServer) -> None:
    stem = unique("PAT")
    async with (
        open_redis_store(redis_server.url, require_connection=True) as store,
        store.bus.subscribe(pattern=f"{stem}.*") as prices,
    ):
        batch = [price(f"{stem}.A", T0), price(f"{stem}X", T0), price(f"{stem}.B", T0)]
        await store.cache.put_many(batch)
        got = await receive(prices, 2)
    assert [p.symbol for p in got] == [f"{stem}.A", f"{stem}.B"]


async def test_slow_consumer_loses_the_oldest_counted_never_grows(
    redis_server: RedisServer,
) -> None:
    async with open_redis_store(
        redis_server.url, require_connection=True, subscriber_buffer=5
    ) as store:
        s = unique("SLOW")
        async with store.bus.subscribe([s]) as prices:
            inbox = cast(Inbox[Price], prices)
            await store.cache.put_many([price(s, T0 + i) for i in range(20)])
            await wait_for(lambda: inbox.stats.received == 20)
            got = await receive(prices, 5)
        assert inbox.stats.dropped == 15
        assert [p.ts_event_ns for p in got] == [T0 + i for i in range(15, 20)]
        assert store.bus.dropped == 15


async def test_malformed_messages_are_skipped_and_counted(redis_server: RedisServer) -> None:
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        s = unique()
        async with store.bus.subscribe([s]) as prices:
            with redis_server.client() as c:
                await in_thread(lambda: c.publish("price.updated." + s, b"garbage"))
                await in_thread(lambda: c.publish("price.updated." + s, b'{"symbol":1}'))
            await store.cache.put_many([price(s, T0)])
            assert await receive(prices, 1) == [price(s, T0)]
        assert cast(Inbox[Price], prices).stats.malformed == 2
        assert store.bus.malformed == 2


async def test_leaving_the_context_stops_the_thread_and_connection(
    redis_server: RedisServer,
) -> None:
    before = len(pubsub_threads())
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        async with store.bus.subscribe([unique()], pattern="NOPE*") as prices:
            assert len(pubsub_threads()) == before + 1
            with redis_server.client() as c:
                subs = await in_thread(lambda: c.pubsub_numpat())
            assert isinstance(subs, int) and subs >= 1
        assert len(pubsub_threads()) == before
        with pytest.raises(StopAsyncIteration):
            await prices.__anext__()


async def test_cancelled_consumer_stops_promptly(redis_server: RedisServer) -> None:
    """The pump thread sees the stop flag at its next poll (every POLL_S): leaving does not
    wait for the join's deadline (socket timeout + 2 POLL_S, made 30 s here so that the two
    cannot be confused under load), and no thread is left behind."""
    before = len(pubsub_threads())
    options = RedisOptions(socket_timeout_s=30.0)
    async with open_redis_store(
        redis_server.url, require_connection=True, options=options
    ) as store:
        start = anyio.current_time()
        with anyio.move_on_after(0.1):
            async with store.bus.subscribe([unique()]) as prices:
                async for _ in prices:
                    pass
        assert anyio.current_time() - start < 25 * POLL_S  # far below the 30 s deadline
        assert len(pubsub_threads()) == before  # stopped, not abandoned by the join


async def test_listen_and_notify_with_plain_pubsub(redis_server: RedisServer) -> None:
    async with (
        open_redis_store(redis_server.url, require_connection=True) as store,
        store.bus.listen("positions.changed") as signals,
    ):
        with redis_server.client() as c:  # another service's plain PUBLISH
            await in_thread(lambda: c.publish("positions.changed", b"from-elsewhere"))
        with anyio.fail_after(5):
            assert await signals.__anext__() == b"from-elsewhere"


async def test_body_error_propagates_alone(redis_server: RedisServer) -> None:
    """An error in the consumer's body leaves as itself, not inside an ExceptionGroup."""
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        with pytest.raises(KeyError):
            async with store.bus.subscribe([unique()]):
                raise KeyError("mine")
