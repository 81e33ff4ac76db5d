"""Active/standby: only the holder of a lease runs the feed (Alpaca allows one connection).

**Fencing rules.**
1. The lease is written for ``hold_s = ttl_s - retry_s`` and renewed every ``hold_s / 3``. A
   leader takes its lease to end ``hold_s`` after the moment it *sent* its last successful
   renewal (or acquisition) — never later, whatever the store says afterwards. Standbys poll
   every ``retry_s`` (``ttl_s / 10``), so one takes over at most ``ttl_s`` after a leader dies.
2. A leader whose renewal fails, errs, or does not answer stops leading at once; in any case its
   leading scope is cancelled ``margin_s`` before the end computed in rule 1. Cancelling closes
   the feed session (close frame) and flushes pending writes.
3. A standby takes the lease only after the store let it expire (or the leader released it), so
   the old leader has closed its connection before a new one can open: they never hold Alpaca's
   single slot together (no 406 between them).
4. Prices written by a stale leader cannot overwrite newer ones: cache writes are latest-wins on
   the server, so the fencing token need not travel with every write.
5. The token is an identity (instance id + random nonce), compared on renew and release. When
   the store has no record of any earlier holder (first term, or it lost its data: FLUSHALL, an
   empty restart), a new holder waits ``history_wait_s`` (one renewal period plus the margin)
   before streaming: an earlier leader that still believes it leads fails its next renewal on
   the new token within that time and stops. So at most one instance streams.
6. ``status.role`` says LEADER only while this instance streams (set when ``lead`` starts,
   cleared the moment leadership ends, before the feed closes and the writer flushes); a
   standby's lease polls drive ``status.store`` (its /health reflects its own Redis traffic);
   so does its wait for a release: one that fails while the polls answer leaves it polling
   every ``retry_s`` and degraded, said once, until a wait works again (no flip every poll).
7. A hand-over leaves no instance leading for a bounded time (rules 2 and 3 forbid overlap):
   a leader that steps down and releases wakes a standby waiting between its polls
   (``Lease.wait_released``), which takes the lease at once: two store round trips; at most
   ``handover_gap_s`` if the wake-up is lost (``release_timeout_s + retry_s``: 0.6 s at a 4 s
   TTL, 1.25 s at 10 s). Otherwise the old lease has to run out first: a leader cut off
   from the store alone, at most ``leaderless_bound_s`` (``hold_s - renew_every_s +
   retry_s``: 2.8 s at 4 s, 7 s at 10 s); after the store lost its data,
   ``leaderless_after_data_loss_s`` (``retry_s + history_wait_s``: 1.8 s at 4 s, 4.5 s at 10
   s). Each instance's /health says standby and healthy meanwhile (each is fine; the pair has
   no leader for a moment), and the MdsNoLeader alert waits a minute.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from application.status import Role, ServiceStatus, StoreState
from ports.clock import Clock
from ports.lease import Acquired, Lease

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, lease: Lease, clock: Clock, status: ServiceStatus, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._lease = lease
        self._clock = clock
        self._status = status
        self.ttl_s = ttl_s
        # A standby polls every retry_s and the lease is written for hold_s = ttl_s - retry_s,
        # so a standby takes over at most ttl_s after the leader's last renewal.
        self.retry_s = ttl_s / 10
        self.hold_s = ttl_s - self.retry_s
        self.renew_every_s = self.hold_s / 3
        self.margin_s = ttl_s / 20
        # After a history loss: one renewal period for an earlier leader to find its lease gone.
        self.history_wait_s = self.renew_every_s + self.margin_s
        # Releasing is a courtesy (the lease expires by itself): never hold a shutdown for it.
        self.release_timeout_s = min(0.25, self.margin_s)
        # A standby's wait for a release failed (its lease polls may answer): degraded until a
        # wait works again.
        self._wake_up_failing = False

    @property
    def handover_gap_s(self) -> float:
        """Longest stretch without a leader when the leader steps down and releases the lease
        (SIGTERM, a renewal refused) and the release's wake-up is lost: its release, then a
        standby's next poll (rule 7). Normally the wake-up makes it two store round trips."""
        return self.release_timeout_s + self.retry_s

    @property
    def leaderless_bound_s(self) -> float:
        """Longest stretch without a leader while a live standby reaches the store, whatever
        ended the term: the worst is a leader cut off from the store alone, which stops at its
        first failed renewal (up to ``hold_s - renew_every_s`` before its lease ends: rule 2,
        which rule 5 needs) and cannot release; the standby takes the lease at its first poll
        after the end (rule 7)."""
        return max(self.handover_gap_s, self.hold_s - self.renew_every_s + self.retry_s)

    @property
    def leaderless_after_data_loss_s(self) -> float:
        """Longest stretch without a leader after the store lost its data under a leader: a
        standby's next poll takes the empty lease, then waits ``history_wait_s`` (rule 5)."""
        return self.retry_s + self.history_wait_s

    async def run(
        self,
        lead: Callable[[], Coroutine[Any, Any, None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stand by until the lease is ours, then run ``lead()`` while it stays ours; repeat.

        ``lead`` is cancelled when leadership ends. Errors from ``lead`` propagate.
        """
        status = self._status
        status.role = Role.STANDBY
        task_status.started()
        while True:
            sent_at = self._clock.monotonic()
            try:
                acquired = await self._lease.acquire(self.hold_s)
            except ConnectionError as e:
                self._store_failed("lease store unreachable, standing by", e)
                # The whole store is down (a failed wait before was part of it): the next
                # answered poll ends this outage.
                self._wake_up_failing = False
                await anyio.sleep(self.retry_s)  # the store does not answer: just wait
                continue
            if acquired is None:
                if not self._wake_up_failing:
                    self._store_answered()
                await self._pause_between_polls()
                continue
            self._wake_up_failing = False  # a leader waits for no release
            self._store_answered()
            token = acquired.token
            try:
                await self._lead(lead, acquired, sent_at)
            finally:
                status.role = Role.STANDBY
                log.warning("leadership ended (%s); standing by", token)
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self.release_timeout_s),
                    contextlib.suppress(ConnectionError),  # then it expires by itself
                ):
                    await self._lease.release(token)

    async def _pause_between_polls(self) -> None:
        """Wait ``retry_s`` for the next poll, or less: a release by the holder (a hand-over)
        wakes this standby at once (rule 7). If that wait fails while the lease polls answer,
        the standby polls every ``retry_s`` without a wake-up and stays degraded (said once)
        until a wait works again: its state does not flip at every poll."""
        started = self._clock.monotonic()
        try:
            await self._lease.wait_released(self.retry_s)
        except ConnectionError as e:
            self._wake_up_failing = True
            self._store_failed("waiting for a lease release failed, polling without it", e)
            await anyio.sleep(max(0.0, started + self.retry_s - self._clock.monotonic()))
        else:
            if self._wake_up_failing:
                self._wake_up_failing = False
                self._store_answered()

    def _store_failed(self, what: str, error: ConnectionError) -> None:
        """A lease call failed: this instance's Redis traffic fails, so /health says so."""
        status = self._status
        if status.store is not StoreState.DEGRADED:
            log.warning("%s: %s", what, error)
        status.store = StoreState.DEGRADED
        status.store_error = str(error)

    def _store_answered(self) -> None:
        """A standby's lease poll got an answer: the store is back for this instance (the
        price writer, which also clears it, does not run on a standby)."""
        status = self._status
        if status.store is StoreState.DEGRADED:
            log.warning("lease store reachable again")
            status.store = StoreState.OK
            status.store_error = None

    async def _lead_when_safe(
        self, lead: Callable[[], Coroutine[Any, Any, None]], acquired: Acquired
    ) -> None:
        if acquired.unknown_history:
            # No record of an earlier holder: the first term, or the store lost its data while
            # a leader may still be streaming. That leader's next renewal (within renew_every_s)
            # fails on our token and it stops: wait for that before streaming.
            log.warning(
                "the lease store has no record of an earlier leader (first start, or it lost "
                "its data): waiting %.1f s before streaming",
                self.history_wait_s,
            )
            await anyio.sleep(self.history_wait_s)
        self._status.role = Role.LEADER
        log.info("became leader (%s)", acquired.token)
        await lead()

    async def _lead(
        self, lead: Callable[[], Coroutine[Any, Any, None]], acquired: Acquired, sent_at: float
    ) -> None:
        token = acquired.token
        ends_at = sent_at + self.hold_s - self.margin_s
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._lead_when_safe, lead, acquired)
            while True:
                next_renewal = min(self._clock.monotonic() + self.renew_every_s, ends_at)
                await anyio.sleep(max(0.0, next_renewal - self._clock.monotonic()))
                if self._clock.monotonic() >= ends_at:
                    break
                sent_at = self._clock.monotonic()
                renewed = False
                with anyio.move_on_after(max(0.0, ends_at - sent_at)):
                    try:
                        renewed = await self._lease.renew(token, self.hold_s)
                    except ConnectionError as e:
                        self._store_failed("lease renewal failed", e)
                if not renewed:
                    break
                ends_at = sent_at + self.hold_s - self.margin_s
            # Not leading from this instant: say so now, not after the feed closed and the
            # writer flushed (that takes up to the shutdown flush deadline).
            self._status.role = Role.STANDBY
            tg.cancel_scope.cancel()
