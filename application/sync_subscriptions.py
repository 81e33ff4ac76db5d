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
from collections.abc import Iterable, Sequence

import anyio

from application.status import ServiceStatus
from application.streams import Stream
from domain.assets import AssetClass, route
from domain.errors import PositionSourceError
from domain.features import POSITION_SYNC
from domain.subscriptions import SubscriptionPlan, plan_subscriptions, rank_symbols
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
    """Routes every desired symbol to the stream of its asset class (the position's class, else
    the symbol's shape) and plans each stream within its own capacity. Symbols of a class no
    stream serves (not in MDS_ASSET_CLASSES) are reported as ``unrouted``."""

    def __init__(
        self,
        positions: PositionSource | None,
        static_symbols: frozenset[str],
        streams: Sequence[Stream],
        status: ServiceStatus,
        *,
        interval_s: float,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not streams:
            raise ValueError("at least one stream is needed")
        self._positions = positions
        self._static = static_symbols
        self._streams = list(streams)
        self._status = status
        self._interval_s = interval_s
        self._held: dict[str, AssetClass] = {}
        self._trigger = anyio.Event()
        self._lock = anyio.Lock()
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

    @staticmethod
    def _capacity_now(stream: Stream) -> int | None:
        learned = stream.connection.capacity
        if learned is None:
            return stream.capacity
        return learned if stream.capacity is None else min(learned, stream.capacity)

    async def sync_now(self) -> SubscriptionPlan:
        """Read positions, plan, apply. When positions cannot be read, plans with the last known
        ones (so nothing is unsubscribed), records the error and raises
        :class:`PositionSourceError`. Returns the first stream's plan."""
        async with self._lock:
            status = self._status
            failure: PositionSourceError | None = None
            unexpected: Exception | None = None  # a bug, not an outage: its traceback is logged
            if self._positions is not None:
                try:
                    self._held = dict(await self._positions.open_positions())
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
            held_by_class = route(self._held, self._held)
            static_by_class = route(self._static)
            unrouted: set[str] = set()
            for cls in held_by_class.keys() | static_by_class.keys():
                if not any(stream.serves(cls) for stream in self._streams):
                    unrouted |= held_by_class.get(cls, frozenset())
                    unrouted |= static_by_class.get(cls, frozenset())
            desired: set[str] = set()
            left_out: set[str] = set()
            plans: list[SubscriptionPlan] = []
            for stream in self._streams:
                plan = await self._sync_stream(stream, held_by_class, static_by_class)
                plans.append(plan)
                desired |= stream.status.desired
                left_out.update(plan.left_out)
            status.desired = frozenset(desired)
            status.left_out = tuple(sorted(left_out))
            status.unrouted = frozenset(unrouted)
            if unrouted:
                log.warning(
                    "not streamed (asset class not in MDS_ASSET_CLASSES): %s", _some(unrouted)
                )
            if failure is not None:
                raise failure
            return plans[0]

    async def _sync_stream(
        self,
        stream: Stream,
        held_by_class: dict[AssetClass, frozenset[str]],
        static_by_class: dict[AssetClass, frozenset[str]],
    ) -> SubscriptionPlan:
        st = stream.status
        held: set[str] = set()
        static: set[str] = set()
        for cls, symbols in held_by_class.items():
            if stream.serves(cls):
                held |= symbols
        for cls, symbols in static_by_class.items():
            if stream.serves(cls):
                static |= symbols
        held_f = frozenset(held) - st.rejected
        static_f = frozenset(static) - st.rejected
        current = stream.connection.target
        capacity = self._capacity_now(stream)
        plan = plan_subscriptions(held_f, static_f, current, capacity)
        st.desired = held_f | static_f
        st.left_out = plan.left_out
        if plan.left_out:
            log.warning(
                "%s stream: symbol capacity %s reached; %d left out: %s",
                stream.name,
                capacity,
                len(plan.left_out),
                _some(plan.left_out),
            )
        if stream.disabled is not None:
            return plan
        if plan.changed:
            log.info(
                "%s subscriptions: +[%s] -[%s]",
                stream.name,
                _some(plan.to_add),
                _some(plan.to_remove),
            )
        await stream.connection.apply(plan, rank_symbols(held_f, static_f, current))
        stream.targets_changed()
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
        except BaseException:
            # Cut (the loop stops: shutdown, leadership lost): the requests waiting for this
            # sync must not take an earlier sync's plan for theirs.
            self._last_failure = PositionSourceError(
                "subscription sync stopped before it could finish"
            )
            raise
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
