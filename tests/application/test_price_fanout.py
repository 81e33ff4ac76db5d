"""PriceFanOut (behind GET /prices/stream): one bus subscription only while clients exist,
an initial image, latest-per-symbol slots that bound a slow client, newer-wins per client, and a
bus outage that stays inside the fan-out. Virtual time, in-memory adapters."""

from __future__ import annotations

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from application.price_fanout import PriceFanOut, TooManyClients
from domain.price import Price, exact_mid
from tests.application.helpers import T0, eventually


def price(symbol: str, bid: float, ask: float, ts: int = T0) -> Price:
    return Price(symbol, bid, ask, exact_mid(bid, ask), ts, "V")


async def test_no_bus_subscription_without_clients(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        await anyio.sleep(5)
        assert bus._subscribers == []  # an instance without browsers pays nothing
        async with fanout.connect(["AAPL"]):
            await eventually(lambda: len(bus._subscribers) == 1)
        await eventually(lambda: bus._subscribers == [])
        tg.cancel_scope.cancel()


async def test_initial_image_then_updates_in_order(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    await cache.put_many([price("AAPL", 100, 101), price("MSFT", 200, 202)])
    fanout = PriceFanOut(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL", "MSFT", "SPY"]) as client:
            await fanout.image(client, fanout.symbols_of(client))
            image = await client.wait(1)
            assert {p.symbol: p.mid for p in image} == {"AAPL": 100.5, "MSFT": 201.0}
            await eventually(lambda: len(bus._subscribers) == 1)
            await bus.publish_many([price("SPY", 500, 500.02, T0 + 1)])
            await bus.publish_many([price("NVDA", 1, 2, T0 + 2)])  # not asked for
            assert [(p.symbol, p.mid) for p in await client.wait(1)] == [("SPY", 500.01)]
        tg.cancel_scope.cancel()


async def test_a_slow_client_gets_the_latest_price_per_symbol_counted(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(None) as client:
            await eventually(lambda: len(bus._subscribers) == 1)
            for i in range(1, 1001):  # the client reads nothing meanwhile
                await bus.publish_many([price("AAPL", 100 + i, 101 + i, T0 + i)])
            await eventually(lambda: client.pending.get("AAPL", price("AAPL", 0, 1)).bid == 1100)
            assert len(client.pending) == 1  # a slot, not a queue
            taken = await client.wait(1)
            assert [(p.symbol, p.bid) for p in taken] == [("AAPL", 1100)]
            assert client.conflated == 999
            assert fanout.stats.conflated_total == 999
        tg.cancel_scope.cancel()


async def test_an_older_price_never_follows_a_newer_one(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache)
    async with fanout.connect(["AAPL"]) as client:
        client.offer(price("AAPL", 100, 101, T0 + 10))
        assert [p.bid for p in await client.wait(1)] == [100]
        client.offer(price("AAPL", 99, 100, T0 + 5))  # e.g. an image read before the update
        assert await client.wait(1) == []
        client.offer(price("AAPL", 102, 103, T0 + 11))
        client.offer(price("AAPL", 98, 99, T0 + 7))  # older than the pending one
        assert [p.bid for p in await client.wait(1)] == [102]


async def test_an_everything_client_is_bounded_in_symbols(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache, max_symbols_per_client=3)
    async with fanout.connect(None) as client:
        for i, symbol in enumerate(["A", "B", "C", "D", "E"]):
            client.offer(price(symbol, 1, 2, T0 + i))
        assert sorted(client.pending) == ["A", "B", "C"]


async def test_clients_are_capped(bus: InMemoryEventBus, cache: InMemoryPriceCache) -> None:
    fanout = PriceFanOut(bus, cache, max_clients=2)
    async with fanout.connect(["A"]), fanout.connect(["B"]):
        with pytest.raises(TooManyClients):
            async with fanout.connect(["C"]):
                pass
        assert fanout.stats.refused_total == 1
    async with fanout.connect(["C"]):  # room again once the others left
        assert fanout.clients == 1


async def test_new_symbols_resubscribe_and_nothing_published_meanwhile_is_lost(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL"]) as first:
            await eventually(lambda: len(bus._subscribers) == 1)
            async with fanout.connect(["MSFT"]):
                # While the fan-out re-subscribes for AAPL+MSFT, an AAPL price reaches the cache
                # (and the bus): the first client gets it all the same, from the cache image.
                await cache.put_many([price("AAPL", 7, 8, T0 + 1)])
                await bus.publish_many([price("AAPL", 7, 8, T0 + 1)])
                await eventually(
                    lambda: (
                        len(bus._subscribers) == 1
                        and bus._subscribers[0].symbols == {"AAPL", "MSFT"}
                    )
                )
                got = await first.wait(1)
                assert [(p.symbol, p.bid) for p in got] == [("AAPL", 7)]
        tg.cancel_scope.cancel()


async def test_a_bus_outage_is_retried_and_never_raised(
    cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    class FlakyBus(InMemoryEventBus):
        failures = 3

        def subscribe(self, symbols=(), pattern=None):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis down")
            return super().subscribe(symbols, pattern)

    bus = FlakyBus()
    fanout = PriceFanOut(bus, cache, retry_base_s=0.5, retry_cap_s=1)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL"]) as client:
            with anyio.fail_after(10):
                await eventually(lambda: len(bus._subscribers) == 1)
            assert fanout.stats.bus_errors_total == 3
            await bus.publish_many([price("AAPL", 1, 2)])
            assert [p.symbol for p in await client.wait(1)] == ["AAPL"]
        tg.cancel_scope.cancel()
