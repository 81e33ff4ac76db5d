"""Active/standby in virtual time: one leader at a time, takeover within the lease TTL."""

from __future__ import annotations

import anyio

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from adapters.memory.lease import InMemoryLease
from application.leadership import LeaderElection
from application.service import MarketDataService, ServiceConfig
from application.status import Role
from tests.application.helpers import T0, eventually, quote

SYMBOLS = frozenset({"AAPL", "MSFT"})


class ProcessLease:
    """One process's view of the shared lease; after ``kill`` it says nothing more (kill -9:
    no release, the lease has to expire)."""

    def __init__(self, shared: InMemoryLease) -> None:
        self.shared = shared
        self.killed = False

    async def acquire(self, ttl_s: float) -> int | None:
        return await self.shared.acquire(ttl_s)

    async def renew(self, token: int, ttl_s: float) -> bool:
        return await self.shared.renew(token, ttl_s)

    async def release(self, token: int) -> None:
        if not self.killed:
            await self.shared.release(token)


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
