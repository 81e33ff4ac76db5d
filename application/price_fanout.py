"""PriceFanOut: price updates for many live clients (the HTTP API's Server-Sent Events).

Where the prices come from depends on whether this instance publishes them:

- **This instance streams** (the leader, or the only instance): the price writer hands every
  batch it published to :meth:`PriceFanOut.published` (inside :meth:`PriceFanOut.fed_locally`),
  in-process, and the fan-out does not touch the bus: a published price costs it a few dict
  updates, no decoding and no encoding (a price is encoded when a client first takes it).
- **It does not** (a standby, or a leader between terms): it follows the bus, so any instance
  can serve the stream. One bus subscription serves every client, and only while there are
  clients: an instance with no browser attached pays nothing.

Either way it keeps **one table of the latest price per symbol** (each encoded at most once,
whatever the number of clients) in update order; a client does not receive prices one by one,
it asks "what changed since I last looked?" and gets each changed symbol's latest price once.
So the cost of a price update does not grow with the number of clients, a client that reads
slower than prices change gets the newest price of each symbol (the updates it skipped are
counted as ``conflated``), and a client's memory is bounded by the symbols it asked for, however
slow it is. An older price never follows a newer one of the same symbol.

A client's first look gives it the current price of each of its symbols (its initial image):
what the table holds, completed from the cache for symbols the table does not have yet. Each
switch between the two sources (and each re-subscription) refreshes the table from the cache,
so a price published during the switch is not missed.

Failure stays here: when the bus cannot be subscribed (Redis down), the fan-out retries with a
capped backoff and its clients keep their connection (they get the prices again once it is back);
nothing of this reaches the price stream.

Anyio only, on ports only (``EventBus``, ``PriceCache``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from domain.price import Price
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, future_limit_ns, skew_ns
from ports.clock import Clock
from ports.event_bus import EventBus, SubscriptionGap
from ports.price_cache import PriceCache

log = logging.getLogger(__name__)


class TooManyClients(Exception):
    """The fan-out already serves its maximum number of clients."""


@dataclass(slots=True)
class FanOutStats:
    clients: int = 0
    connected_total: int = 0
    refused_total: int = 0  # over max_clients
    dropped_total: int = 0  # stopped reading (their writes blocked past the deadline)
    sent_total: int = 0  # prices handed to clients
    conflated_total: int = 0  # updates a client skipped because a newer one replaced them
    bus_errors_total: int = 0
    bus_gaps_total: int = 0  # one shard's symbols re-read from the cache, the rest went on
    symbols_over_cap: int = 0  # updates of symbols beyond max_symbols, not kept
    future_refused: int = 0  # stamped beyond the allowed clock skew, not kept


@dataclass(slots=True)
class _Entry:
    price: Price
    payload: bytes | None  # encoded when a client first takes it
    seq: int  # the fan-out's update number when this price arrived
    updates: int  # how many prices of this symbol the table has taken


@dataclass(eq=False, slots=True)
class FanOutClient:
    """One client: ``symbols`` (``None``: every symbol) and where it is in the update order."""

    hub: PriceFanOut
    symbols: frozenset[str] | None
    seen_seq: int = 0
    seen_updates: dict[str, int] = field(default_factory=dict)  # symbol -> updates at last take
    conflated: int = 0

    def take(self) -> list[tuple[Price, bytes]]:
        """The latest price of each of this client's symbols that changed since the last take
        (all of them the first time), oldest first."""
        return self.hub._take(self)

    async def wait(self, timeout_s: float) -> list[tuple[Price, bytes]]:
        """:meth:`take`, waiting up to ``timeout_s`` for a change of one of its symbols first;
        ``[]`` if none came. Only an update of its own symbols wakes it."""
        taken = self.take()
        with anyio.move_on_after(timeout_s):
            while not taken:
                await self.hub._wait_for_change(self)
                taken = self.take()
        return taken


class PriceFanOut:
    """``encode`` turns a price into what clients are sent (for SSE, the whole event); it runs
    at most once per price, whatever the number of clients, and only for a price a client
    takes (one replaced before anyone looked is never encoded)."""

    def __init__(
        self,
        bus: EventBus,
        cache: PriceCache,
        *,
        encode: Callable[[Price], bytes],
        max_clients: int = 100,
        max_symbols: int = 10_000,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 5.0,
        all_symbols: Callable[[], Collection[str]] = frozenset,
        clock: Clock | None = None,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        """With ``clock``, a price stamped more than ``max_future_skew_s`` ahead of it (from the
        cache or the bus) is not taken: it would hold back every real update of its symbol."""
        self._bus = bus
        self._clock = clock
        self._max_future_skew_ns = skew_ns(max_future_skew_s)
        self._cache = cache
        self._encode = encode
        self._max_clients = max_clients
        self._max_symbols = max_symbols
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._all_symbols = all_symbols
        self._clients: set[FanOutClient] = set()
        self._latest: dict[str, _Entry] = {}  # in update order: the newest last
        self._seq = 0
        # Clients waiting for a change, woken only by their symbols' updates.
        self._waiting_all: dict[FanOutClient, anyio.Event] = {}
        self._waiting: dict[str, dict[FanOutClient, anyio.Event]] = {}
        self._wishes = anyio.Event()  # the clients' symbols (or the source) changed
        self._wanted: frozenset[str] | None = frozenset()  # the clients' symbols; None: all
        self._local = False  # this instance's writer feeds the table (see fed_locally)
        self.stats = FanOutStats()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- clients ----------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self, symbols: Collection[str] | None) -> AsyncIterator[FanOutClient]:
        """A client for ``symbols`` (``None``: all). Raises :class:`TooManyClients`."""
        if len(self._clients) >= self._max_clients:
            self.stats.refused_total += 1
            raise TooManyClients(
                f"{len(self._clients)} clients already (at most {self._max_clients})"
            )
        client = FanOutClient(self, frozenset(symbols) if symbols is not None else None)
        self._clients.add(client)
        self.stats.connected_total += 1
        self.stats.clients = len(self._clients)
        self._wishes_changed()
        try:
            yield client
        finally:
            self._clients.discard(client)
            self.stats.clients = len(self._clients)
            self._wishes_changed()
            if not self._clients:
                self._latest.clear()  # nobody to serve: the table would only go stale
            elif self._wanted is not None:
                # Symbols nobody follows any more would only go stale in the table (fed
                # locally, their updates are not taken): a client asking for one later gets it
                # from the cache.
                for symbol in [s for s in self._latest if s not in self._wanted]:
                    del self._latest[symbol]

    def _wishes_changed(self) -> None:
        named, every = self._want()
        self._wanted = None if every else named
        self._wishes.set()

    def symbols_of(self, client: FanOutClient) -> Collection[str]:
        """The symbols ``client`` follows now (for "everything": those subscribed now)."""
        return client.symbols if client.symbols is not None else self._all_symbols()

    def dropped(self) -> None:
        """Count a client the server gave up on (it stopped reading)."""
        self.stats.dropped_total += 1

    async def image(self, symbols: Iterable[str], *, refresh: bool = False) -> None:
        """Complete the table from the cache for ``symbols`` it does not hold (a client's
        initial image; ``refresh``: read them all, a newer cached price replaces the table's).
        A cache that cannot be read gives no image (the updates still come)."""
        wanted = [s for s in dict.fromkeys(symbols) if refresh or s not in self._latest]
        if not wanted:
            return
        try:
            found = await self._cache.get_many(wanted)
        except (ConnectionError, OSError) as e:
            log.warning("price fan-out: no initial image (cache unavailable: %s)", e)
            return
        for symbol in wanted:
            price = found.get(symbol)
            if price is not None:
                self.update(price)

    def update(self, price: Price) -> None:
        """Take ``price`` as its symbol's latest unless the table holds a newer one (or it is
        stamped in the future)."""
        self._update(price, self._future_limit())

    def _future_limit(self) -> int | None:
        if self._clock is None:
            return None
        return future_limit_ns(self._clock.now_ns(), self._max_future_skew_ns)

    def _update(self, price: Price, future_limit: int | None) -> None:
        if future_limit is not None and price.ts_event_ns > future_limit:
            self.stats.future_refused += 1
            return
        symbol = price.symbol
        entry = self._latest.pop(symbol, None)
        if entry is not None:
            if price.ts_event_ns < entry.price.ts_event_ns or price == entry.price:
                self._latest[symbol] = entry  # keep the newer one (and its place)
                return
            updates = entry.updates + 1
        elif len(self._latest) >= self._max_symbols:
            self.stats.symbols_over_cap += 1
            return
        else:
            updates = 1
        self._seq += 1
        self._latest[symbol] = _Entry(price, None, self._seq, updates)
        if self._waiting_all:
            for event in self._waiting_all.values():
                event.set()
            self._waiting_all.clear()
        waiting = self._waiting.pop(symbol, None)
        if waiting:
            for event in waiting.values():
                event.set()

    async def _wait_for_change(self, client: FanOutClient) -> None:
        event = anyio.Event()
        symbols = client.symbols
        if symbols is None:
            self._waiting_all[client] = event
        else:
            for symbol in symbols:
                self._waiting.setdefault(symbol, {})[client] = event
        try:
            await event.wait()
        finally:
            if symbols is None:
                self._waiting_all.pop(client, None)
            else:
                for symbol in symbols:
                    waiting = self._waiting.get(symbol)
                    if waiting is not None:
                        waiting.pop(client, None)
                        if not waiting:
                            del self._waiting[symbol]

    def _take(self, client: FanOutClient) -> list[tuple[Price, bytes]]:
        if self._seq == client.seen_seq:
            return []
        wanted = client.symbols
        seen = client.seen_updates
        taken: list[tuple[Price, bytes]] = []
        conflated = 0
        for entry in reversed(self._latest.values()):  # newest first, stop at what it saw
            if entry.seq <= client.seen_seq:
                break
            symbol = entry.price.symbol
            if wanted is not None and symbol not in wanted:
                continue
            before = seen.get(symbol)
            if before is not None:
                conflated += max(0, entry.updates - before - 1)
            seen[symbol] = entry.updates
            payload = entry.payload
            if payload is None:
                payload = entry.payload = self._encode(entry.price)
            taken.append((entry.price, payload))
        client.seen_seq = self._seq
        taken.reverse()
        client.conflated += conflated
        self.stats.conflated_total += conflated
        self.stats.sent_total += len(taken)
        return taken

    # -- fed by this instance's writer ------------------------------------------------------

    @contextmanager
    def fed_locally(self) -> Iterator[Callable[[Sequence[Price]], None]]:
        """While inside, this instance publishes the prices itself (it streams): hand every
        batch it published to the returned callback (:meth:`published`), and the fan-out does
        not follow the bus (:meth:`run` leaves it and refreshes the table from the cache once).
        Leaving (leadership lost, shutdown) returns it to the bus. Raises ``RuntimeError`` when
        already inside: one writer feeds it."""
        if self._local:
            raise RuntimeError("the price fan-out is already fed by this instance's writer")
        self._local = True
        self._wishes.set()
        try:
            yield self.published
        finally:
            self._local = False
            self._wishes.set()

    def published(self, prices: Sequence[Price]) -> None:
        """Take a batch of prices this instance just published (applied by the cache, in
        publish order). Synchronous and cheap: without clients one check; else, per price of
        a symbol some client follows, one table update (no encoding)."""
        if not self._clients:
            return
        wanted = self._wanted
        limit = self._future_limit()
        update = self._update
        if wanted is None:
            for price in prices:
                update(price, limit)
        else:
            for price in prices:
                if price.symbol in wanted:
                    update(price, limit)

    def _symbols_to_refresh(self, named: frozenset[str], every: bool) -> set[str]:
        return set(named if not every else self._all_symbols()) | set(self._latest)

    async def _fed_locally(self) -> None:
        """While this instance's writer feeds the table and there are clients: no bus. The
        table is refreshed from the cache once, for what was published before the writer fed
        it (by the previous leader, or while the bus was being left)."""
        await self.image(self._symbols_to_refresh(*self._want()), refresh=True)
        while self._local and self._clients:
            await self._wishes.wait()
            self._wishes = anyio.Event()

    # -- the bus ----------------------------------------------------------------------------

    def _want(self) -> tuple[frozenset[str], bool]:
        every = any(c.symbols is None for c in self._clients)
        named: set[str] = set()
        if not every:
            for c in self._clients:
                assert c.symbols is not None
                named |= c.symbols
        return frozenset(named), every

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """While there are clients: follow the bus, re-subscribing when what they want changes,
        unless this instance's writer feeds the table (:meth:`fed_locally`). Runs until
        cancelled; bus failures are retried, never raised."""
        task_status.started()
        failures = 0
        while True:
            while not self._clients:
                self._wishes = anyio.Event()
                await self._wishes.wait()
            named, every = self._want()
            self._wishes = anyio.Event()
            if self._local:
                await self._fed_locally()
                continue
            try:
                await self._follow(named, every)
                failures = 0
            except (ConnectionError, OSError) as e:
                failures += 1
                self.stats.bus_errors_total += 1
                delay = min(self._retry_cap_s, self._retry_base_s * 2 ** min(failures - 1, 10))
                if failures == 1:
                    log.warning("price fan-out: bus unavailable (%s); retrying", e)
                await anyio.sleep(delay)

    async def _follow(self, named: frozenset[str], every: bool) -> None:
        """One bus subscription, until the clients' wishes change."""
        subscription = (
            self._bus.subscribe(pattern="*") if every else self._bus.subscribe(symbols=named)
        )
        async with subscription as prices, anyio.create_task_group() as tg:

            async def until_changed() -> None:
                while True:
                    await self._wishes.wait()
                    if self._local or self._want() != (named, every) or not self._clients:
                        tg.cancel_scope.cancel()
                        return
                    self._wishes = anyio.Event()

            tg.start_soon(until_changed)
            # Subscribed: anything published from now on arrives. Complete the table from the
            # cache, so an update published while (re)subscribing is not missed.
            await self.image(self._symbols_to_refresh(named, every), refresh=True)
            while True:
                try:
                    async for price in prices:
                        self.update(price)
                    return
                except SubscriptionGap as gap:
                    # One shard's symbols may have missed updates (they are subscribed again):
                    # re-read just those; the subscription and the other symbols go on.
                    self.stats.bus_gaps_total += 1
                    await self.image(gap.symbols, refresh=True)
