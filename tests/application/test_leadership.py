"""Active/standby in virtual time: one leader at a time, takeover within the lease TTL."""

from __future__ import annotations

import anyio

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from adapters.memory.lease import InMemoryLease
from application.leadership import LeaderElection
from application.service import MarketDataService, ServiceConfig
from application.status import Health, Role, StoreState
from ports.lease import Acquired
from tests.application.helpers import T0, eventually, quote

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
