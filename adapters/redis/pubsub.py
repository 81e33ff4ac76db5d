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
``ConnectionError``) after what was received before. The same when a cluster node ends a
sharded subscription because the channel's slot migrated. Liveness: after ``liveness_s`` of silence
the thread sends a PING; no answer within another ``liveness_s`` counts as a lost connection
(detects half-open TCP, which a crash on a remote host leaves behind).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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

    def close(self) -> None:
        for close in (self.pubsub.close, self.client.close):
            try:
                close()
            except Exception as e:  # a dead server's socket may complain on close
                log.debug("closing pub/sub connection %s: %s", self.name, e)


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
    ) -> None:
        self._conn = conn
        self._opened = opened
        self._convert = convert
        self._inbox = inbox
        self._token = token
        self._stop = stop
        self._liveness_s = liveness_s
        self._rescan_s = rescan_s
        self.thread = threading.Thread(
            target=self._run, name=f"redis-pubsub-{opened.name}", daemon=True
        )

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
                with suppress(anyio.RunFinishedError):
                    anyio.from_thread.run_sync(self._inbox.fail, error, token=self._token)
        finally:
            self._opened.close()

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
        while not stop.is_set():
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
                elif kind == "sunsubscribe":
                    # We never unsubscribe: the server dropped a shard channel because its slot
                    # migrated. Say so (after what arrived before) instead of going quiet.
                    if batch:
                        self._hand_off(batch)
                    raise RedisUnavailable(
                        f"{self._opened.name}: the server ended the subscription to "
                        f"{message.get('channel')!r} (slot migrated); subscribe again"
                    )
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
) -> AsyncIterator[Inbox[T]]:
    """Open the subscription (``open_all`` appends each confirmed connection to the list it is
    given, blocking, in a worker thread), run a pump thread per connection, and yield the
    inbox. Raises ``ConnectionError`` on entry when Redis cannot be reached; a single error,
    never a group."""
    inbox: Inbox[T] = Inbox(capacity, stats, what)
    opened: list[Opened] = []
    pumps: list[_Pump[T]] = []
    stop = threading.Event()
    token = anyio.lowlevel.current_token()
    try:
        await conn.call(f"subscribe {what}", lambda: open_all(opened))
        for each in opened:
            pump = _Pump(
                conn, each, convert, inbox, token, stop, liveness_s=liveness_s, rescan_s=rescan_s
            )
            pumps.append(pump)
            pump.thread.start()
        yield inbox
    finally:
        stop.set()
        inbox.close()
        started = {id(p._opened) for p in pumps}
        idle = [o for o in opened if id(o) not in started]
        # Shielded: the threads must be stopped even when we are being cancelled. Bounded: each
        # notices the stop flag within POLL_S (plus one socket timeout when a server hangs).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                _stop_all,
                pumps,
                idle,
                conn.options.socket_timeout_s + 2 * POLL_S,
                limiter=anyio.CapacityLimiter(1),
            )


def _stop_all(pumps: list[_Pump[Any]], idle: list[Opened], timeout_s: float) -> None:
    for opened in idle:
        opened.close()
    deadline = time.monotonic() + timeout_s
    for pump in pumps:
        pump.thread.join(max(0.0, deadline - time.monotonic()))
        if pump.thread.is_alive():
            log.warning("pub/sub thread %s did not stop in time", pump.thread.name)
