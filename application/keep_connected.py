"""KeepConnected: one feed session at a time, re-subscribed in full after every reconnect.

The loop: CONNECTING -> (adapter) AUTHENTICATING -> subscribe the whole target set -> CONNECTED
-> read events until the session ends -> DISCONNECTED -> back off -> CONNECTING ...

- Only :class:`RetryableFeedError` is retried, with the :class:`BackoffPolicy` (its ``min_delay``
  honoured, for example while another session still holds Alpaca's single slot).
- :class:`FatalFeedError` moves to FAILED, is recorded with its reason and re-raised: the service
  stops. So does running out of ``max_attempts``. Anything else is a bug and crashes the task
  group.
- The attempt counter resets once a session has stayed up for the policy's ``reset_after_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NoReturn

import anyio

from application.status import ServiceStatus
from domain.backoff import BackoffPolicy, ReconnectBackoff, SlotRetry
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, RetryableFeedError, SymbolsRejected
from domain.market import MarketEvent, Subscriptions
from domain.subscriptions import SubscriptionPlan
from ports.clock import Clock
from ports.quote_feed import FeedSession, QuoteFeed

log = logging.getLogger(__name__)


class KeepConnected:
    def __init__(
        self,
        feed: QuoteFeed,
        clock: Clock,
        status: ServiceStatus,
        policy: BackoffPolicy,
        on_events: Callable[[Sequence[MarketEvent]], None],
        *,
        rng: Callable[[], float] | None = None,
        chunk_size: int = 400,
        on_subscribed: Callable[[frozenset[str]], None] | None = None,
        slot_retry: SlotRetry | None = None,
    ) -> None:
        self._feed = feed
        self._clock = clock
        self._status = status
        self._backoff = ReconnectBackoff(policy)
        self._on_events = on_events
        self._rng = rng
        self._chunk_size = chunk_size
        self._on_subscribed = on_subscribed
        self._slot_retry = slot_retry or SlotRetry()
        self._session: FeedSession | None = None
        self._target: frozenset[str] = frozenset()
        self._ranked: list[str] = []  # the target, best first (who stays under a limit)
        self._lock = anyio.Lock()
        self.capacity: int | None = None  # learned from a symbol-limit refusal

    @property
    def target(self) -> frozenset[str]:
        return self._target

    # -- subscription changes ---------------------------------------------------------------
    async def apply(self, plan: SubscriptionPlan, ranked: Sequence[str] = ()) -> None:
        """Make ``plan.target`` the wanted set; change the open session (if any) to match.

        Without a session the target is kept and subscribed in full on the next connect.
        ``ranked`` (best first) decides which symbols stay when the venue refuses the count.
        Feed errors here end the session the reader is on, not this call's caller.
        """
        async with self._lock:
            self._target = plan.target - self._status.rejected
            self._ranked = [s for s in ranked if s in self._target]
            self._ranked += sorted(self._target - set(self._ranked))
            session = self._session
            if session is None:
                return
            try:
                if plan.to_remove:
                    ack = await session.unsubscribe(Subscriptions.quotes(set(plan.to_remove)))
                    self._status.confirmed = ack.confirmed.symbols()
                to_add = [s for s in (ranked or sorted(plan.to_add)) if s in plan.to_add]
                # Symbols an earlier ack left out (Alpaca drops unknown ones silently): asked
                # for again at every sync, so one the venue learns (a new listing) is picked up.
                retry = sorted((self._status.unconfirmed & self._target) - plan.to_add)
                if retry:
                    log.info("asking again for %d unconfirmed symbols", len(retry))
                added = to_add + retry
                await self._subscribe(session, added)
                self._note_unconfirmed(session)
                self._status.note_subscribed(self._clock.now_ns())
                if added and self._on_subscribed is not None:
                    self._on_subscribed(frozenset(added) & self._status.confirmed)
            except RetryableFeedError as e:
                log.warning("subscription change interrupted, will resubscribe on reconnect: %s", e)

    def _note_unconfirmed(self, session: FeedSession) -> None:
        """What the venue's last ack left out of the target (not refused, not over a limit)."""
        status = self._status
        confirmed = session.confirmed.symbols()
        status.unconfirmed = frozenset(
            self._target - confirmed - status.rejected - set(status.left_out)
        )

    async def _subscribe(self, session: FeedSession, symbols: Sequence[str]) -> None:
        """Subscribe ``symbols`` (best first) in chunks; on a symbol-limit refusal, fall back
        to one at a time so the best-ranked ones fit, and report the rest as left out."""
        status = self._status
        wanted = [s for s in symbols if s not in status.rejected]
        i = 0
        one_by_one = False
        while i < len(wanted):
            size = 1 if one_by_one else self._chunk_size
            chunk = wanted[i : i + size]
            try:
                ack = await session.subscribe(Subscriptions.quotes(set(chunk)))
            except SymbolsRejected as e:
                if e.limit_exceeded and not one_by_one and len(chunk) > 1:
                    one_by_one = True
                    continue
                if e.limit_exceeded:
                    left = tuple(sorted(set(wanted[i:])))
                    self.capacity = len(session.confirmed.symbols())
                    status.left_out = tuple(sorted(set(status.left_out) | set(left)))
                    status.counters["symbols_rejected"] += len(left)
                    log.warning(
                        "venue symbol limit reached at %d symbols; left out: %s",
                        self.capacity,
                        ", ".join(left),
                    )
                    break
                status.rejected = status.rejected | e.symbols
                status.counters["symbols_rejected"] += len(e.symbols)
                log.error("venue rejected symbols %s: %s", sorted(e.symbols), e.reason)
                i += size
                continue
            status.confirmed = ack.confirmed.symbols()
            if ack.missing:
                log.warning("subscribed but not confirmed: %s", ", ".join(sorted(ack.missing)))
            i += size

    # -- the loop -----------------------------------------------------------------------------
    def _on_state(self, state: ConnectionState) -> None:
        self._status.set_state(state)

    async def run(self) -> None:
        """Stay connected until cancelled. Raises :class:`FatalFeedError` when it must stop."""
        try:
            await self._run()
        finally:
            # Cancelled (shutdown, or leadership lost): not connected any more.
            self._status.data_expected_since_ns = None
            if not self._status.connection.failed:
                self._status.confirmed = frozenset()
                self._status.set_state(ConnectionState.DISCONNECTED)

    async def _run(self) -> None:
        status = self._status
        run_started = self._clock.monotonic()
        had_session = False  # in this run (a new leader, a fresh start: see SlotRetry)
        while True:
            status.set_state(ConnectionState.CONNECTING)
            connected = False  # this attempt got a subscribed session (else nothing was lost)
            try:
                async with self._feed.connect(on_state=self._on_state) as session:
                    # Adapters that authenticate at the upgrade may skip this step.
                    status.set_state(ConnectionState.AUTHENTICATING)
                    async with self._lock:
                        self._session = session
                        await self._subscribe(session, self._ranked)
                        self._note_unconfirmed(session)
                    status.note_subscribed(self._clock.now_ns())
                    status.set_state(ConnectionState.CONNECTED)
                    connected = had_session = True
                    if self._on_subscribed is not None and status.confirmed:
                        # After every (re)connect: what was missed meanwhile comes as a snapshot.
                        self._on_subscribed(status.confirmed)
                    now = self._clock.monotonic()
                    status.connected_since = now
                    self._backoff.on_connected(now)
                    count = len(session.confirmed.symbols())
                    log.info(
                        "connected; subscribed to %d symbol%s", count, "" if count == 1 else "s"
                    )
                    await self._read(session)
            except RetryableFeedError as e:
                self._session = None
                status.connected_since = None
                status.confirmed = frozenset()
                status.unconfirmed = frozenset()
                status.set_state(ConnectionState.DISCONNECTED)
                since_start = self._clock.monotonic() - run_started
                fast = self._slot_retry.delay(
                    slot_taken=e.slot_taken, had_session=had_session, since_start_s=since_start
                )
                if fast is not None:
                    # Most likely a predecessor that froze or died holding the slot: the venue
                    # frees it at an unknown moment; look often, for a bounded time.
                    status.reconnects += 1
                    log.warning(
                        "cannot open a feed session (%s); a previous holder may not have let "
                        "go yet: retrying in %.1f s (for up to %.0f s after start)",
                        e, fast, self._slot_retry.window_s,
                    )  # fmt: skip
                    await anyio.sleep(fast)
                    continue
                delay = self._backoff.on_failure(self._rng, e.min_delay)
                if delay is None:
                    reason = f"gave up after {self._backoff.attempts - 1} reconnect attempts: {e}"
                    self._fail(
                        FatalFeedError(reason, setting="MDS_RECONNECT_MAX_ATTEMPTS", lane_only=True)
                    )
                status.reconnect_attempts = self._backoff.attempts
                status.reconnects += 1
                if connected:
                    log.warning("feed session lost (%s); reconnecting in %.1f s", e, delay)
                else:  # never connected: nothing was lost
                    log.warning("cannot open a feed session (%s); retrying in %.1f s", e, delay)
                await anyio.sleep(delay)
            except FatalFeedError as e:
                self._fail(e)
            finally:
                self._session = None

    def _fail(self, error: FatalFeedError) -> NoReturn:
        status = self._status
        status.confirmed = frozenset()
        status.set_state(ConnectionState.FAILED)
        status.fatal_error = str(error)
        raise error

    async def _read(self, session: FeedSession) -> None:
        status = self._status
        clock = self._clock
        backoff = self._backoff
        on_events = self._on_events
        async for batch in session.events():
            status.last_message_ns = clock.now_ns()
            # Only a session that followed failures needs the clock (to reset the backoff).
            if backoff.attempts and backoff.healthy_at(clock.monotonic()):
                status.reconnect_attempts = 0
            on_events(batch)
