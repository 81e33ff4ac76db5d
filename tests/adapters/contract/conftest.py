"""One contract suite for PriceCache + EventBus, run against every implementation.

``store`` is parametrized: the in-memory fakes (``adapters/memory``, with a hand-driven clock),
and the Redis adapters on a redis-server this session starts on a free port, in both wirings
(the cache publishes inside its write; or the bus publishes). What differs between them (how
time passes, how to look at the raw stored bytes) sits behind :class:`StoreUnderTest`, so each
test states the contract once.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
import pytest

from adapters.memory.event_bus import InMemoryEventBus
from adapters.memory.price_cache import InMemoryPriceCache
from adapters.redis.store import open_redis_store
from domain.price import Price
from ports.event_bus import EventBus
from ports.price_cache import PriceCache
from tests.redis_servers import RedisServer, redis_server  # noqa: F401  (session fixture)

T0 = 1_700_000_000 * 1_000_000_000
_symbols = itertools.count()


class ManualClock:
    """A clock the test moves by hand (the in-memory cache's TTL runs on it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def now_ns(self) -> int:
        return T0 + int(self.t * 1_000_000_000)


@dataclass(eq=False)
class StoreUnderTest:
    name: str
    cache: PriceCache
    bus: EventBus
    make_cache: Callable[[float], Awaitable[PriceCache]]
    let_time_pass: Callable[[PriceCache, str, float], Awaitable[float]]
    raw: Callable[[str], Awaitable[bytes | None]]
    remaining_ttl_s: Callable[[str], Awaitable[float | None]]
    make_bus: Callable[[int], Awaitable[EventBus]]

    @staticmethod
    def symbol(stem: str = "C") -> str:
        """A symbol no other test uses (the Redis server is shared by the session)."""
        return f"{stem}{next(_symbols)}"


def price(symbol: str, ts_ns: int, bid: float = 150.25, ask: float = 150.27) -> Price:
    return Price(symbol, bid, ask, (bid + ask) / 2, ts_ns, "IEX", "V", "V")


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis-cache-publishes", marks=pytest.mark.redis),
        pytest.param("redis-bus-publishes", marks=pytest.mark.redis),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    kind: str = request.param
    if kind == "memory":
        yield _memory_store()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with AsyncExitStack() as stack:
        main = await stack.enter_async_context(
            open_redis_store(
                server.url,
                publish_in_cache=kind == "redis-cache-publishes",
                require_connection=True,
            )
        )

        async def make_cache(ttl_s: float) -> PriceCache:
            other = await stack.enter_async_context(
                open_redis_store(server.url, ttl_s=ttl_s, require_connection=True)
            )
            return other.cache

        async def make_bus(subscriber_buffer: int) -> EventBus:
            other = await stack.enter_async_context(
                open_redis_store(
                    server.url, subscriber_buffer=subscriber_buffer, require_connection=True
                )
            )
            return other.bus

        async def let_time_pass(cache: PriceCache, symbol: str, seconds: float) -> float:
            """Real time must pass for Redis: wait (polling, bounded) until the key is gone."""
            start = anyio.current_time()
            with anyio.fail_after(seconds + 3):
                while True:
                    if await cache.get(symbol) is None:
                        return anyio.current_time() - start
                    await anyio.sleep(0.02)

        def sync_client_call(fn: Callable[..., object], *args: object) -> Awaitable[object]:
            async def run() -> object:
                def call() -> object:
                    with server.client() as c:
                        return fn(c, *args)

                return await anyio.to_thread.run_sync(call)

            return run()

        async def raw(symbol: str) -> bytes | None:
            value = await sync_client_call(lambda c, k: c.get(k), "price:" + symbol)
            assert value is None or isinstance(value, bytes)
            return value

        async def remaining_ttl_s(symbol: str) -> float | None:
            ms = await sync_client_call(lambda c, k: c.pttl(k), "price:" + symbol)
            assert isinstance(ms, int)
            return None if ms < 0 else ms / 1000

        yield StoreUnderTest(
            kind, main.cache, main.bus, make_cache, let_time_pass, raw, remaining_ttl_s, make_bus
        )


def _memory_store() -> StoreUnderTest:
    clock = ManualClock()
    cache = InMemoryPriceCache(clock, ttl_s=300.0)
    caches = {id(cache): cache}

    async def make_cache(ttl_s: float) -> PriceCache:
        other = InMemoryPriceCache(clock, ttl_s=ttl_s)
        caches[id(other)] = other
        return other

    async def let_time_pass(c: PriceCache, symbol: str, seconds: float) -> float:
        clock.t += seconds
        return seconds

    async def raw(symbol: str) -> bytes | None:
        stored = cache.values.get(symbol)
        return None if stored is None else stored.to_json()

    async def remaining_ttl_s(symbol: str) -> float | None:
        expires = cache.expires_at.get(symbol)
        return None if expires is None else expires - clock.t

    async def make_bus(subscriber_buffer: int) -> EventBus:
        return InMemoryEventBus(buffer=subscriber_buffer)

    return StoreUnderTest(
        "memory",
        cache,
        InMemoryEventBus(),
        make_cache,
        let_time_pass,
        raw,
        remaining_ttl_s,
        make_bus,
    )
