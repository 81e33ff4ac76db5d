"""Reconnection in virtual time: the seed's timeline, fatal errors, attempt limits, jitter."""

from __future__ import annotations

import itertools
import logging

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from application.service import MarketDataService, ServiceConfig
from domain.backoff import BackoffPolicy
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, FeedUnavailable
from tests.application.helpers import T0, eventually, quote

SYMBOLS = frozenset({"AAPL", "MSFT", "BRK.B"})


def make_service(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    **config: object,
) -> MarketDataService:
    cfg = ServiceConfig(static_symbols=SYMBOLS, symbol_limit=None, **config)  # type: ignore[arg-type]
    return MarketDataService(feed, cache, bus, clock, cfg, rng=lambda: 0.5)


async def test_seed_timeline_reconnects_at_5_15_35_75_and_resubscribes_everything(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            lost_at = anyio.current_time()
            feed.fail_next_connect(times=3)
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.sessions) == 2 and feed.subscribed() == SYMBOLS)
            offsets = [t - lost_at for t in feed.connect_times[1:]]
            assert offsets == [5, 15, 35, 75]
            assert service.status.state is ConnectionState.CONNECTED
            assert service.status.reconnects == 4
            # The new session got the whole set, not a diff.
            assert feed.sessions[1].requests[0][1].symbols() == SYMBOLS
            feed.push(quote("AAPL", 150.25, 150.27))
            await eventually(lambda: "AAPL" in cache.values)
            assert cache.values["AAPL"].mid == 150.26
            tg.cancel_scope.cancel()


async def test_fatal_error_stops_after_one_attempt(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock)
    feed.fail_next_connect(
        FatalFeedError("auth failed", code=402, setting="ALPACA_API_KEY"), times=5
    )
    with anyio.fail_after(100), pytest.raises(FatalFeedError, match="ALPACA_API_KEY"):
        await service.run()
    assert len(feed.connect_times) == 1
    assert service.status.state is ConnectionState.FAILED
    assert service.status.fatal_error is not None and "auth failed" in service.status.fatal_error


async def test_max_attempts_gives_up_with_a_fatal_error(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock, backoff=BackoffPolicy(max_attempts=2))
    feed.fail_next_connect(times=10)
    with anyio.fail_after(1000), pytest.raises(FatalFeedError, match="MDS_RECONNECT_MAX_ATTEMPTS"):
        await service.run()
    # The first try plus two retries, at 0, 5 and 15 s.
    assert [t - feed.connect_times[0] for t in feed.connect_times] == [0, 5, 15]


async def test_jitter_scales_delay_by_the_injected_random_source_and_min_delay_wins(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock, backoff=BackoffPolicy(jitter=True))
    feed.fail_next_connect(times=2)
    feed.fail_next_connect(FeedUnavailable("connection limit exceeded", code=406, min_delay=30.0))
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            t = feed.connect_times
            # rng() = 0.5: 5 * 0.5, 10 * 0.5, then 20 * 0.5 = 10 < the 406's 30 s minimum.
            assert [b - a for a, b in itertools.pairwise(t)] == [2.5, 5.0, 30.0]
            tg.cancel_scope.cancel()


async def test_attempt_counter_resets_after_a_healthy_minute(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            feed.fail_next_connect(times=2)
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.sessions) == 2 and bool(feed.subscribed()))
            assert service.status.reconnect_attempts == 3
            await anyio.sleep(61)
            feed.push(quote("AAPL", 1.0, 1.1, T0 + 1))
            await eventually(lambda: service.status.reconnect_attempts == 0)
            before = len(feed.connect_times)
            dropped_at = anyio.current_time()
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.connect_times) == before + 1)
            assert feed.connect_times[-1] - dropped_at == 5
            tg.cancel_scope.cancel()


async def test_venue_symbol_limit_keeps_the_best_ranked_and_reports_the_rest(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    feed = ScriptedQuoteFeed(clock, symbol_limit=2)
    service = make_service(feed, cache, bus, clock)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: len(feed.subscribed()) == 2)
            await anyio.sleep(1)
            # Alphabetical within the static tier: AAPL, BRK.B win; MSFT is reported.
            assert feed.subscribed() == {"AAPL", "BRK.B"}
            assert service.status.left_out == ("MSFT",)
            assert service.status.state is ConnectionState.CONNECTED
            tg.cancel_scope.cancel()


async def test_symbols_the_venue_does_not_confirm_are_reported_not_fatal(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"MSFT"})
    service = make_service(feed, cache, bus, clock)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "BRK.B"})
            assert service.status.confirmed == {"AAPL", "BRK.B"}
            assert service.status.connected
            tg.cancel_scope.cancel()


async def test_after_a_reconnect_the_best_ranked_symbols_win_a_smaller_venue_limit(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    from adapters.memory import StaticPositionSource

    feed = ScriptedQuoteFeed(clock)
    positions = StaticPositionSource({"ZM"})  # a position outranks the static list
    config = ServiceConfig(static_symbols=SYMBOLS, symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, config, positions=positions)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS | {"ZM"})
            feed.symbol_limit = 2  # the venue now allows fewer symbols
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.sessions) == 2 and len(feed.subscribed()) == 2)
            await eventually(lambda: set(service.status.left_out) >= {"BRK.B", "MSFT"})
            assert feed.subscribed() == {"ZM", "AAPL"}
            tg.cancel_scope.cancel()


async def test_log_lines_say_lost_only_for_a_session_that_was_and_count_symbols_in_words(
    feed: ScriptedQuoteFeed,
    cache: InMemoryPriceCache,
    bus: InMemoryEventBus,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = ServiceConfig(static_symbols=frozenset({"AAPL"}), symbol_limit=None)
    service = MarketDataService(feed, cache, bus, clock, cfg, rng=lambda: 0.5)
    feed.fail_next_connect(FeedUnavailable("cannot connect: connection refused"), times=1)
    with caplog.at_level(logging.INFO, "application.keep_connected"), anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.sessions) == 2 and feed.subscribed() == {"AAPL"})
            tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0]
        == "cannot open a feed session (cannot connect: connection refused); retrying in 5.0 s"
    )
    assert lines[1] == "connected; subscribed to 1 symbol"
    assert lines[2].startswith("feed session lost (")
    assert lines[3] == "connected; subscribed to 1 symbol"


def slot_taken() -> FeedUnavailable:
    return FeedUnavailable("connection limit exceeded", code=406, min_delay=15.0, slot_taken=True)


async def test_a_new_owner_retries_a_taken_slot_every_second_not_every_15_s(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """A service that has had no session yet (fresh start, new leader) and meets "slot taken"
    (406: a predecessor froze holding it) retries every second, so it streams within a second
    of the venue freeing the slot (was: the 15 s floor, 18 s without prices after a frozen
    leader's lease expired)."""
    service = make_service(feed, cache, bus, clock)
    feed.fail_next_connect(slot_taken(), times=7)  # the venue frees the slot after ~7 s
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            offsets = [t - feed.connect_times[0] for t in feed.connect_times]
            assert offsets == [0, 1, 2, 3, 4, 5, 6, 7]
            assert service.status.reconnect_attempts == 0  # not counted against the policy
            tg.cancel_scope.cancel()


async def test_a_taken_slot_after_our_own_session_keeps_the_15_s_floor(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """After a session of its own, the holder is most likely that session: the floor stays."""
    service = make_service(feed, cache, bus, clock)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            lost_at = anyio.current_time()
            feed.fail_next_connect(slot_taken(), times=2)
            feed.drop_connection()
            await feed.wait_until(lambda: len(feed.sessions) == 2 and feed.subscribed() == SYMBOLS)
            # The policy's 5 s after the drop, then max(policy 10 / 20 s, the 15 s floor).
            assert [t - lost_at for t in feed.connect_times[1:]] == [5, 20, 40]
            tg.cancel_scope.cancel()


async def test_the_fast_slot_retry_is_bounded_in_time_then_the_floor_applies(
    feed: ScriptedQuoteFeed, cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    service = make_service(feed, cache, bus, clock)
    feed.fail_next_connect(slot_taken(), times=95)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            offsets = [t - feed.connect_times[0] for t in feed.connect_times]
            # Every second up to the 90 s window, then the usual backoff under the 15 s floor.
            assert offsets[:91] == list(range(91))
            assert [b - a for a, b in itertools.pairwise(offsets[90:])] == [15, 15, 20, 40, 80]
            tg.cancel_scope.cancel()


async def test_symbols_the_venue_left_out_of_its_ack_are_reported_and_asked_for_at_each_sync(
    cache: InMemoryPriceCache, bus: InMemoryEventBus, clock: VirtualClock
) -> None:
    """Alpaca drops a symbol it does not know from its ack, silently. It is reported
    (``status.unconfirmed``: /subscriptions and /health) and asked for again at every sync, so
    once the venue knows it (a new listing, a fixed typo upstream) it streams (was: logged once
    and never retried)."""
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"MSFT"})
    service = make_service(feed, cache, bus, clock, sync_interval_s=60.0)
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL", "BRK.B"})
            assert service.status.unconfirmed == {"MSFT"}
            asked = (
                sum(1 for _, r in feed.current.requests if "MSFT" in r.symbols())
                if feed.current
                else 0
            )
            await anyio.sleep(61)  # one sync later: asked again, still unknown
            assert feed.current is not None
            again = sum(1 for _, r in feed.current.requests if "MSFT" in r.symbols())
            assert again == asked + 1
            assert service.status.unconfirmed == {"MSFT"}
            feed.unknown_symbols = frozenset()  # the venue knows it now
            await feed.wait_until(lambda: feed.subscribed() == SYMBOLS)
            assert service.status.confirmed == SYMBOLS
            assert service.status.unconfirmed == frozenset()
            tg.cancel_scope.cancel()
