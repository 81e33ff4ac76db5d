"""SyncSubscriptions: keep the subscribed set in step with open positions.

Every ``interval_s`` (and at once when :meth:`trigger` is called, e.g. on a
``positions.changed`` signal or ``POST /subscriptions/sync``) it reads the positions, plans the
change against the current target (positions ∪ static list, within the capacity) and applies it.
A PositionSource failure keeps the current subscriptions and is retried at the next interval.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import anyio

from application.keep_connected import KeepConnected
from application.status import ServiceStatus
from domain.errors import PositionSourceError
from domain.subscriptions import SubscriptionPlan, plan_subscriptions, rank_symbols
from ports.clock import Clock
from ports.position_source import PositionSource

log = logging.getLogger(__name__)

_SHOWN_SYMBOLS = 20


def _some(symbols: Iterable[str]) -> str:
    """At most ``_SHOWN_SYMBOLS`` symbols for a log line, and how many more there are."""
    items = sorted(symbols)
    shown = ", ".join(items[:_SHOWN_SYMBOLS])
    more = len(items) - _SHOWN_SYMBOLS
    return f"{shown} … and {more} more" if more > 0 else shown


class SyncSubscriptions:
    def __init__(
        self,
        positions: PositionSource | None,
        static_symbols: frozenset[str],
        connection: KeepConnected,
        clock: Clock,
        status: ServiceStatus,
        *,
        interval_s: float = 300.0,
        capacity: int | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._positions = positions
        self._static = static_symbols
        self._connection = connection
        self._clock = clock
        self._status = status
        self._interval_s = interval_s
        self._capacity = capacity
        self._held: frozenset[str] = frozenset()
        self._trigger = anyio.Event()
        self._lock = anyio.Lock()
        self.syncs = 0

    def trigger(self) -> None:
        """Ask for a sync as soon as possible (coalesced with one already due)."""
        self._trigger.set()

    def _capacity_now(self) -> int | None:
        learned = self._connection.capacity
        if learned is None:
            return self._capacity
        return learned if self._capacity is None else min(learned, self._capacity)

    async def sync_now(self) -> SubscriptionPlan:
        """Read positions, plan, apply. When positions cannot be read, plans with the last known
        ones (so nothing is unsubscribed), records the error and raises
        :class:`PositionSourceError`."""
        async with self._lock:
            status = self._status
            failure: PositionSourceError | None = None
            if self._positions is not None:
                try:
                    self._held = await self._positions.open_position_symbols()
                except PositionSourceError as e:
                    # Plan with the last known positions: nothing is removed, and the static
                    # list is still subscribed when the source is down at start-up.
                    failure = e
                    status.counters["position_sync_errors"] += 1
                    status.last_sync_error = str(e)
                    log.warning("positions unavailable, keeping current subscriptions: %s", e)
            if failure is None:
                status.last_sync_error = None
            static = self._static - status.rejected
            held = self._held - status.rejected
            current = self._connection.target
            plan = plan_subscriptions(held, static, current, self._capacity_now())
            status.desired = held | static
            status.left_out = plan.left_out
            status.last_sync_at = self._clock.monotonic()
            self.syncs += 1
            if plan.left_out:
                log.warning(
                    "symbol capacity %s reached; %d left out: %s",
                    self._capacity_now(),
                    len(plan.left_out),
                    _some(plan.left_out),
                )
            if plan.changed:
                log.info("subscriptions: +[%s] -[%s]", _some(plan.to_add), _some(plan.to_remove))
            await self._connection.apply(plan, rank_symbols(held, static, current))
            if failure is not None:
                raise failure
            return plan

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sync once, report started, then every ``interval_s`` or when triggered, until
        cancelled. Position-source failures are logged and retried; they never end the loop."""
        with contextlib.suppress(PositionSourceError):
            await self.sync_now()
        task_status.started()
        while True:
            with anyio.move_on_after(self._interval_s):
                await self._trigger.wait()
            self._trigger = anyio.Event()
            with contextlib.suppress(PositionSourceError):
                await self.sync_now()
