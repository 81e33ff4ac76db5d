"""PriceFanOut (behind GET /prices/stream): one bus subscription only while clients exist, an
initial image, one latest-per-symbol table whatever the number of clients (a slow client skips
to the newest, counted), newer-wins, and a bus outage that stays inside the fan-out. Virtual
time, in-memory adapters."""

from __future__ import annotations

import contextlib
import logging

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from application.price_fanout import FanOutClient, PriceFanOut, TooManyClients
from domain.price import Price, exact_mid
from tests.application.helpers import T0, eventually


def price(symbol: str, bid: float, ask: float, ts: int = T0) -> Price:
    return Price(symbol, bid, ask, exact_mid(bid, ask), ts, "V")


def prices(taken: list[tuple[Price, bytes]]) -> list[Price]:
    return [p for p, _ in taken]


def fanout_of(bus: InMemoryEventBus, cache: InMemoryPriceCache, **kw: int) -> PriceFanOut:
    return PriceFanOut(bus, cache, encode=Price.to_json, **kw)  # type: ignore[arg-type]


async def test_no_bus_subscription_without_clients(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
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
    fanout = fanout_of(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL", "MSFT", "SPY"]) as client:
            await fanout.image(fanout.symbols_of(client))
            image = prices(await client.wait(1))
            assert {p.symbol: p.mid for p in image} == {"AAPL": 100.5, "MSFT": 201.0}
            await eventually(lambda: len(bus._subscribers) == 1)
            await bus.publish_many([price("SPY", 500, 500.02, T0 + 1)])
            await bus.publish_many([price("NVDA", 1, 2, T0 + 2)])  # not asked for
            await bus.publish_many([price("AAPL", 101, 102, T0 + 3)])
            got: list[Price] = []
            while len(got) < 2:  # the fan-out takes them off the bus as they come
                got += prices(await client.wait(1))
            assert [(p.symbol, p.mid) for p in got] == [("SPY", 500.01), ("AAPL", 101.5)]
            assert await client.wait(1) == []  # nothing new
        tg.cancel_scope.cancel()


async def test_payloads_are_encoded_once_whatever_the_number_of_clients(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    encoded: list[str] = []

    def encode(p: Price) -> bytes:
        encoded.append(p.symbol)
        return p.to_json()

    fanout = PriceFanOut(bus, cache, encode=encode)
    async with fanout.connect(None) as a, fanout.connect(None) as b, fanout.connect(["X"]) as c:
        fanout.update(price("X", 1, 2))
        assert prices(a.take()) == prices(b.take()) == prices(c.take()) == [price("X", 1, 2)]
        assert encoded == ["X"]


async def test_a_slow_client_gets_the_latest_price_per_symbol_counted(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(None) as slow, fanout.connect(["AAPL"]) as fast:
        fanout.update(price("AAPL", 100, 101, T0))
        assert [p.bid for p in prices(slow.take())] == [100]
        for i in range(1, 1001):  # the slow client reads nothing meanwhile; the fast one does
            fanout.update(price("AAPL", 100 + i, 101 + i, T0 + i))
            fanout.update(price(f"S{i % 3}", i, i + 1, T0 + i))
            assert [p.bid for p in prices(fast.take())] == [100 + i]
        taken = prices(slow.take())
        assert {p.symbol: p.bid for p in taken} == {"AAPL": 1100, "S0": 999, "S1": 1000, "S2": 998}
        assert [p.ts_event_ns for p in taken] == sorted(p.ts_event_ns for p in taken)  # oldest 1st
        assert slow.conflated == 999  # AAPL: 1,000 updates, one taken; S0-2: first seen now
        assert fast.conflated == 0
        assert fanout.stats.conflated_total == 999


async def test_an_older_price_never_follows_a_newer_one(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(["AAPL"]) as client:
        fanout.update(price("AAPL", 100, 101, T0 + 10))
        assert [p.bid for p in prices(client.take())] == [100]
        fanout.update(price("AAPL", 99, 100, T0 + 5))  # e.g. a cache image read late
        assert client.take() == []
        fanout.update(price("AAPL", 100, 101, T0 + 10))  # the same again
        assert client.take() == []
        fanout.update(price("AAPL", 101, 102, T0 + 10))  # same time, another price: later wins
        assert [p.bid for p in prices(client.take())] == [101]


async def test_the_table_is_bounded_in_symbols(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache, max_symbols=3)
    async with fanout.connect(None) as client:
        for i, symbol in enumerate(["A", "B", "C", "D", "E"]):
            fanout.update(price(symbol, 1, 2, T0 + i))
        assert [p.symbol for p in prices(client.take())] == ["A", "B", "C"]
        assert fanout.stats.symbols_over_cap == 2
        fanout.update(price("A", 2, 3, T0 + 9))  # a known symbol still updates
        assert [p.symbol for p in prices(client.take())] == ["A"]


async def test_clients_are_capped(bus: InMemoryEventBus, cache: InMemoryPriceCache) -> None:
    fanout = fanout_of(bus, cache, max_clients=2)
    async with fanout.connect(["A"]), fanout.connect(["B"]):
        with pytest.raises(TooManyClients):
            async with fanout.connect(["C"]):
                pass
        assert fanout.stats.refused_total == 1
    async with fanout.connect(["C"]):  # room again once the others left
        assert fanout.clients == 1


async def test_wait_wakes_on_an_update_and_times_out_without(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(["A"]) as client, anyio.create_task_group() as tg:
        start = anyio.current_time()
        assert await client.wait(15) == []
        assert anyio.current_time() - start == pytest.approx(15)

        async def later() -> None:
            await anyio.sleep(2)
            fanout.update(price("B", 1, 2))  # not this client's: it keeps waiting
            await anyio.sleep(1)
            fanout.update(price("A", 1, 2))

        tg.start_soon(later)
        start = anyio.current_time()
        assert [p.symbol for p in prices(await client.wait(15))] == ["A"]
        assert anyio.current_time() - start == pytest.approx(3)


async def test_new_symbols_resubscribe_and_nothing_published_meanwhile_is_lost(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL"]) as first:
            await eventually(lambda: len(bus._subscribers) == 1)
            fanout.update(price("AAPL", 5, 6, T0))
            assert [p.bid for p in prices(first.take())] == [5]
            async with fanout.connect(["MSFT"]):
                # While the fan-out re-subscribes for AAPL+MSFT, a newer AAPL price reaches the
                # cache (and the bus): the first client gets it all the same, from the cache.
                await cache.put_many([price("AAPL", 7, 8, T0 + 1)])
                await bus.publish_many([price("AAPL", 7, 8, T0 + 1)])
                await eventually(
                    lambda: (
                        len(bus._subscribers) == 1
                        and bus._subscribers[0].symbols == {"AAPL", "MSFT"}
                    )
                )
                got = prices(await first.wait(1))
                assert [(p.symbol, p.bid) for p in got] == [("AAPL", 7)]
        tg.cancel_scope.cancel()


async def test_a_gap_rereads_only_its_symbols_and_keeps_the_subscription(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    """A cluster shard re-subscribed (SubscriptionGap for AAPL): the fan-out re-reads AAPL
    from the cache (the update it missed reaches the client), keeps the same subscription
    (MSFT is not re-read, nothing re-subscribed), and counts it."""
    fanout = fanout_of(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL", "MSFT"]) as client:
            await eventually(lambda: len(bus._subscribers) == 1)
            subscription = bus._subscribers[0]
            await bus.publish_many([price("AAPL", 5, 6, T0), price("MSFT", 1, 2, T0)])
            got: list[Price] = []
            while len(got) < 2:  # the fan-out takes them off the bus as they come
                got += prices(await client.wait(1))
            # Cached while AAPL's shard was away (never published to us); MSFT's cache entry
            # is older than what the client has, so a re-read of MSFT would show nothing.
            await cache.put_many([price("AAPL", 7, 8, T0 + 1)])
            bus.gap({"AAPL"})
            got = prices(await client.wait(1))
            assert [(p.symbol, p.bid) for p in got] == [("AAPL", 7)]
            assert fanout.stats.bus_gaps_total == 1
            assert bus._subscribers == [subscription]  # the same subscription goes on
            await bus.publish_many([price("MSFT", 3, 4, T0 + 2)])
            assert [(p.symbol, p.bid) for p in prices(await client.wait(1))] == [("MSFT", 3)]
            assert fanout.stats.bus_errors_total == 0
        tg.cancel_scope.cancel()


async def test_a_bus_outage_is_retried_and_never_raised(cache: InMemoryPriceCache) -> None:
    class FlakyBus(InMemoryEventBus):
        failures = 3

        def subscribe(self, symbols=(), pattern=None):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis down")
            return super().subscribe(symbols, pattern)

    bus = FlakyBus()
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, retry_base_s=0.5, retry_cap_s=1)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        async with fanout.connect(["AAPL"]) as client:
            with anyio.fail_after(10):
                await eventually(lambda: len(bus._subscribers) == 1)
            assert fanout.stats.bus_errors_total == 3
            await bus.publish_many([price("AAPL", 1, 2)])
            assert [p.symbol for p in prices(await client.wait(1))] == ["AAPL"]
        tg.cancel_scope.cancel()


async def test_only_a_clients_own_symbols_wake_it(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(["A"]) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.wait, 60)
        await eventually(lambda: "A" in fanout._waiting)
        for i in range(100):
            fanout.update(price("B", 1, 2, T0 + i))
        assert "A" in fanout._waiting and client in fanout._waiting["A"]  # still asleep
        fanout.update(price("A", 1, 2))
        await eventually(lambda: fanout._waiting == {})


async def test_a_future_stamped_price_is_not_taken(
    bus: InMemoryEventBus, cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, clock=clock, max_future_skew_s=5)
    now = clock.now_ns()
    await cache.put_many([price("AAPL", 1, 2, now + 3_600 * 10**9)])  # written by anything
    async with fanout.connect(["AAPL"]) as client:
        await fanout.image(["AAPL"])
        fanout.update(price("AAPL", 1, 2, now + 10 * 10**9))
        assert client.take() == []
        assert fanout.stats.future_refused == 2
        fanout.update(price("AAPL", 3, 4, now))  # the real price is not held back
        assert [p.bid for p in prices(client.take())] == [3]


# --- fed by this instance's writer (the leader / single instance) -------------------------------


async def test_fed_locally_clients_get_what_the_writer_published_without_the_bus(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(fanout.run)
        with fanout.fed_locally() as published:
            async with fanout.connect(["AAPL"]) as client:
                await anyio.sleep(5)
                assert bus._subscribers == []  # the instance does not read its prices back
                published([price("AAPL", 1, 2, T0 + 1), price("MSFT", 3, 4, T0 + 1)])
                published([price("AAPL", 5, 6, T0 + 2)])
                assert [(p.symbol, p.bid) for p in prices(await client.wait(1))] == [("AAPL", 5)]
                await bus.publish_many([price("AAPL", 7, 8, T0 + 3)])  # nobody listens
                assert await client.wait(1) == []
        tg.cancel_scope.cancel()


async def test_fed_locally_only_followed_symbols_are_kept_and_encoded_when_taken(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    encoded: list[tuple[str, float]] = []

    def encode(p: Price) -> bytes:
        encoded.append((p.symbol, p.bid))
        return p.to_json()

    fanout = PriceFanOut(bus, cache, encode=encode)
    with fanout.fed_locally() as published:
        published([price("AAPL", 1, 2)])  # no client: nothing kept
        assert fanout._latest == {}
        async with fanout.connect(["AAPL"]) as a, fanout.connect(["AAPL"]) as b:
            for i in range(100):
                published([price("AAPL", i, i + 1, T0 + i), price("NVDA", i, i + 1, T0 + i)])
            assert list(fanout._latest) == ["AAPL"]  # NVDA: nobody follows it
            assert encoded == []  # nothing encoded on the writer's path
            assert prices(a.take()) == prices(b.take()) == [price("AAPL", 99, 100, T0 + 99)]
            assert encoded == [("AAPL", 99)]  # once, for the price taken, whatever the clients
            async with fanout.connect(["MSFT"]):
                published([price("MSFT", 1, 2, T0 + 200)])
            assert "MSFT" not in fanout._latest  # its client left: not kept to go stale


async def test_fed_locally_refuses_an_older_or_future_price(
    bus: InMemoryEventBus, cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, clock=clock, max_future_skew_s=5)
    now = clock.now_ns()
    with fanout.fed_locally() as published:
        async with fanout.connect(None) as client:
            published([price("AAPL", 2, 3, now), price("AAPL", 1, 2, now - 1)])
            published([price("MSFT", 1, 2, now + 10 * 10**9)])
            assert [p.bid for p in prices(client.take())] == [2]
            assert fanout.stats.future_refused == 1


async def test_role_changes_switch_between_the_writer_and_the_bus_missing_nothing(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    """Leader -> standby -> leader with a client connected throughout: the bus is followed only
    as a standby (never together with the writer's feed), and what was published while
    switching (in the cache, not seen by the table) still reaches the client."""
    fanout = fanout_of(bus, cache)

    async def publish(*batch: Price) -> None:  # another instance, the leader: cache then bus
        await cache.put_many(batch)
        await bus.publish_many(batch)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]) as client:
                with fanout.fed_locally() as published:  # leader
                    await anyio.sleep(1)
                    published([price("AAPL", 1, 2, T0 + 1)])
                    assert [p.bid for p in prices(await client.wait(1))] == [1]
                    assert bus._subscribers == []
                    # the next leader writes before this one has left (the lease's last moments)
                    await cache.put_many([price("AAPL", 2, 3, T0 + 2)])
                # standby: follows the bus; the price it could not see comes from the cache
                await eventually(lambda: len(bus._subscribers) == 1)
                assert [p.bid for p in prices(await client.wait(1))] == [2]
                await publish(price("AAPL", 3, 4, T0 + 3))
                assert [p.bid for p in prices(await client.wait(1))] == [3]
                # the previous leader's last write: in the cache, its bus message not delivered
                await cache.put_many([price("AAPL", 4, 5, T0 + 4)])
                with fanout.fed_locally() as published:  # leader again
                    await eventually(lambda: bus._subscribers == [])
                    assert [p.bid for p in prices(await client.wait(1))] == [4]  # from the cache
                    await bus.publish_many([price("AAPL", 9, 9, T0 + 9)])  # nobody listens
                    assert await client.wait(1) == []
                    published([price("AAPL", 5, 6, T0 + 5)])
                    assert [p.bid for p in prices(await client.wait(1))] == [5]
                    assert len(bus._subscribers) == 0
            tg.cancel_scope.cancel()
    assert fanout.stats.conflated_total == 0


async def test_only_one_writer_feeds_the_fanout(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    feeding = fanout.fed_locally()
    feeding.__enter__()
    with pytest.raises(RuntimeError, match="already fed"):
        fanout.fed_locally().__enter__()
    feeding.__exit__(None, None, None)
    with fanout.fed_locally():  # free again once left
        pass


# -- edges the mutation run found unpinned (issue 16) ------------------------------------------


class DownBus(InMemoryEventBus):
    """Subscribing fails while ``down``; every attempt's time is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.attempts: list[float] = []

    def subscribe(self, symbols=(), pattern=None):  # type: ignore[no-untyped-def]
        self.attempts.append(anyio.current_time())
        if self.down:
            raise ConnectionError("redis down")
        return super().subscribe(symbols, pattern)


class ReadsCache(InMemoryPriceCache):
    """Records the symbols of every ``get_many``."""

    reads: list[set[str]]

    async def get_many(self, symbols):  # type: ignore[no-untyped-def]
        self.reads = getattr(self, "reads", [])
        self.reads.append(set(symbols))
        return await super().get_many(symbols)


async def test_bus_retries_back_off_from_half_a_second_to_5_s_and_restart_after_a_recovery(
    cache: InMemoryPriceCache, caplog: pytest.LogCaptureFixture
) -> None:
    """The defaults: 0.5, 1, 2, 4, then 5 s between attempts; logged once per outage, at its
    first failure (also an outage of one failure); after a good subscription the next outage
    starts again at 0.5 s."""
    bus = DownBus()
    bus.down = True
    fanout = PriceFanOut(bus, cache, encode=Price.to_json)
    with caplog.at_level(logging.WARNING, "application.price_fanout"), anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]):
                t0 = anyio.current_time()
                await eventually(lambda: len(bus.attempts) == 7)
                assert [a - t0 for a in bus.attempts] == [0, 0.5, 1.5, 3.5, 7.5, 12.5, 17.5]
                bus.down = False
                await eventually(lambda: len(bus._subscribers) == 1)
                bus.down = True
                async with fanout.connect(["MSFT"]):  # re-subscribing: a second outage
                    t1 = anyio.current_time()
                    await eventually(lambda: len(bus.attempts) == 9)
                    bus.down = False  # one failure only, then back
                    await eventually(lambda: len(bus.attempts) == 10)
                    assert [a - t1 for a in bus.attempts[8:]] == [0, 0.5]
            tg.cancel_scope.cancel()
    assert fanout.stats.bus_errors_total == 7 + 1
    assert [r.getMessage() for r in caplog.records] == [
        "price fan-out: bus unavailable (redis down); retrying"
    ] * 2


async def test_bus_retry_delays_stop_doubling_at_1024_times_the_base(
    cache: InMemoryPriceCache,
) -> None:
    """Under a large cap the delay doubles up to base x 2**10, then stays there (no overflow
    however long the outage)."""
    bus = DownBus()
    bus.down = True
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, retry_base_s=1, retry_cap_s=1e9)
    with anyio.fail_after(10_000):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]):
                await anyio.sleep(4095.5)  # attempts at 0, 1, 3, 7 ... 2047, 3071, 4095
            tg.cancel_scope.cancel()
    gaps = [round(b - a) for a, b in zip(bus.attempts, bus.attempts[1:], strict=False)]
    assert gaps == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024]


async def test_a_client_of_every_symbol_gets_the_subscribed_ones_image_and_any_update(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    """``connect(None)``: its symbols are those subscribed now; the fan-out follows the whole
    bus for it and images every subscribed symbol from the cache."""
    await cache.put_many([price("AAPL", 1, 2), price("MSFT", 3, 4), price("OLD", 5, 6)])
    fanout = PriceFanOut(
        bus, cache, encode=Price.to_json, all_symbols=lambda: frozenset({"AAPL", "MSFT"})
    )
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(None) as every, fanout.connect(["AAPL"]) as named:
                assert fanout.symbols_of(every) == {"AAPL", "MSFT"}
                assert fanout.symbols_of(named) == {"AAPL"}
                await eventually(lambda: len(bus._subscribers) == 1)
                assert bus._subscribers[0].pattern == "*"
                image = prices(await every.wait(1))
                assert sorted(p.symbol for p in image) == ["AAPL", "MSFT"]  # not OLD
                await bus.publish_many([price("NEW", 7, 8, T0 + 1)])
                assert [p.symbol for p in prices(await every.wait(1))] == ["NEW"]
                assert [p.symbol for p in prices(named.take())] == ["AAPL"]
            tg.cancel_scope.cancel()


async def test_a_named_clients_image_reads_only_what_the_table_lacks(
    bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """One Redis read per new client, of its own symbols and only those the table does not
    hold: never every subscribed symbol, never the whole table again."""
    cache = ReadsCache(clock, ttl_s=300.0)
    await cache.put_many([price("AAPL", 1, 2), price("MSFT", 3, 4)])
    fanout = PriceFanOut(
        bus, cache, encode=Price.to_json, all_symbols=lambda: frozenset({"AAPL", "MSFT", "X"})
    )
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]):
                await eventually(lambda: len(bus._subscribers) == 1)
                assert cache.reads == [{"AAPL"}]  # on subscribing
                await fanout.image(["AAPL", "MSFT"])
                assert cache.reads == [{"AAPL"}, {"MSFT"}]
            tg.cancel_scope.cancel()


async def test_clients_joining_with_the_same_symbols_keep_the_one_bus_subscription(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]):
                await eventually(lambda: len(bus._subscribers) == 1)
                first = bus._subscribers[0]
                for _ in range(3):
                    async with fanout.connect(["AAPL"]):
                        await anyio.sleep(1)
                        assert bus._subscribers == [first]
                    await anyio.sleep(1)
                    assert bus._subscribers == [first]
            tg.cancel_scope.cancel()


async def test_counts_of_sent_and_conflated_prices_add_up_across_symbols_and_takes(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(None) as client:
        fanout.update(price("A", 1, 2, T0))
        fanout.update(price("B", 1, 2, T0))
        assert len(client.take()) == 2
        for i in range(1, 4):  # 3 updates of A and of B: 2 skipped each
            fanout.update(price("A", 1 + i, 2 + i, T0 + i))
            fanout.update(price("B", 1 + i, 2 + i, T0 + i))
        assert len(client.take()) == 2
        assert client.conflated == 4
        for i in range(4, 6):  # 2 updates of A: 1 skipped
            fanout.update(price("A", 1 + i, 2 + i, T0 + i))
        assert len(client.take()) == 1
    assert client.conflated == 5 and fanout.stats.conflated_total == 5
    assert fanout.stats.sent_total == 5
    fanout.dropped()
    fanout.dropped()
    assert fanout.stats.dropped_total == 2


async def test_a_price_stamped_exactly_at_the_skew_limit_is_taken(
    bus: InMemoryEventBus, cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, clock=clock, max_future_skew_s=5)
    async with fanout.connect(["AAPL"]) as client:
        fanout.update(price("AAPL", 1, 2, clock.now_ns() + 5 * 10**9))
        assert [p.bid for p in prices(client.take())] == [1]
        assert fanout.stats.future_refused == 0


async def test_a_client_of_every_symbol_wakes_on_any_update_and_leaves_no_registration(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    async with fanout.connect(None) as client, anyio.create_task_group() as tg:
        assert await client.wait(5) == []  # timed out
        assert fanout._waiting_all == {}

        async def later() -> None:
            await anyio.sleep(2)
            fanout.update(price("ANY", 1, 2))

        tg.start_soon(later)
        start = anyio.current_time()
        assert [p.symbol for p in prices(await client.wait(15))] == ["ANY"]
        assert anyio.current_time() - start == pytest.approx(2)
        assert fanout._waiting_all == {} and fanout._waiting == {}


async def test_clients_waiting_on_shared_symbols_come_and_go_in_any_order(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    """A client that gives up waiting leaves the others' wake-ups in place; one woken while
    another starts waiting on the same symbol cleans up after itself only; afterwards no
    registration is left (a client's memory goes with it)."""
    fanout = fanout_of(bus, cache)
    woken: dict[str, float] = {}

    async def waits(client: FanOutClient, name: str, timeout_s: float) -> None:
        if await client.wait(timeout_s):
            woken[name] = anyio.current_time()

    with anyio.fail_after(100):
        async with (
            fanout.connect(["A", "B"]) as x,
            fanout.connect(["B"]) as y,
            fanout.connect(["A"]) as z,
            anyio.create_task_group() as tg,
        ):
            start = anyio.current_time()
            tg.start_soon(waits, x, "x", 1)  # gives up at 1 s
            tg.start_soon(waits, y, "y", 60)
            await anyio.sleep(2)
            fanout.update(price("B", 1, 2))
            await eventually(lambda: "y" in woken)
            assert woken["y"] - start == pytest.approx(2)  # not at 60 s
            assert fanout._waiting == {}

            assert [p.symbol for p in prices(x.take())] == ["B"]
            tg.start_soon(waits, x, "x", 60)
            await eventually(lambda: "A" in fanout._waiting)
            z.take()
            fanout.update(price("A", 1, 2))  # x is woken...
            assert [p.symbol for p in prices(z.take())] == ["A"]
            await z.wait(1)  # ...while z starts waiting on A, before x cleaned up
            await eventually(lambda: "x" in woken)
            assert fanout._waiting == {}


async def test_by_default_the_table_holds_10_000_symbols_and_100_clients_are_served(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = PriceFanOut(bus, cache, encode=lambda p: b"")
    for i in range(10_001):
        fanout.update(price(f"S{i}", 1, 2))
    assert fanout.stats.symbols_over_cap == 1
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(100):
            await stack.enter_async_context(fanout.connect(["S1"]))
        with pytest.raises(TooManyClients):
            await stack.enter_async_context(fanout.connect(["S1"]))


async def test_fed_locally_clients_come_and_go_and_every_one_gets_the_writers_prices(
    bus: InMemoryEventBus, cache: InMemoryPriceCache
) -> None:
    fanout = fanout_of(bus, cache)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            with fanout.fed_locally() as published:
                async with fanout.connect(["AAPL"]) as a:
                    for i in range(3):  # others join and leave while the writer feeds it
                        async with fanout.connect(["AAPL", "MSFT"]) as b:
                            await anyio.sleep(1)
                            published([price("AAPL", i, i + 1, T0 + i)])
                            assert [p.bid for p in prices(await b.wait(1))] == [i]
                        await anyio.sleep(1)
                    assert [p.bid for p in prices(await a.wait(1))] == [2]
                    assert bus._subscribers == []
            tg.cancel_scope.cancel()


async def test_fed_locally_a_named_client_is_not_given_a_future_stamped_price(
    bus: InMemoryEventBus, cache: InMemoryPriceCache, clock: VirtualClock
) -> None:
    fanout = PriceFanOut(bus, cache, encode=Price.to_json, clock=clock, max_future_skew_s=5)
    now = clock.now_ns()
    with fanout.fed_locally() as published:
        async with fanout.connect(["AAPL"]) as client:
            published([price("AAPL", 1, 2, now + 10 * 10**9)])
            assert client.take() == [] and fanout.stats.future_refused == 1
            published([price("AAPL", 3, 4, now)])
            assert [p.bid for p in prices(client.take())] == [3]


async def test_every_gap_is_counted(bus: InMemoryEventBus, cache: InMemoryPriceCache) -> None:
    fanout = fanout_of(bus, cache)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(fanout.run)
            async with fanout.connect(["AAPL"]):
                await eventually(lambda: len(bus._subscribers) == 1)
                for n in (1, 2, 3):
                    bus.gap({"AAPL"})
                    await eventually(lambda: fanout.stats.bus_gaps_total == n)  # noqa: B023
            tg.cancel_scope.cancel()
