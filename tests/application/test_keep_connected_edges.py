"""KeepConnected on its own (no service around it), in virtual time: the status it reports at
each step, subscription changes against a venue limit and refusals, the listener of new
symbols, giving up, the fast slot retry, and the subscribe chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from adapters.clock import VirtualClock
from adapters.memory import ScriptedQuoteFeed
from adapters.memory.feed import ScriptedSession
from application.keep_connected import KeepConnected
from application.status import ServiceStatus
from domain.backoff import BackoffPolicy
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, FeedUnavailable, SymbolsRejected
from domain.market import MarketEvent, SubscriptionAck, Subscriptions
from domain.subscriptions import SubscriptionPlan
from tests.application.helpers import T0, eventually, quote

S = 1_000_000_000


class Keeper:
    """A KeepConnected with a recording event handler and new-symbols listener."""

    def __init__(self, feed: Any, clock: VirtualClock, **kw: Any) -> None:
        self.feed = feed
        self.clock = clock
        self.status = ServiceStatus(started_at=0.0)
        self.events: list[Sequence[MarketEvent]] = []
        self.announced: list[frozenset[str]] = []
        kw.setdefault("on_subscribed", self.announced.append)
        self.keep = KeepConnected(
            feed, clock, self.status, kw.pop("policy", BackoffPolicy()), self.events.append, **kw
        )

    async def change(self, symbols: Iterable[str], ranked: Sequence[str] = ()) -> None:
        """Make ``symbols`` the target (the plan a sync would make from the current one)."""
        target = frozenset(symbols)
        current = self.keep.target
        plan = SubscriptionPlan(target, target - current, current - target, ())
        await self.keep.apply(plan, ranked)


def requests(feed: ScriptedQuoteFeed, session: int = 0) -> list[tuple[str, list[str]]]:
    return [(a, sorted(r.symbols())) for a, r in feed.sessions[session].requests]


# -- the status a session leaves -------------------------------------------------------------


async def test_the_status_follows_a_session_from_connect_to_drop_to_cancel(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"U"})
    k = Keeper(feed, clock)
    await k.change({"A", "U"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            await anyio.sleep(10)
            tg.start_soon(k.keep.run)
            await feed.wait_until(lambda: feed.subscribed() == {"A"})
            await eventually(lambda: k.status.connected)
            assert k.status.connected_since == 10.0
            assert k.status.data_expected_since_ns == clock.now_ns() == T0 + 10 * S
            assert (k.status.confirmed, k.status.unconfirmed) == (frozenset("A"), frozenset("U"))
            await anyio.sleep(2)
            feed.push(quote("A", 1.0, 1.02))
            await eventually(lambda: bool(k.events))
            assert k.status.last_message_ns == T0 + 12 * S
            feed.drop_connection()
            await eventually(lambda: k.status.state is ConnectionState.DISCONNECTED)
            # Waiting to reconnect: nothing is claimed as connected or confirmed.
            waiting = k.status
            assert waiting.connected_since is None
            assert (waiting.confirmed, waiting.unconfirmed) == (frozenset(), frozenset())
            # A change made meanwhile is kept for the next session (no session to change now).
            await k.change({"A", "B", "U"})
            assert len(feed.sessions) == 1
            await feed.wait_until(lambda: feed.subscribed() == {"A", "B"})
            assert requests(feed, 1) == [("subscribe", ["A", "B", "U"])]
            tg.cancel_scope.cancel()
    assert k.status.state is ConnectionState.DISCONNECTED
    assert k.status.confirmed == frozenset()
    assert k.status.data_expected_since_ns is None
    # Stopped (leadership lost): a change is kept for the next run, no session is touched.
    await k.change({"A", "B", "C", "U"})
    assert k.keep.target == {"A", "B", "C", "U"}
    assert len(feed.sessions[1].requests) == 1


async def test_a_connection_without_symbols_yet_subscribes_them_when_a_plan_comes(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock)
    k = Keeper(feed, clock)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await eventually(lambda: k.status.connected)
            assert feed.sessions[0].requests == []
            assert k.status.data_expected_since_ns is None  # nothing subscribed: no data due
            await anyio.sleep(20)
            now = clock.now_ns()
            await k.change({"A"})
            assert feed.subscribed() == {"A"}
            subscribed = k.status
            assert subscribed.data_expected_since_ns == now
            tg.cancel_scope.cancel()


class SlowHandshakeFeed:
    """The scripted feed, with the venue's handshake (after it reports AUTHENTICATING) held
    until ``release`` is set."""

    def __init__(self, clock: VirtualClock) -> None:
        self.inner = ScriptedQuoteFeed(clock)
        self.release = anyio.Event()

    @asynccontextmanager
    async def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AsyncIterator[ScriptedSession]:
        async with self.inner.connect(on_state) as session:
            await self.release.wait()
            yield session


async def test_the_adapters_handshake_states_reach_the_status(clock: VirtualClock) -> None:
    feed = SlowHandshakeFeed(clock)
    k = Keeper(feed, clock)
    await k.change({"A"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await eventually(lambda: len(feed.inner.connect_times) == 1)
            await anyio.sleep(1)
            assert k.status.state is ConnectionState.AUTHENTICATING  # reported by the adapter
            feed.release.set()
            await eventually(lambda: k.status.connected)
            tg.cancel_scope.cancel()


async def test_a_fatal_error_mid_session_fails_with_its_reason_and_nothing_confirmed(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock)
    k = Keeper(feed, clock)
    await k.change({"A"})
    error = FatalFeedError("auth revoked", code=402, setting="ALPACA_API_KEY")
    caught: list[FatalFeedError] = []

    async def run() -> None:
        try:
            await k.keep.run()
        except FatalFeedError as e:
            caught.append(e)

    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await feed.wait_until(lambda: feed.subscribed() == {"A"})
            feed.drop_connection(error)
    assert caught == [error]
    assert k.status.state is ConnectionState.FAILED
    assert k.status.fatal_error == "auth revoked (code 402); check ALPACA_API_KEY"
    assert k.status.confirmed == frozenset()


async def test_giving_up_is_a_lane_only_failure_naming_the_attempts_and_the_setting(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock)
    feed.fail_next_connect(FeedUnavailable("cannot connect: connection refused"), times=10)
    k = Keeper(feed, clock, policy=BackoffPolicy(max_attempts=2))
    await k.change({"A"})
    with anyio.fail_after(1000), pytest.raises(FatalFeedError) as caught:
        await k.keep.run()
    assert caught.value.lane_only is True  # this stream stops; the others go on
    assert caught.value.setting == "MDS_RECONNECT_MAX_ATTEMPTS"
    assert str(caught.value) == (
        "gave up after 2 reconnect attempts: cannot connect: connection refused; "
        "check MDS_RECONNECT_MAX_ATTEMPTS"
    )
    assert k.status.fatal_error == str(caught.value)


async def test_the_fast_slot_retry_window_counts_from_the_runs_start_and_each_is_a_reconnect(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock)
    feed.fail_next_connect(
        FeedUnavailable("connection limit exceeded", code=406, min_delay=15.0, slot_taken=True),
        times=3,
    )
    k = Keeper(feed, clock)
    await k.change({"A"})
    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            await anyio.sleep(100)  # the run starts long after the loop's clock did
            tg.start_soon(k.keep.run)
            await feed.wait_until(lambda: feed.subscribed() == {"A"})
            assert [t - 100 for t in feed.connect_times] == [0, 1, 2, 3]
            assert k.status.reconnects == 3
            tg.cancel_scope.cancel()


# -- subscribing: chunks, a venue limit, refusals, the listener ------------------------------


async def test_a_target_of_401_symbols_is_subscribed_in_requests_of_400_and_1(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock)
    k = Keeper(feed, clock)
    symbols = [f"S{i:03d}" for i in range(401)]
    await k.change(symbols, ranked=symbols)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await eventually(lambda: k.status.connected)
            tg.cancel_scope.cancel()
    assert [(a, len(s)) for a, s in requests(feed)] == [("subscribe", 400), ("subscribe", 1)]
    assert requests(feed)[1] == ("subscribe", ["S400"])  # the worst-ranked comes last


async def test_a_change_over_the_venue_limit_keeps_the_best_ranked_and_counts_every_left_out(
    clock: VirtualClock,
) -> None:
    feed = ScriptedQuoteFeed(clock, symbol_limit=2)
    k = Keeper(feed, clock)
    await k.change({"AAPL"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await feed.wait_until(lambda: feed.subscribed() == {"AAPL"})
            # Two more, ZZZ ranked before AAA: together they pass the limit, so one at a time.
            await k.change({"AAPL", "ZZZ", "AAA"}, ranked=["AAPL", "ZZZ", "AAA"])
            assert feed.subscribed() == {"AAPL", "ZZZ"}
            assert k.status.left_out == ("AAA",)
            assert k.status.counters["symbols_rejected"] == 1
            # One more, alone: refused once, not asked for twice.
            await k.change({"AAPL", "ZZZ", "AAA", "BBB"}, ranked=["AAPL", "ZZZ", "AAA", "BBB"])
            assert list(k.status.left_out) == ["AAA", "BBB"]
            assert k.status.counters["symbols_rejected"] == 2
            tg.cancel_scope.cancel()
    assert requests(feed)[1:] == [
        ("subscribe", ["AAA", "ZZZ"]),
        ("subscribe", ["ZZZ"]),
        ("subscribe", ["AAA"]),
        ("subscribe", ["BBB"]),
    ]
    assert k.keep.capacity == 2


class RefusingFeed(ScriptedQuoteFeed):
    """The scripted feed whose sessions refuse any subscribe request naming an ``invalid``
    symbol (SymbolsRejected, code 400): the whole request is refused."""

    def __init__(self, clock: VirtualClock, invalid: set[str]) -> None:
        super().__init__(clock)
        self.invalid = invalid

    @asynccontextmanager
    async def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AsyncIterator[ScriptedSession]:
        async with super().connect(on_state) as session:
            subscribe = session.subscribe

            async def refusing(request: Subscriptions) -> SubscriptionAck:
                bad = request.symbols() & self.invalid
                if bad:
                    session.requests.append(("subscribe", request))
                    raise SymbolsRejected("invalid symbol", frozenset(bad), code=400)
                return await subscribe(request)

            session.subscribe = refusing  # type: ignore[method-assign]
            yield session


async def test_a_refused_chunk_is_skipped_once_and_the_chunks_after_it_are_still_subscribed(
    clock: VirtualClock,
) -> None:
    feed = RefusingFeed(clock, invalid={"E", "H"})
    k = Keeper(feed, clock, chunk_size=2)
    symbols = ["A", "B", "C", "D", "E", "F", "G"]
    await k.change(symbols, ranked=symbols)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await eventually(lambda: k.status.connected)
            assert requests(feed) == [
                ("subscribe", ["A", "B"]),
                ("subscribe", ["C", "D"]),
                ("subscribe", ["E", "F"]),  # refused for E
                ("subscribe", ["G"]),
            ]
            assert feed.subscribed() == {"A", "B", "C", "D", "G"}
            assert k.status.rejected == {"E"}
            assert k.status.unconfirmed == {"F"}  # asked for again at the next change
            assert k.status.counters["symbols_rejected"] == 1
            await k.change([*symbols, "H"], ranked=[*symbols, "H"])
            assert k.status.rejected == {"E", "H"}
            assert k.status.counters["symbols_rejected"] == 2
            tg.cancel_scope.cancel()


async def test_the_listener_hears_of_newly_confirmed_symbols_only(clock: VirtualClock) -> None:
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"U"})
    k = Keeper(feed, clock)
    await k.change({"A", "B"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await feed.wait_until(lambda: feed.subscribed() == {"A", "B"})
            await k.change({"A"})  # a removal: nothing new to announce
            assert k.status.confirmed == {"A"}
            await k.change({"A", "C", "U"})  # U: the venue leaves it out of its ack
            tg.cancel_scope.cancel()
    assert k.announced == [{"A", "B"}, {"C"}]


async def test_a_session_with_nothing_confirmed_announces_nothing(clock: VirtualClock) -> None:
    feed = ScriptedQuoteFeed(clock, unknown_symbols={"U"})
    k = Keeper(feed, clock)
    await k.change({"U"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await eventually(lambda: k.status.connected)
            assert k.status.unconfirmed == {"U"}
            tg.cancel_scope.cancel()
    assert k.announced == []


async def test_without_a_listener_sessions_and_changes_go_on(clock: VirtualClock) -> None:
    feed = ScriptedQuoteFeed(clock)
    k = Keeper(feed, clock, on_subscribed=None)
    await k.change({"A"})
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            tg.start_soon(k.keep.run)
            await feed.wait_until(lambda: feed.subscribed() == {"A"})
            await k.change({"A", "B"})
            assert feed.subscribed() == {"A", "B"}
            tg.cancel_scope.cancel()
