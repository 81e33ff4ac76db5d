"""The PriceCache + EventBus contract, stated once, run on every implementation (see conftest).

The application's write step is ``applied = await cache.put_many(batch)`` then
``await bus.publish_many(applied)``; tests that publish do exactly that, so "each applied price
published exactly once, in order per symbol" holds for every wiring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

import anyio

from adapters.inbox import Inbox
from domain.price import Price
from ports.event_bus import POSITIONS_CHANGED_CHANNEL
from tests.adapters.contract.conftest import T0, StoreUnderTest, price
from tests.conditions import receive, wait_for
from tests.price_contract import check_price_json


async def write(store: StoreUnderTest, batch: Sequence[Price]) -> Sequence[Price]:
    applied = await store.cache.put_many(batch)
    await store.bus.publish_many(applied)
    return applied


async def receive_until(
    prices: AsyncIterator[Price], last: Price, timeout_s: float = 5.0
) -> list[Price]:
    """Everything received up to and including ``last`` (a marker published after the rest:
    anything unexpected, like a duplicate, shows up before it)."""
    got: list[Price] = []
    with anyio.fail_after(timeout_s):
        async for p in prices:
            got.append(p)
            if p == last:
                break
    return got


async def test_round_trip_get_and_get_many(store: StoreUnderTest) -> None:
    a, b, absent = store.symbol(), store.symbol(), store.symbol()
    pa, pb = price(a, T0 + 1), price(b, T0 + 2, 10.5, 10.75)
    applied = await store.cache.put_many([pa, pb])
    assert list(applied) == [pa, pb]
    assert await store.cache.get(a) == pa
    assert await store.cache.get(absent) is None
    assert await store.cache.get_many([a, b, absent]) == {a: pa, b: pb}
    assert await store.cache.get_many([]) == {}
    assert list(await store.cache.put_many([])) == []


async def test_stored_json_is_the_contract_bytes(store: StoreUnderTest) -> None:
    s = store.symbol()
    p = Price(s, 150.25, 150.27, 150.26, 1_721_807_813_639_713_735, "SIP", "Q", "N")
    await store.cache.put_many([p])
    assert await store.raw(s) == p.to_json()
    check_price_json(await store.raw(s))
    assert (
        p.to_json()
        == (
            f'{{"symbol":"{s}","bid":150.25,"ask":150.27,"mid":150.26,'
            f'"timestamp":"2024-07-24T07:56:53.639713735Z","exchange":"SIP",'
            f'"bid_exchange":"Q","ask_exchange":"N"}}'
        ).encode()
    )
    assert await store.cache.get(s) == p  # and it reads back exactly


async def test_ttl_is_set_on_every_write(store: StoreUnderTest) -> None:
    s = store.symbol()
    ttl = store.cache.ttl_s
    assert ttl == 300.0
    await store.cache.put_many([price(s, T0)])
    remaining = await store.remaining_ttl_s(s)
    assert remaining is not None
    assert ttl - 2 < remaining <= ttl


async def test_entry_expires_after_ttl_and_a_write_restarts_it(store: StoreUnderTest) -> None:
    cache = await store.make_cache(0.3)
    s = store.symbol()
    await cache.put_many([price(s, T0)])
    assert await cache.get(s) is not None
    waited = await store.let_time_pass(cache, s, 0.3)
    assert waited >= 0.25  # expiry happened because of the TTL, not at once
    assert await cache.get(s) is None
    assert await cache.get_many([s]) == {}
    # After expiry an older price than the expired one is a fresh start: applied.
    older = price(s, T0 - 1)
    assert list(await cache.put_many([older])) == [older]
    assert await cache.get(s) == older


async def test_older_write_refused_newer_and_equal_applied(store: StoreUnderTest) -> None:
    s = store.symbol()
    current = price(s, T0 + 1_000)
    await store.cache.put_many([current])

    older = price(s, T0 + 999, 1.0, 2.0)
    assert list(await store.cache.put_many([older])) == []
    assert await store.cache.get(s) == current

    same_time = price(s, T0 + 1_000, 3.0, 4.0)
    assert list(await store.cache.put_many([same_time])) == [same_time]

    newer = price(s, T0 + 1_001, 5.0, 6.0)
    other = store.symbol()
    fresh = price(other, T0)
    # In one batch: the refused one is left out, order of the applied ones is kept.
    assert list(await store.cache.put_many([older, newer, fresh])) == [newer, fresh]
    assert await store.cache.get_many([s, other]) == {s: newer, other: fresh}


async def test_same_symbol_twice_in_a_batch_applies_in_order(store: StoreUnderTest) -> None:
    s = store.symbol()
    first, second = price(s, T0 + 1), price(s, T0 + 2, 1.0, 2.0)
    assert list(await store.cache.put_many([first, second])) == [first, second]
    assert await store.cache.get(s) == second
    # Newer first, older second: the second is refused against the first.
    third, stale = price(s, T0 + 10), price(s, T0 + 5)
    assert list(await store.cache.put_many([third, stale])) == [third]
    assert await store.cache.get(s) == third


async def test_large_batch_checks_every_symbol(store: StoreUnderTest) -> None:
    # 2,500 distinct symbols: Redis reads them in chunks of 1,000 (MGET); newer cached prices
    # at and around the chunk edges must each refuse exactly their own symbol.
    symbols = [store.symbol("L") for _ in range(2_500)]
    guarded = [0, 999, 1_000, 1_001, 1_999, 2_000, 2_499]
    await store.cache.put_many([price(symbols[i], T0 + 100) for i in guarded])
    batch = [price(s, T0 + 50) for s in symbols]
    applied = await store.cache.put_many(batch)
    assert list(applied) == [p for i, p in enumerate(batch) if i not in guarded]
    got = await store.cache.get_many([symbols[i] for i in (0, 1, 1_000, 2_498, 2_499)])
    assert [p.ts_event_ns for p in got.values()] == [T0 + 100, T0 + 50, T0 + 100, T0 + 50, T0 + 100]


async def test_published_once_in_order_per_symbol(store: StoreUnderTest) -> None:
    a, b = store.symbol("PA"), store.symbol("PB")
    batches = [[price(a, T0 + 10 * i), price(b, T0 + 10 * i + 1, 2.0, 3.0 + i)] for i in range(20)]
    marker = price(a, T0 + 1_000)
    async with store.bus.subscribe(symbols=[a, b]) as prices:
        for batch in batches:
            await write(store, batch)
        # A refused (older) price is not published either.
        await write(store, [price(a, T0)])
        await write(store, [marker])
        got = await receive_until(prices, marker)
    # Nothing else arrived before the marker: no duplicates, nothing refused.
    assert len(got) == 41
    assert [p for p in got if p.symbol == a] == [batch[0] for batch in batches] + [marker]
    assert [p for p in got if p.symbol == b] == [batch[1] for batch in batches]


async def test_slow_subscriber_keeps_the_latest_and_counts_what_it_lost(
    store: StoreUnderTest,
) -> None:
    # Buffer 5, 20 prices published while the subscriber reads nothing: it loses the 15 OLDEST
    # (counted) and then reads the latest 5, in order. (Both buses, so consumers behave alike.)
    bus = await store.make_bus(5)
    s = store.symbol("SLOW")
    batch = [price(s, T0 + i) for i in range(20)]
    async with bus.subscribe(symbols=[s]) as prices:
        applied = await store.cache.put_many(batch)
        await bus.publish_many(applied)
        stats = cast(Inbox[Price], prices).stats
        await wait_for(lambda: stats.received >= 20)  # Redis delivers from its own thread
        assert stats.dropped == 15
        assert await receive(prices, 5) == batch[15:]
        # Nothing more was queued (no duplicate delivery): the next thing read is a marker.
        marker = price(s, T0 + 100)
        await bus.publish_many(await store.cache.put_many([marker]))
        assert await receive_until(prices, marker) == [marker]
        assert stats.dropped == 15


async def test_subscriber_gets_only_its_symbols_and_pattern(store: StoreUnderTest) -> None:
    stem = store.symbol("Q")  # unique stem, e.g. Q17
    mine, theirs = f"{stem}A", store.symbol("Z")
    named = store.symbol("N")
    async with store.bus.subscribe(symbols=[named], pattern=f"{stem}*") as prices:
        await write(store, [price(theirs, T0), price(mine, T0 + 1), price(named, T0 + 2)])
        got = await receive(prices, 2)
    assert sorted(p.symbol for p in got) == sorted([mine, named])


async def test_pattern_matches_a_named_symbol_once(store: StoreUnderTest) -> None:
    stem = store.symbol("D")
    both = f"{stem}X"
    marker = price(both, T0 + 2)
    async with store.bus.subscribe(symbols=[both], pattern=f"{stem}*") as prices:
        await write(store, [price(both, T0), price(both, T0 + 1)])
        await write(store, [marker])
        got = await receive_until(prices, marker)
    assert [p.ts_event_ns for p in got] == [T0, T0 + 1, T0 + 2]


async def test_control_signals_reach_listeners(store: StoreUnderTest) -> None:
    async with store.bus.listen(POSITIONS_CHANGED_CHANNEL) as signals:
        await store.bus.notify(POSITIONS_CHANGED_CHANNEL, b"acct-1")
        await store.bus.notify("some.other.channel", b"not for us")
        await store.bus.notify(POSITIONS_CHANGED_CHANNEL)
        got = []
        with anyio.fail_after(5):
            async for payload in signals:
                got.append(payload)
                if len(got) == 2:
                    break
    assert got == [b"acct-1", b""]


async def test_a_cached_price_stamped_in_the_future_cannot_freeze_its_symbol(
    store: StoreUnderTest,
) -> None:
    """Whoever wrote a price stamped far ahead of the store's clock (2099 here), the next real
    price replaces it (the issue's defect 4: it was refused as older until the TTL ended), and
    the ordering guard still holds between real prices."""
    s = store.symbol()
    future = price(s, 4_070_908_800 * 1_000_000_000)
    assert list(await store.cache.put_many([future])) == [future]
    real = price(s, T0 + 10)
    assert list(await write(store, [real])) == [real]
    assert await store.cache.get(s) == real
    assert list(await store.cache.put_many([price(s, T0 + 9)])) == []
    assert await store.cache.get(s) == real
