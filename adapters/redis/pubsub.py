"""Receiving pub/sub messages: redis-py's blocking ``PubSub`` in owned threads, handed to async
consumers through a bounded inbox.

Shape: entering :func:`pump_subscription` opens the pub/sub connection(s) in one worker-thread
hop and waits until the server has confirmed every (P/S)SUBSCRIBE, so anything published after
entry is received. Then one thread per connection (one in standalone/Sentinel, one per primary
for sharded pub/sub in a cluster) polls ``get_message(timeout=0.2)``, converts messages in the
thread (JSON parsing off the event loop) and hands them over in batches, one
``anyio.from_thread`` hop per batch. Leaving the context sets a stop flag and joins the threads
(each notices within 0.2 s) under a shielded scope; the threads close their connections.

Bounded: the :class:`adapters.inbox.Inbox` holds ``capacity`` items; on overflow the OLDEST are
dropped and counted (``stats.dropped``), so a slow consumer sees the latest updates and memory
stays flat. Order is kept for what is delivered (one connection per channel, FIFO inbox).

Failure: a lost connection is not silently re-established (the subscriber would not know it
missed messages): the consumer's iterator raises :class:`RedisUnavailable` (a
``ConnectionError``) after what was received before. In a cluster (sharded pub/sub, a
:class:`ShardRouter` given) one shard's trouble touches only its channels: when a shard's
connection is lost, or a node ends the subscription to a channel because its slot moved, a
recovery thread re-reads the slot map and re-subscribes just those channels on their current
owner (joining the connection already open to that node, or opening one), retrying with a
capped backoff while the other shards keep delivering; once they are confirmed the iterator
raises :class:`ports.event_bus.SubscriptionGap` naming their symbols, in order with the
messages, and iterating goes on. The subscription ends as a whole (``RedisUnavailable``) only
when no shard connection is left, or on an error that is not an outage. Liveness: after
``liveness_s`` of silence the thread sends a PING; no answer within another ``liveness_s``
counts as a lost connection (detects half-open TCP, which a crash on a remote host leaves
behind).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import redis
from redis.client import PubSub

from adapters.inbox import Inbox, SubscriptionStats
from adapters.redis.connection import RedisConnection, RedisUnavailable, translate

log = logging.getLogger(__name__)

T = TypeVar("T")
Message = dict[str, Any]

POLL_S = 0.2
MAX_HANDOFF = 1024
RECOVERY_FIRST_S = 0.05  # a shard's re-subscription is retried at 0.05, 0.1, ... capped at 1 s
RECOVERY_CAP_S = 1.0
_CONFIRMATIONS = frozenset({"subscribe", "psubscribe", "ssubscribe"})
_DATA = frozenset({"message", "pmessage", "smessage"})


@dataclass(eq=False)
class Opened:
    """A subscribed pub/sub connection, ready for a pump thread."""

    name: str
    pubsub: PubSub
    client: redis.Redis
    prebuffer: list[Message] = field(default_factory=list)
    rescan: Callable[[PubSub], None] | None = None
    node: str | None = None  # cluster: the primary this connection is on
    channels: set[str] = field(default_factory=set)  # cluster: the shard channels it holds

    def close(self) -> None:
        for close in (self.pubsub.close, self.client.close):
            try:
                close()
            except Exception as e:  # a dead server's socket may complain on close
                log.debug("closing pub/sub connection %s: %s", self.name, e)


class ShardRouter(Protocol):
    """What re-subscribing one shard's channels needs (cluster, sharded pub/sub)."""

    @property
    def every_primary(self) -> bool:
        """Keep a connection on every primary (a pattern's re-scans run there)."""
        ...

    def owners(self, channels: Collection[str]) -> dict[str, list[str]]:
        """Re-read the slot map; each channel's current owner (node name -> channels).
        Blocking; raises redis-py errors (an outage while the cluster re-forms)."""
        ...

    def primaries(self) -> list[str]:
        """The names of the current primaries (slot map as last read)."""
        ...

    def open(self, node: str, channels: Sequence[str]) -> Opened:
        """A new connection to ``node`` with ``channels`` subscribed and confirmed."""
        ...

    def gap(self, channels: Collection[str], reason: str) -> BaseException:
        """The error that tells the consumer these channels' updates may have been missed."""
        ...


def subscribe_and_confirm(
    pubsub: PubSub,
    *,
    channels: Sequence[str] = (),
    patterns: Sequence[str] = (),
    shard_channels: Sequence[str] = (),
    timeout_s: float,
) -> list[Message]:
    """Send the subscriptions and wait until the server confirmed each; returns any data
    messages that arrived meanwhile. Raises :class:`RedisUnavailable` past ``timeout_s``."""
    if channels:
        pubsub.subscribe(*channels)
    if patterns:
        pubsub.psubscribe(*patterns)
    for channel in shard_channels:  # one SSUBSCRIBE per channel: all must share one slot
        pubsub.ssubscribe(channel)
    expected = len(channels) + len(patterns) + len(shard_channels)
    deadline = time.monotonic() + timeout_s
    confirmed = 0
    early: list[Message] = []
    while confirmed < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RedisUnavailable(
                f"subscriptions not confirmed within {timeout_s} s ({confirmed}/{expected})"
            )
        message = pubsub.get_message(timeout=min(remaining, POLL_S))
        if message is None:
            continue
        if message["type"] in _CONFIRMATIONS:
            confirmed += 1
        else:
            early.append(message)
    return early


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(eq=False)
class _Adoption:
    """Channels a recovery asked a live shard connection to take over."""

    channels: frozenset[str]
    reason: str
    waiting: set[str] = field(default_factory=set)  # not confirmed by the server yet


class _Pump(Generic[T]):
    """One thread reading one pub/sub connection until ``stop`` is set."""

    def __init__(
        self,
        conn: RedisConnection,
        opened: Opened,
        convert: Callable[[Message], T | None],
        inbox: Inbox[T],
        token: anyio.lowlevel.EventLoopToken,
        stop: threading.Event,
        *,
        liveness_s: float,
        rescan_s: float,
        shards: _Shards[T] | None = None,
    ) -> None:
        self._conn = conn
        self._opened = opened
        self._convert = convert
        self._inbox = inbox
        self._token = token
        self._stop = stop
        self._liveness_s = liveness_s
        self._rescan_s = rescan_s
        self._shards = shards
        # Cluster only. ``pending`` and ``dead`` are guarded by ``shards.lock``; ``awaiting``
        # belongs to this thread.
        self.pending: list[_Adoption] = []
        self.awaiting: dict[str, _Adoption] = {}
        self.dead = False
        self.thread = threading.Thread(
            target=self._run, name=f"redis-pubsub-{opened.name}", daemon=True
        )

    @property
    def opened(self) -> Opened:
        return self._opened

    def _hand_off(self, batch: list[T]) -> None:
        anyio.from_thread.run_sync(self._inbox.deliver, batch, token=self._token)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            if not self._stop.is_set():
                error = translate(e, f"receiving on {self._opened.name}")
                if isinstance(error, RedisUnavailable):
                    self._conn.mark_topology_stale()
                if error is e and not isinstance(e, ConnectionError):
                    log.exception("pub/sub thread %s failed", self._opened.name)
                if self._shards is not None and isinstance(error, RedisUnavailable):
                    self._shards.lost(self, error)  # only this shard's channels
                elif self._shards is not None:
                    self._shards.fail(error)
                else:
                    with suppress(anyio.RunFinishedError):
                        anyio.from_thread.run_sync(self._inbox.fail, error, token=self._token)
        finally:
            self._opened.close()

    def _adopt(self, ps: PubSub) -> None:
        """Subscribe the channels a recovery handed to this connection (confirmed later)."""
        shards = self._shards
        assert shards is not None
        with shards.lock:
            adoptions, self.pending = self.pending, []
        for adoption in adoptions:
            for channel in sorted(adoption.channels):
                ps.ssubscribe(channel)  # one per channel: they need not share a slot
                self._opened.channels.add(channel)
                self.awaiting[channel] = adoption
            adoption.waiting.update(adoption.channels)

    def _confirmed(self, channel: str, batch: list[T]) -> None:
        adoption = self.awaiting.pop(channel, None)
        if adoption is None:
            return  # a re-scan's subscription
        adoption.waiting.discard(channel)
        if not adoption.waiting:
            assert self._shards is not None
            if batch:  # what arrived before the confirmation goes first
                self._hand_off(batch)
                batch.clear()
            self._shards.gap(adoption.channels, adoption.reason)

    def _moved(self, channel: str, batch: list[T]) -> bool:
        """The node ended our subscription to ``channel`` (its slot moved). True when this
        connection has nothing left to do."""
        if self._shards is None:
            # We never unsubscribe: say so (after what arrived before) instead of going quiet.
            if batch:
                self._hand_off(batch)
            raise RedisUnavailable(
                f"{self._opened.name}: the server ended the subscription to "
                f"{channel!r} (slot migrated); subscribe again"
            )
        if batch:
            self._hand_off(batch)
            batch.clear()
        self._opened.channels.discard(channel)
        adoption = self.awaiting.pop(channel, None)
        if adoption is not None:
            adoption.waiting.discard(channel)
        self._shards.recover(
            {channel},
            f"{channel}: slot migrated away from {self._opened.node}",
            avoid=self._opened.node,
        )
        return self._shards.retire(self)

    def _loop(self) -> None:
        ps = self._opened.pubsub
        convert = self._convert
        stop = self._stop
        batch: list[T] = []
        for message in self._opened.prebuffer:
            if message["type"] in _DATA:
                item = convert(message)
                if item is not None:
                    batch.append(item)
        if batch:
            self._hand_off(batch)
        last_heard = time.monotonic()
        ping_sent: float | None = None
        next_rescan = time.monotonic() + self._rescan_s
        shards = self._shards
        while not stop.is_set():
            if shards is not None and self.pending:  # unlocked peek; _adopt takes the lock
                self._adopt(ps)
            message = ps.get_message(timeout=POLL_S)
            now = time.monotonic()
            batch = []
            while message is not None:
                last_heard = now
                ping_sent = None
                kind = message["type"]
                if kind in _DATA:
                    item = convert(message)
                    if item is not None:
                        batch.append(item)
                elif kind == "ssubscribe" and shards is not None:
                    self._confirmed(_text(message.get("channel")), batch)
                elif kind == "sunsubscribe" and self._moved(_text(message.get("channel")), batch):
                    return
                if len(batch) >= MAX_HANDOFF:
                    break
                message = ps.get_message(timeout=0.0)
            rescan = self._opened.rescan
            if rescan is not None and now >= next_rescan:
                rescan(ps)
                next_rescan = now + self._rescan_s
            if batch:
                self._hand_off(batch)
                continue
            if ps.subscribed and now - last_heard > self._liveness_s:
                if ping_sent is None:
                    ps.ping()
                    ping_sent = now
                elif now - ping_sent > self._liveness_s:
                    raise RedisUnavailable(
                        f"pub/sub connection {self._opened.name}: no reply to PING within "
                        f"{self._liveness_s} s"
                    )


class _Shards(Generic[T]):
    """The shard connections of one cluster subscription, and the re-subscription of one
    shard's channels when its connection is lost or a channel's slot moves."""

    def __init__(
        self,
        conn: RedisConnection,
        router: ShardRouter,
        make_pump: Callable[[Opened], _Pump[T]],
        inbox: Inbox[T],
        token: anyio.lowlevel.EventLoopToken,
        stop: threading.Event,
    ) -> None:
        self.lock = threading.Lock()
        self._conn = conn
        self._router = router
        self._make_pump = make_pump
        self._inbox = inbox
        self._token = token
        self._stop = stop
        self.live: list[_Pump[T]] = []
        self.started: list[_Pump[T]] = []
        self.recoveries: list[threading.Thread] = []
        self.failed = False

    def start(self, pump: _Pump[T]) -> bool:
        with self.lock:
            if self.failed or self._stop.is_set():
                pump.opened.close()
                return False
            self.live.append(pump)
            # Finished threads are forgotten: a long subscription through many failovers
            # keeps only what may still need joining.
            self.started = [p for p in self.started if p.thread.is_alive()]
            self.started.append(pump)
        pump.thread.start()
        return True

    def fail(self, error: BaseException) -> None:
        """The subscription ends as a whole (raised after what was received)."""
        with self.lock:
            if self.failed:
                return
            self.failed = True
        with suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(self._inbox.fail, error, token=self._token)

    def gap(self, channels: Collection[str], reason: str) -> None:
        error = self._router.gap(channels, reason)
        with suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(self._inbox.gap, error, token=self._token)

    def lost(self, pump: _Pump[T], error: BaseException) -> None:
        """``pump``'s connection is gone: re-subscribe its channels elsewhere (or on the same
        node once it is back), unless no shard connection is left."""
        with self.lock:
            if pump.dead:
                return
            pump.dead = True
            self.live.remove(pump)
            orphans = set(pump.opened.channels) | set(pump.awaiting)
            for adoption in pump.pending:
                orphans |= adoption.channels
            pump.pending = []
            alone = not self.live
        if alone:
            self.fail(error)
            return
        log.warning(
            "%s lost (%s): re-subscribing its %d channels; the other shards go on",
            pump.opened.name,
            error,
            len(orphans),
        )
        self.recover(orphans, f"{pump.opened.name} lost: {error}")

    def retire(self, pump: _Pump[T]) -> bool:
        """True (and ``pump`` is no longer live) when it holds and awaits no channel."""
        if self._router.every_primary:
            return False
        with self.lock:
            if pump.pending or pump.awaiting or pump.opened.channels:
                return False
            pump.dead = True
            self.live.remove(pump)
        return True

    def recover(self, channels: set[str], reason: str, *, avoid: str | None = None) -> None:
        if not channels and not self._router.every_primary:
            return
        thread = threading.Thread(
            target=self._recover,
            args=(channels, reason, avoid),
            name="redis-pubsub-recovery",
            daemon=True,
        )
        with self.lock:
            if self.failed or self._stop.is_set():
                return
            self.recoveries = [t for t in self.recoveries if t.is_alive()]
            self.recoveries.append(thread)
        thread.start()

    def _recover(self, channels: set[str], reason: str, avoid: str | None) -> None:
        remaining = set(channels)
        delay = RECOVERY_FIRST_S
        attempts = 0
        while not self._stop.is_set() and not self.failed:
            try:
                # A node that just dropped a channel is not its owner, whatever a slot map
                # that has not caught up says (for the first few tries).
                if self._place(remaining, reason, avoid if attempts < 10 else None):
                    log.info("re-subscribed %d channels (%s)", len(channels), reason)
                    return
            except Exception as e:
                error = translate(e, "re-subscribing a shard's channels")
                if not isinstance(error, RedisUnavailable):
                    self.fail(error)
                    return
                log.debug("re-subscribing %d channels: %s; retrying", len(remaining), error)
            attempts += 1
            self._stop.wait(delay)
            delay = min(delay * 2, RECOVERY_CAP_S)

    def _place(self, remaining: set[str], reason: str, avoid: str | None) -> bool:
        """One attempt: each channel to its owner's live connection (confirmed and gapped by
        that thread) or to a new one (gapped here, before its thread starts). True when
        nothing is left to place."""
        self._conn.mark_topology_stale()
        owners = self._router.owners(remaining) if remaining else {}
        targets = dict(owners)
        if self._router.every_primary:
            for node in self._router.primaries():
                targets.setdefault(node, [])
        placed_all = True
        for node, group in targets.items():
            if node == avoid and group:
                placed_all = False
                continue
            with self.lock:
                if self.failed or self._stop.is_set():
                    return True
                lane = next((p for p in self.live if p.opened.node == node), None)
                if lane is not None:
                    if group:
                        lane.pending.append(_Adoption(frozenset(group), reason))
                    remaining.difference_update(group)
                    continue
            try:
                opened = self._router.open(node, group)
            except Exception as e:
                if not isinstance(translate(e, "re-subscribing"), RedisUnavailable):
                    raise
                log.debug("re-subscribing on %s: %s", node, e)
                placed_all = False
                continue
            if group:  # before the thread starts: what the new connection received follows
                self.gap(group, reason)
            if not self.start(self._make_pump(opened)):
                return True
            remaining.difference_update(group)
        return placed_all and not remaining


@asynccontextmanager
async def pump_subscription(
    conn: RedisConnection,
    what: str,
    open_all: Callable[[list[Opened]], None],
    convert: Callable[[Message], T | None],
    *,
    capacity: int,
    stats: SubscriptionStats,
    liveness_s: float = 5.0,
    rescan_s: float = 2.0,
    router: ShardRouter | None = None,
) -> AsyncIterator[Inbox[T]]:
    """Open the subscription (``open_all`` appends each confirmed connection to the list it is
    given, blocking, in a worker thread), run a pump thread per connection, and yield the
    inbox. Raises ``ConnectionError`` on entry when Redis cannot be reached; a single error,
    never a group. With a ``router`` (cluster), one shard's trouble is recovered alone (see
    the module docstring)."""
    inbox: Inbox[T] = Inbox(capacity, stats, what)
    opened: list[Opened] = []
    pumps: list[_Pump[T]] = []
    stop = threading.Event()
    token = anyio.lowlevel.current_token()
    shards: _Shards[T] | None = None

    def make_pump(each: Opened) -> _Pump[T]:
        return _Pump(
            conn,
            each,
            convert,
            inbox,
            token,
            stop,
            liveness_s=liveness_s,
            rescan_s=rescan_s,
            shards=shards,
        )

    if router is not None:
        shards = _Shards(conn, router, make_pump, inbox, token, stop)
    try:
        await conn.call(f"subscribe {what}", lambda: open_all(opened))
        for each in opened:
            pump = make_pump(each)
            pumps.append(pump)
            if shards is not None:
                shards.start(pump)
            else:
                pump.thread.start()
        yield inbox
    finally:
        stop.set()
        inbox.close()
        recoveries: list[threading.Thread] = []
        if shards is not None:
            with shards.lock:
                pumps = list(dict.fromkeys([*pumps, *shards.started]))
                recoveries = list(shards.recoveries)
        started = {id(p.opened) for p in pumps if p.thread.ident is not None}
        idle = [o for o in opened if id(o) not in started]
        # Shielded: the threads must be stopped even when we are being cancelled. Bounded: each
        # notices the stop flag within POLL_S (plus one socket timeout when a server hangs).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                _stop_all,
                [p.thread for p in pumps if p.thread.ident is not None] + recoveries,
                idle,
                conn.options.socket_timeout_s + 2 * POLL_S,
                limiter=anyio.CapacityLimiter(1),
            )


def _stop_all(threads: list[threading.Thread], idle: list[Opened], timeout_s: float) -> None:
    for opened in idle:
        opened.close()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("pub/sub thread %s did not stop in time", thread.name)
