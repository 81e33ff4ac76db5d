"""PriceReader, the consumer services' API: ages and stale flags, sync use, and the same code
under trio and under plain asyncio."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from adapters.redis import PriceReader, open_redis_store
from domain.price import Price
from domain.staleness import AgedPrice
from tests.adapters.redis.helpers import T0, price, unique
from tests.conditions import receive
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis

NS = 1_000_000_000
ROOT = Path(__file__).resolve().parents[3]


async def test_get_many_reports_age_and_stale(redis_server: RedisServer) -> None:
    fresh, old, absent = unique("AF"), unique("AO"), unique("AA")
    now = T0 + 1000 * NS
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        await store.cache.put_many([price(fresh, now - 2 * NS), price(old, now - 301 * NS)])
    async with PriceReader(redis_server.url, now_ns=lambda: now) as reader:
        got = await reader.get_many([fresh, old, absent])
        assert got == {
            fresh: AgedPrice(price(fresh, now - 2 * NS), 2.0, False),
            old: AgedPrice(price(old, now - 301 * NS), 301.0, True),
        }
        assert await reader.get(absent) is None
        single = await reader.get(fresh)
        assert single is not None and single.age_s == 2.0
    strict = PriceReader(redis_server.url, now_ns=lambda: now, max_age_s=1.0)
    try:
        aged = strict.get_sync(fresh)  # the sync API, for scripts
        assert aged is not None and aged.stale
        assert set(strict.get_many_sync([fresh, old, absent])) == {fresh, old}
    finally:
        strict.close()


async def test_reader_subscribe_pattern(redis_server: RedisServer) -> None:
    stem = unique("RP")
    async with (
        open_redis_store(redis_server.url, require_connection=True) as store,
        PriceReader(redis_server.url) as reader,
        reader.subscribe(pattern=f"{stem}*") as prices,
    ):
        await store.cache.put_many([price(f"{stem}A", T0), price("OTHER", T0)])
        assert await receive(prices, 1) == [price(f"{stem}A", T0)]


def test_reader_under_plain_asyncio(redis_server: RedisServer) -> None:
    """The same reader code, in a process that runs asyncio (no trio anywhere)."""
    s = unique("AS")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        import redis
        from adapters.redis.reader import PriceReader
        from domain.price import Price

        async def main():
            p = Price({s!r}, 1.5, 2.5, 2.0, {T0}, "V")
            async with PriceReader({redis_server.url!r}) as reader:
                async with reader.subscribe(symbols=[{s!r}]) as prices:
                    r = redis.Redis.from_url({redis_server.url!r})
                    await asyncio.to_thread(r.set, "price:" + {s!r}, p.to_json())
                    await asyncio.to_thread(r.publish, "price.updated." + {s!r}, p.to_json())
                    got = await asyncio.wait_for(prices.__anext__(), 5)
                    assert got == p, got
                aged = await reader.get({s!r})
                assert aged is not None and aged.price == p, aged
                print("asyncio-ok", type(asyncio.get_running_loop()).__name__)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "asyncio-ok" in out.stdout


def test_reader_under_anyio_asyncio_backend_in_process(redis_server: RedisServer) -> None:
    s = unique("AB")

    async def main() -> tuple[list[Price], AgedPrice | None]:
        async with (
            open_redis_store(redis_server.url, require_connection=True) as store,
            PriceReader(redis_server.url) as reader,
        ):
            async with reader.subscribe(symbols=[s]) as prices:
                await store.cache.put_many([price(s, T0)])
                got = await receive(prices, 1)
            return got, await reader.get(s)

    got, aged = anyio.run(main, backend="asyncio")
    assert got == [price(s, T0)]
    assert aged is not None and aged.price == price(s, T0)


def test_construction_does_not_connect() -> None:
    reader = PriceReader("redis://:pw@127.0.0.1:1/0")  # nothing listens on port 1
    assert "pw" not in repr(reader)
    with pytest.raises(ConnectionError):
        reader.get_sync("AAPL")
    reader.close()


async def test_symbols_are_normalised_as_the_http_api_does(redis_server: RedisServer) -> None:
    """``brk.b`` finds ``BRK.B`` (was: looked up ``price:brk.b`` and silently found nothing);
    a malformed symbol is an error, not an empty answer."""
    stem = unique("NB")
    dotted = f"{stem}.B"
    async with open_redis_store(redis_server.url, require_connection=True) as store:
        await store.cache.put_many([price(dotted, T0)])
    async with PriceReader(redis_server.url, now_ns=lambda: T0) as reader:
        got = await reader.get_many([f" {dotted.lower()} ", dotted])
        assert list(got) == [dotted] and got[dotted].price.symbol == dotted
        single = await reader.get(dotted.lower())
        assert single is not None and single.price == price(dotted, T0)
        assert reader.get_sync(dotted.lower()) is not None
        with pytest.raises(ValueError, match="B@D"):
            await reader.get_many(["b@d"])
        async with reader.subscribe(symbols=[dotted.lower()]) as prices:
            async with open_redis_store(redis_server.url, require_connection=True) as store:
                await store.cache.put_many([price(dotted, T0 + 1)])
            (update,) = await receive(prices, 1)
            assert update.symbol == dotted  # from the message, not from the channel name
