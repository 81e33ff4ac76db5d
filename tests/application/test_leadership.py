"""Active/standby in virtual time: one leader at a time, takeover within the lease TTL."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from adapters.memory.lease import InMemoryLease
from application.leadership import LeaderElection
from application.service import MarketDataService, ServiceConfig
from application.status import Health, Role, ServiceStatus, StoreState
from ports.lease import Acquired
from tests.application.helpers import T0, eventually, quote
from tests.application.spies import SpyLease

SYMBOLS = frozenset({"AAPL", "MSFT"})


class ProcessLease:
    """One process's view of the shared lease; after ``kill`` it says nothing more (kill -9:
    no release, the lease has to expire)."""

    def __init__(self, shared: InMemoryLease) -> None:
        self.shared = shared
        self.killed = False

    async def acquire(self, ttl_s: float) -> Acquired | None:
        return await self.shared.acquire(ttl_s)

    async def renew(self, token: str, ttl_s: float) -> bool:
        return await self.shared.renew(token, ttl_s)

    async def release(self, token: str) -> None:
        if not self.killed:
            await self.shared.release(token)

    async def wait_released(self, timeout_s: float) -> None:
        await self.shared.wait_released(timeout_s)


class Instance:
    def __init__(
        self,
        clock: VirtualClock,
        lease: InMemoryLease,
        cache: InMemoryPriceCache,
        bus: InMemoryEventBus,
    ) -> None:
        self.feed = ScriptedQuoteFeed(clock)
        config = ServiceConfig(static_symbols=SYMBOLS, symbol_limit=None)
        self.service = MarketDataService(self.feed, cache, bus, clock, config)
        self.lease = ProcessLease(lease)
        self.election = LeaderElection(self.lease, clock, self.service.status, ttl_s=10.0)
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self.election.run(self.service.run)

    def kill(self) -> None:
        self.lease.killed = True
        self.scope.cancel()


def role(instance: Instance) -> Role:
    return instance.service.status.role


def overlap_free(a: Instance, b: Instance) -> bool:
    return not (a.feed.current is not None and b.feed.current is not None)


async def test_only_one_instance_connects_and_a_standby_takes_over_within_the_ttl(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    lease = InMemoryLease(clock)
    a, b = Instance(clock, lease, cache, bus), Instance(clock, lease, cache, bus)
    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await eventually(lambda: a.feed.subscribed() == SYMBOLS)
            tg.start_soon(b.run)
            await anyio.sleep(60)  # renewals keep A in charge; B never connects
            assert a.service.status.role is Role.LEADER
            assert b.service.status.role is Role.STANDBY and b.feed.connect_times == []

            # kill -9 the leader: no release, no close; the lease must run out first.
            expiry = lease.expires_at
            a.kill()
            killed_at = anyio.current_time()
            await eventually(lambda: b.feed.subscribed() == SYMBOLS)
            assert anyio.current_time() - killed_at <= 10.0
            assert b.feed.connect_times[0] >= expiry  # never both at once
            assert role(b) is Role.LEADER
            b.feed.push(quote("AAPL", 10.0, 10.02, T0 + 5))
            await eventually(lambda: "AAPL" in cache.values)
            tg.cancel_scope.cancel()


async def test_a_leader_that_cannot_renew_closes_its_connection_before_the_lease_ends(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    lease = InMemoryLease(clock)
    a, b = Instance(clock, lease, cache, bus), Instance(clock, lease, cache, bus)
    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await eventually(lambda: a.feed.subscribed() == SYMBOLS)
            tg.start_soon(b.run)
            lease.fail = True  # A loses the store (and so does B, for now)
            expiry = lease.expires_at
            await eventually(lambda: a.feed.current is None)
            assert anyio.current_time() < expiry  # closed before the lease ran out
            assert role(a) is Role.STANDBY
            lease.fail = False
            await eventually(lambda: a.feed.current is not None or b.feed.current is not None)
            await anyio.sleep(30)
            assert overlap_free(a, b)
            tg.cancel_scope.cancel()


async def test_after_the_store_loses_its_data_at_most_one_instance_streams(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    """Issue 11, defect 6: the store loses the lease and its history (FLUSHALL, an empty
    restart) while A leads. B takes the empty lease; A's next renewal compares identities and
    fails, so A stops; B streams only after waiting one renewal period (no record of an earlier
    holder). Sampled every 50 ms of virtual time: never both connected; then exactly one
    leader, for good."""
    lease = InMemoryLease(clock)
    a, b = Instance(clock, lease, cache, bus), Instance(clock, lease, cache, bus)
    both: list[float] = []

    async def watch() -> None:
        while True:
            if not overlap_free(a, b):
                both.append(anyio.current_time())
            await anyio.sleep(0.05)

    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await eventually(lambda: a.feed.subscribed() == SYMBOLS)
            tg.start_soon(b.run)
            tg.start_soon(watch)
            await anyio.sleep(5)
            lease.lose_data()
            await anyio.sleep(60)
            assert both == [], f"both instances connected at {both[:5]}"
            leaders = [i for i in (a, b) if role(i) is Role.LEADER]
            assert len(leaders) == 1
            assert leaders[0].feed.current is not None
            tg.cancel_scope.cancel()


class FailingCache(InMemoryPriceCache):
    down = False

    async def put_many(self, prices):  # type: ignore[no-untyped-def]
        if self.down:
            raise ConnectionError("store down (simulated)")
        return await super().put_many(prices)


async def test_the_role_is_standby_from_the_moment_leadership_ends(
    clock: VirtualClock, bus: InMemoryEventBus
) -> None:
    """Issue 11 (HA handover): when A's renewals fail it stops streaming at once and says
    ``standby`` from then on, not only after the writer's shutdown flush (up to 1 s against
    a store that is down)."""
    lease = InMemoryLease(clock)
    cache = FailingCache(clock, ttl_s=300.0)
    a = Instance(clock, lease, cache, bus)
    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await eventually(lambda: a.feed.subscribed() == SYMBOLS)
            cache.down = True
            lease.fail = True
            a.feed.push(quote("AAPL", 10.0, 10.02, T0 + 5))  # pending: the flush will retry
            await eventually(lambda: a.feed.current is None)
            assert role(a) is Role.STANDBY
            tg.cancel_scope.cancel()


async def test_a_standbys_health_follows_its_lease_polls(
    clock: VirtualClock, cache: InMemoryPriceCache, bus: InMemoryEventBus
) -> None:
    """Issue 11, defect 7: a standby's /health reflects its own Redis traffic: degraded (redis
    degraded) while its lease polls fail, healthy within one poll after the store is back; so
    does an ex-leader's (its writer no longer runs to clear the state)."""
    lease = InMemoryLease(clock)
    a, b = Instance(clock, lease, cache, bus), Instance(clock, lease, cache, bus)
    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await eventually(lambda: a.feed.subscribed() == SYMBOLS)
            tg.start_soon(b.run)
            await anyio.sleep(3)
            assert b.service.status.health() is Health.HEALTHY
            lease.fail = True
            await eventually(lambda: b.service.status.store is StoreState.DEGRADED)
            assert b.service.status.health() is Health.DEGRADED
            await eventually(lambda: role(a) is Role.STANDBY)  # A could not renew either
            assert a.service.status.health() is Health.DEGRADED
            lease.fail = False
            back = anyio.current_time()
            await eventually(lambda: all(i.service.status.store is StoreState.OK for i in (a, b)))
            assert anyio.current_time() - back <= a.election.retry_s + 0.1
            tg.cancel_scope.cancel()


# -- the election's own timeline, against a lease that keeps no lease of its own ----------------
# ttl 10 s: a standby polls every 1 s, the lease is written for 9 s and renewed every 3 s, the
# margin is 0.5 s (a leader stops 8.5 s after it sent its last good renewal), the history wait
# 3.5 s, and a release is given up after 0.25 s.


class Leading:
    """The ``lead`` coroutine: records when each term starts and when it is cancelled."""

    def __init__(self, status: ServiceStatus) -> None:
        self.status = status
        self.started: list[float] = []
        self.ended: list[float] = []
        self.roles: list[Role] = []  # the role each term saw when it started
        self.end_roles: list[Role] = []  # ... and when it was cancelled

    async def __call__(self) -> None:
        self.started.append(anyio.current_time())
        self.roles.append(self.status.role)
        try:
            await anyio.sleep_forever()
        finally:
            self.ended.append(anyio.current_time())
            self.end_roles.append(self.status.role)


class StoreChanges(ServiceStatus):
    """A status that records every change of ``store``, even a flip and back in one instant."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "store" and value is not self.__dict__.get("store", value):
            self.__dict__.setdefault("store_changes", []).append(value)
        super().__setattr__(name, value)

    @property
    def store_changes(self) -> list[StoreState]:
        changes: list[StoreState] = self.__dict__.get("store_changes", [])
        return changes


class Election:
    def __init__(self, ttl_s: float = 10.0) -> None:
        self.lease = SpyLease()
        self.status = StoreChanges(started_at=0.0)
        self.election = LeaderElection(self.lease, VirtualClock(), self.status, ttl_s=ttl_s)
        self.lead = Leading(self.status)
        self.scope = anyio.CancelScope()
        self.returned_at: float | None = None
        self.t0 = 0.0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self.t0 = anyio.current_time()
        task_status.started()
        with self.scope:
            await self.election.run(self.lead)
        self.returned_at = anyio.current_time() - self.t0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """The election running (within 100 s of virtual time), stopped when the block ends."""
        with anyio.fail_after(100):
            async with anyio.create_task_group() as tg:
                await tg.start(self.run)
                yield tg
                tg.cancel_scope.cancel()

    def role(self) -> Role:  # a call: mypy narrows attributes across awaits
        return self.status.role

    def store(self) -> StoreState:
        return self.status.store

    def store_error(self) -> str | None:
        return self.status.store_error

    def at(self, times: list[float]) -> list[float]:
        """``times`` since the election started, rounded to the microsecond."""
        return [round(t - self.t0, 6) for t in times]


async def test_the_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^ttl_s must be > 0, got 0$"):
        LeaderElection(SpyLease(), VirtualClock(), ServiceStatus(started_at=0.0), ttl_s=0)
    short = LeaderElection(SpyLease(), VirtualClock(), ServiceStatus(started_at=0.0), ttl_s=0.5)
    assert short.hold_s == pytest.approx(0.45)


async def test_a_standby_polls_every_tenth_of_the_ttl_a_leader_renews_every_third_of_it() -> None:
    e = Election()
    e.lease.grant = False
    async with e.running():
        await anyio.sleep(2.5)
        assert e.role() is Role.STANDBY
        e.lease.grant = True
        await anyio.sleep(10)  # acquired at 3, renewed at 6, 9 and 12
        calls = [(op, token, ttl) for _, op, token, ttl in e.lease.calls]
        assert [c for c in calls if c[0] != "wait_released"] == [
            ("acquire", None, 9.0), ("acquire", None, 9.0), ("acquire", None, 9.0),
            ("acquire", None, 9.0), ("renew", "spy:1", 9.0), ("renew", "spy:1", 9.0),
            ("renew", "spy:1", 9.0),
        ]  # fmt: skip
        assert e.at(e.lease.times("acquire")) == [0, 1, 2, 3]
        assert e.at(e.lease.times("wait_released")) == [0, 1, 2]  # 1 s each
        assert e.at(e.lease.times("renew")) == [6, 9, 12]
        assert e.at(e.lead.started) == [3] and e.lead.ended == []
        assert e.lead.roles == [Role.LEADER] and e.role() is Role.LEADER


async def test_with_no_record_of_an_earlier_leader_it_waits_a_renewal_period_and_margin() -> None:
    e = Election()
    e.lease.unknown_history = True
    async with e.running():
        await anyio.sleep(3.49)
        assert e.lead.started == [] and e.role() is Role.STANDBY
        await anyio.sleep(1)
        assert e.at(e.lead.started) == [3.5] and e.lead.roles == [Role.LEADER]


@pytest.mark.parametrize(
    ("acquire_delay_s", "renew_delay_s", "ended_at"),
    [(8.0, 0.0, 8.5), (0.0, 5.0, 11.5)],
    ids=["acquisition", "renewal"],
)
async def test_a_lease_answered_late_counts_from_when_it_was_asked_for(
    acquire_delay_s: float, renew_delay_s: float, ended_at: float
) -> None:
    """Fencing rule 1: the lease ends 9 s after the request was SENT; leadership ends 0.5 s
    before that, however late the answer came, and nothing is renewed past that point."""
    e = Election()
    e.lease.acquire_delay_s = acquire_delay_s
    e.lease.renew_delay_s = renew_delay_s
    async with e.running():
        await eventually(lambda: e.lead.ended != [])
        assert e.at(e.lead.ended)[0] == ended_at
        assert all(t < ended_at for t in e.at(e.lease.times("renew")))
        assert e.lead.end_roles[0] is Role.STANDBY


@pytest.mark.parametrize(("ttl_s", "ended_at"), [(10.0, 8.5), (1.0, 0.85)])
async def test_a_renewal_that_never_answers_ends_leadership_the_margin_before_the_lease_ends(
    ttl_s: float, ended_at: float
) -> None:
    """Acquired at 0 for 9 s (0.9 s): the renewal at 3 s (0.3 s) hangs; leadership ends at
    8.5 s (0.85 s), the margin before the lease the store may have extended ends."""
    e = Election(ttl_s)
    e.lease.renew_delay_s = math.inf
    async with e.running():
        await anyio.sleep(ttl_s)
        assert e.at(e.lease.times("renew"))[0] == pytest.approx(ttl_s * 0.3)
        assert e.at(e.lead.ended)[0] == pytest.approx(ended_at)
        assert e.lead.end_roles[0] is Role.STANDBY


@pytest.mark.parametrize("fails", [False, True], ids=["lost", "store-down"])
async def test_a_renewal_refused_or_failed_ends_leadership_at_once(
    fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused (another holder): leadership ends at once, the store is fine. Failed (store
    unreachable): leadership ends at once too, the store is degraded with the error, said once
    in the log."""
    e = Election()
    e.lease.renew_answer = False
    with caplog.at_level(logging.WARNING, "application.leadership"):
        async with e.running():
            await anyio.sleep(2)
            e.lease.fail = fails
            await eventually(lambda: e.lead.ended != [])
            assert e.at(e.lead.ended)[0] == 3.0 and e.lead.end_roles[0] is Role.STANDBY
            if fails:
                assert e.store() is StoreState.DEGRADED
                assert e.store_error() == SpyLease.ERROR
            else:
                assert e.store() is StoreState.OK and e.store_error() is None
    renewal_lines = [r.getMessage() for r in caplog.records if "renewal" in r.getMessage()]
    assert renewal_lines == ([f"lease renewal failed: {SpyLease.ERROR}"] if fails else [])


async def test_leaving_releases_the_lease_shielded_a_hanging_release_holds_it_0_25_s() -> None:
    """Shutdown while leading: the lease is released with our token (a standby takes over at
    its next poll, not at expiry), even though the election is being cancelled; a store that
    does not answer holds the exit 0.25 s at most."""
    for release_delay_s, returned_at in ((0.0, 5.0), (5.0, 5.25)):
        e = Election()
        e.lease.release_delay_s = release_delay_s
        with anyio.fail_after(100):
            async with anyio.create_task_group() as tg:
                await tg.start(e.run)
                await anyio.sleep(5)
                e.scope.cancel()
                await eventually(lambda: e.returned_at is not None)  # noqa: B023
        assert e.returned_at == pytest.approx(returned_at)
        assert e.at(e.lead.ended) == [5.0] and e.role() is Role.STANDBY
        released = [token for _, op, token, _ in e.lease.calls if op == "release"]
        assert released == (["spy:1"] if release_delay_s == 0 else [])


async def test_a_lease_store_outage_degrades_a_standby_once_and_its_recovery_clears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = Election()
    e.lease.grant = False
    e.lease.fail = True
    with caplog.at_level(logging.WARNING, "application.leadership"):
        async with e.running():
            await anyio.sleep(3.5)  # four polls fail
            assert e.at(e.lease.times("acquire")) == [0, 1, 2, 3]
            assert e.store() is StoreState.DEGRADED
            assert e.store_error() == SpyLease.ERROR
            e.lease.fail = False
            await anyio.sleep(1)
            assert e.store() is StoreState.OK and e.store_error() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"lease store unreachable, standing by: {SpyLease.ERROR}",
        "lease store reachable again",
    ]


async def test_a_standby_whose_wait_for_a_release_keeps_failing_is_degraded_once_not_each_poll(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease answers, but waiting for a release between polls (the hand-over wake-up)
    keeps failing: the standby polls every retry_s as without a wake-up, and is degraded with
    the error from the first failure until a wait works again: one change and one log line
    each way (was: OK at every answered poll, degraded at every failed wait, both lines each
    second)."""
    e = Election()
    e.lease.grant = False
    e.lease.fail_waits = True
    with caplog.at_level(logging.WARNING, "application.leadership"):
        async with e.running():
            await anyio.sleep(5.5)
            assert e.at(e.lease.times("acquire")) == [0, 1, 2, 3, 4, 5]
            assert e.store() is StoreState.DEGRADED
            assert e.store_error() == SpyLease.ERROR
            assert e.status.store_changes == [StoreState.DEGRADED]
            assert len(caplog.records) == 1 and SpyLease.ERROR in caplog.records[0].getMessage()
            e.lease.fail_waits = False
            await anyio.sleep(2)  # the wait at 6 works (it returns at 7)
            assert e.store() is StoreState.OK and e.store_error() is None
            assert e.status.store_changes == [StoreState.DEGRADED, StoreState.OK]
            assert e.at(e.lease.times("acquire")) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert [r.getMessage() for r in caplog.records][1:] == ["lease store reachable again"]


async def test_a_standby_whose_wait_for_a_release_fails_still_polls_every_retry_s() -> None:
    """Without a working wake-up the standby keeps the poll cadence of rule 1 (retry_s =
    ttl_s / 10: 0.4 s at a 4 s TTL), counted from the start of each pause: no floor of its
    own slows the takeover."""
    e = Election(ttl_s=4.0)
    e.lease.grant = False
    e.lease.fail_waits = True
    async with e.running():
        await anyio.sleep(1.7)
        assert e.at(e.lease.times("acquire")) == [0, 0.4, 0.8, 1.2, 1.6]


async def test_an_ex_leader_left_degraded_by_its_writer_is_ok_at_its_first_answered_poll() -> None:
    """A leader's writer marked the store degraded (a failed write) and then the leadership
    ended (renewal refused: another instance holds the lease). On a standby no writer clears
    that state: the first lease poll that answers does, at once, not after that pause's wait
    for a release (retry_s later)."""
    e = Election()
    async with e.running():
        await eventually(lambda: e.role() is Role.LEADER)
        e.status.store = StoreState.DEGRADED  # as the price writer sets it
        e.status.store_error = "write failed (scripted)"
        polls = len(e.lease.times("acquire"))
        e.lease.renew_answer = False  # the next renewal is refused: leadership ends
        e.lease.grant = False  # another instance holds the lease
        await eventually(lambda: e.store() is StoreState.OK)
        answered_at = e.lease.times("acquire")[polls]  # the first poll as a standby
        # OK with that answer (within eventually's 0.01 s step), not retry_s (1 s) later
        assert anyio.current_time() - answered_at < 0.1
        assert e.role() is Role.STANDBY and e.store_error() is None


async def test_a_standby_started_with_its_store_degraded_is_ok_at_its_first_answered_poll() -> None:
    """The store was degraded before the election began (a start against an unreachable
    Redis): the first lease poll that answers clears it at once, not after a wait."""
    e = Election()
    e.lease.grant = False
    e.status.store = StoreState.DEGRADED
    e.status.store_error = "unreachable at start (scripted)"
    async with e.running():
        await eventually(lambda: e.store() is StoreState.OK)
        assert anyio.current_time() - e.lease.times("acquire")[0] < 0.1


async def test_a_store_outage_first_seen_by_the_wait_for_a_release_clears_at_the_next_answered_poll(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A standby spends its pauses waiting for a release, so a dead store is often seen there
    first; once a lease poll fails too the whole store is down, and the first answered poll
    after it clears the state (within retry_s of the store coming back, not one more wait)."""
    e = Election()
    e.lease.grant = False
    with caplog.at_level(logging.WARNING, "application.leadership"):
        async with e.running():
            await anyio.sleep(0.5)
            e.lease.fail_waits = True  # the wait at 1 fails first
            await anyio.sleep(1)
            e.lease.fail = True  # then the polls at 2 and 3 fail too
            await anyio.sleep(2)
            assert e.store() is StoreState.DEGRADED
            e.lease.fail = e.lease.fail_waits = False
            await anyio.sleep(1)  # the poll at 4 answers
            assert e.store() is StoreState.OK and e.store_error() is None
            assert e.status.store_changes == [StoreState.DEGRADED, StoreState.OK]
    assert len(caplog.records) == 2
