"""A bounded FIFO between producers and one async consumer, dropping the OLDEST on overflow.

Every EventBus adapter hands a subscriber its prices through an :class:`Inbox`, so a slow
consumer behaves the same everywhere: it sees the latest updates, in order, memory stays flat,
and what it missed is counted (``stats.dropped``) and logged (first drop, then every 10,000).

A gap (:meth:`Inbox.gap`, e.g. one cluster shard re-subscribed) is queued in order with the
items and raised by the iterator when reached; iterating may go on after it. A gap is never
dropped on overflow.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class SubscriptionStats:
    """Counters of one subscription (read them from the event loop's thread)."""

    received: int = 0
    dropped: int = 0
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class _Gap:
    error: BaseException


class Inbox(Generic[T]):
    """Bounded FIFO between producers and the consumer; also its async iterator.

    ``deliver``/``fail``/``close`` run on the event loop's thread (a receiving thread gets
    there with ``anyio.from_thread``)."""

    def __init__(self, capacity: int, stats: SubscriptionStats, what: str) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._items: deque[T | _Gap] = deque()
        self._gaps = 0  # _Gap markers in _items (they do not count against the capacity)
        self._capacity = capacity
        self._error: BaseException | None = None
        self._closed = False
        self._waiter: anyio.Event | None = None
        self.stats = stats
        self._what = what

    def deliver(self, items: list[T]) -> None:
        if self._closed:
            return
        self.stats.received += len(items)
        self._items.extend(items)
        over = len(self._items) - self._gaps - self._capacity
        if over > 0:
            kept: list[T | _Gap] = []
            for _ in range(over):
                while type(self._items[0]) is _Gap:
                    kept.append(self._items.popleft())
                self._items.popleft()
            self._items.extendleft(reversed(kept))
            before = self.stats.dropped
            self.stats.dropped += over
            if before == 0 or before // 10_000 != self.stats.dropped // 10_000:
                log.warning(
                    "%s: consumer is behind, dropped the oldest %d updates so far",
                    self._what,
                    self.stats.dropped,
                )
        self._wake()

    def gap(self, error: BaseException) -> None:
        """Raise ``error`` from the iterator after the items delivered so far; iterating may
        go on after it (the subscription is not over)."""
        if self._closed:
            return
        self._items.append(_Gap(error))
        self._gaps += 1
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self._closed:
            self._error = error
            self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if self._items:
                await anyio.lowlevel.checkpoint()  # fairness and a cancellation point
                if self._items:
                    item = self._items.popleft()
                    if type(item) is _Gap:
                        self._gaps -= 1
                        raise item.error
                    return item  # type: ignore[return-value]
                continue
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._waiter = waiter = anyio.Event()
            await waiter.wait()
