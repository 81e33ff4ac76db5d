"""SyncSubscriptions: keep the subscribed set in step with open positions.

Every ``interval_s`` (and at once when :meth:`trigger` is called, e.g. on a
``positions.changed`` signal or ``POST /subscriptions/sync``) it reads the positions, plans the
change against the current target (positions ∪ static list, within the capacity) and applies it.
A PositionSource failure (or any error of the source: position sync is optional and fails
alone) keeps the current subscriptions, is logged once per outage, marks the feature
``position_sync`` failing (``/health`` degraded) and is retried at the next interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anyio

from application.keep_connected import KeepConnected
from application.status import ServiceStatus
from domain.errors import PositionSourceError
from domain.features import POSITION_SYNC
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
        # Coalescing of requests (see request): syncs the loop started and finished, the last
        # result, and an event set (then replaced) each time one finishes.
        self._looping = False
        self._started = 0
        self._finished = 0
        self._finished_event = anyio.Event()
        self._last_plan: SubscriptionPlan | None = None
        self._last_failure: PositionSourceError | None = None

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
            unexpected: Exception | None = None  # a bug, not an outage: its traceback is logged
            if self._positions is not None:
                try:
                    self._held = await self._positions.open_position_symbols()
                except PositionSourceError as e:
                    failure = e
                except Exception as e:
                    # Position sync is optional: even a bug in its adapter fails alone (the
                    # traceback is logged once per outage, below), prices flow on.
                    failure = PositionSourceError(
                        f"position source failed: {type(e).__name__}: {e}"
                    )
                    unexpected = e
                if failure is not None:
                    # Plan with the last known positions: nothing is removed, and the static
                    # list is still subscribed when the source is down at start-up.
                    status.counters["position_sync_errors"] += 1
                    status.last_sync_error = str(failure)
                    if status.features.fail(POSITION_SYNC, str(failure)):
                        log.error(
                            "positions unavailable, keeping current subscriptions (prices are "
                            "not affected; retried every sync): %s",
                            failure,
                            exc_info=unexpected,
                        )
                    else:
                        log.debug("positions still unavailable: %s", failure)
            if failure is None:
                status.last_sync_error = None
                if status.features.recover(POSITION_SYNC):
                    log.warning("positions readable again")
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

    async def request(self) -> SubscriptionPlan:
        """Sync soon and return that sync's plan (``POST /subscriptions/sync``). Coalesced: at
        most one sync runs and one is pending, so any number of requests made while one runs
        share the ONE sync that follows it (never a position read per request). Raises
        :class:`PositionSourceError` like :meth:`sync_now`, also when the loop stops (no longer
        leading) before that sync finished. Without the :meth:`run` loop, syncs here and now."""
        if not self._looping:
            return await self.sync_now()
        wanted = self._started + 1  # the next sync to start: after the one running, if any
        self.trigger()
        while self._finished < wanted:
            if not self._looping:
                raise PositionSourceError("subscription sync stopped before it could run")
            await self._finished_event.wait()
        if self._last_failure is not None:
            raise self._last_failure
        assert self._last_plan is not None
        return self._last_plan

    async def _sync_round(self) -> None:
        self._started += 1
        try:
            self._last_plan = await self.sync_now()
            self._last_failure = None
        except PositionSourceError as e:
            self._last_failure = e
        finally:
            self._finished += 1
            done, self._finished_event = self._finished_event, anyio.Event()
            done.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sync once, report started, then every ``interval_s`` or when triggered, until
        cancelled. Position-source failures are logged and retried; they never end the loop.
        Triggers that arrive while a sync runs coalesce into one sync after it."""
        self._looping = True
        try:
            await self._sync_round()
            task_status.started()
            while True:
                with anyio.move_on_after(self._interval_s):
                    await self._trigger.wait()
                self._trigger = anyio.Event()
                await self._sync_round()
        finally:
            self._looping = False
            self._finished_event.set()  # waiting requests see the loop has stopped
