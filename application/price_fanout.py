"""PriceFanOut: price updates for many live clients (the HTTP API's Server-Sent Events).

One bus subscription serves every client, and only while there are clients: an instance with no
browser attached pays nothing. Each client holds a **latest-per-symbol slot**, never a queue: a
client that reads slower than prices change gets the newest price of each symbol (the ones it
skipped are counted as ``conflated``), so its memory is bounded by the number of symbols it asked
for, however slow it is. Per client and symbol, a price older than one already handed over is
never handed over (initial image and live updates race; the newer one wins).

Failure stays here: when the bus cannot be subscribed (Redis down), the fan-out retries with a
capped backoff and its clients keep their connection (they get the prices again once it is back);
nothing of this reaches the price stream.

Anyio only, on ports only (``EventBus``, ``PriceCache``, ``Clock``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from domain.price import Price
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, future_limit_ns, skew_ns
from ports.clock import Clock
from ports.event_bus import EventBus
from ports.price_cache import PriceCache

log = logging.getLogger(__name__)


class TooManyClients(Exception):
    """The fan-out already serves its maximum number of clients."""


@dataclass(slots=True)
class FanOutStats:
    clients: int = 0
    connected_total: int = 0
    refused_total: int = 0  # over max_clients
    dropped_total: int = 0  # stopped reading (send deadline missed)
    sent_total: int = 0
    conflated_total: int = 0
    bus_errors_total: int = 0


@dataclass(eq=False, slots=True)
class FanOutClient:
    """One client's view: ``symbols`` (``None``: every symbol) and its latest-per-symbol slot."""

    symbols: frozenset[str] | None
    max_symbols: int
    stats: FanOutStats
    pending: dict[str, Price] = field(default_factory=dict)
    handed: dict[str, Price] = field(default_factory=dict)  # symbol -> the last price taken
    ready: anyio.Event = field(default_factory=anyio.Event)
    conflated: int = 0

    def offer(self, price: Price) -> None:
        """Keep ``price`` as the latest of its symbol (never waits; older ones are ignored)."""
        symbol = price.symbol
        if self.symbols is not None and symbol not in self.symbols:
            return
        last = self.handed.get(symbol)
        if last is not None and (price.ts_event_ns < last.ts_event_ns or price == last):
            return  # older than what the client has, or the same (an image read again)
        held = self.pending.get(symbol)
        if held is not None:
            if price.ts_event_ns < held.ts_event_ns:
                return
            self.conflated += 1
            self.stats.conflated_total += 1
        elif len(self.pending) >= self.max_symbols and symbol not in self.handed:
            return  # an "everything" client: bounded by max_symbols distinct symbols
        self.pending[symbol] = price
        self.ready.set()

    def take(self) -> list[Price]:
        """Everything pending, oldest first; the slot is empty afterwards."""
        taken = sorted(self.pending.values(), key=lambda p: p.ts_event_ns)
        self.pending = {}
        self.ready = anyio.Event()
        for price in taken:
            self.handed[price.symbol] = price
        self.stats.sent_total += len(taken)
        return taken

    async def wait(self, timeout_s: float) -> list[Price]:
        """The pending prices as soon as there are some; ``[]`` after ``timeout_s`` without."""
        if not self.pending:
            with anyio.move_on_after(timeout_s):
                await self.ready.wait()
        return self.take() if self.pending else []


class PriceFanOut:
    def __init__(
        self,
        bus: EventBus,
        cache: PriceCache,
        *,
        max_clients: int = 100,
        max_symbols_per_client: int = 10_000,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 5.0,
        all_symbols: Callable[[], Collection[str]] = frozenset,
        clock: Clock | None = None,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        """With ``clock``, an initial image stamped more than ``max_future_skew_s`` ahead of
        it is not offered: it would hold back every real update of its symbol."""
        self._bus = bus
        self._clock = clock
        self._max_future_skew_ns = skew_ns(max_future_skew_s)
        self._all_symbols = all_symbols
        self._cache = cache
        self._max_clients = max_clients
        self._max_symbols = max_symbols_per_client
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._clients: set[FanOutClient] = set()
        self._changed = anyio.Event()
        self.stats = FanOutStats()

    @property
    def clients(self) -> int:
        return len(self._clients)

    @asynccontextmanager
    async def connect(self, symbols: Collection[str] | None) -> AsyncIterator[FanOutClient]:
        """A client for ``symbols`` (``None``: all), holding the cached prices of those symbols
        (its initial image) and every update from then on. Raises :class:`TooManyClients`."""
        if len(self._clients) >= self._max_clients:
            self.stats.refused_total += 1
            raise TooManyClients(
                f"{len(self._clients)} clients already (at most {self._max_clients})"
            )
        wanted = frozenset(symbols) if symbols is not None else None
        client = FanOutClient(wanted, self._max_symbols, self.stats)
        self._clients.add(client)
        self.stats.connected_total += 1
        self.stats.clients = len(self._clients)
        self._changed.set()
        try:
            yield client
        finally:
            self._clients.discard(client)
            self.stats.clients = len(self._clients)
            self._changed.set()

    def symbols_of(self, client: FanOutClient) -> Collection[str]:
        """The symbols ``client`` follows now (for "everything": those subscribed now)."""
        return client.symbols if client.symbols is not None else self._all_symbols()

    def dropped(self) -> None:
        """Count a client the server gave up on (it stopped reading)."""
        self.stats.dropped_total += 1

    async def image(self, client: FanOutClient, symbols: Iterable[str]) -> None:
        """Offer ``client`` the cached price of each of ``symbols`` (its initial image); a cache
        that cannot be read gives no image (the updates still come)."""
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return
        try:
            found = await self._cache.get_many(wanted)
        except (ConnectionError, OSError) as e:
            log.warning("price fan-out: no initial image (cache unavailable: %s)", e)
            return
        limit = None
        if self._clock is not None:
            limit = future_limit_ns(self._clock.now_ns(), self._max_future_skew_ns)
        for symbol in wanted:
            price = found.get(symbol)
            if price is not None and (limit is None or price.ts_event_ns <= limit):
                client.offer(price)

    def _want(self) -> tuple[frozenset[str], bool]:
        every = any(c.symbols is None for c in self._clients)
        named: set[str] = set()
        if not every:
            for c in self._clients:
                assert c.symbols is not None
                named |= c.symbols
        return frozenset(named), every

    def _deliver(self, prices: Sequence[Price]) -> None:
        for client in tuple(self._clients):
            for price in prices:
                client.offer(price)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the bus while there are clients, re-subscribing when what they want changes.
        Runs until cancelled; bus failures are retried, never raised."""
        task_status.started()
        failures = 0
        while True:
            while not self._clients:
                self._changed = anyio.Event()
                await self._changed.wait()
            named, every = self._want()
            self._changed = anyio.Event()
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
                    await self._changed.wait()
                    if self._want() != (named, every):
                        tg.cancel_scope.cancel()
                        return
                    self._changed = anyio.Event()

            tg.start_soon(until_changed)
            # Subscribed: anything published from now on arrives. Hand every client what the
            # cache holds, so an update published while re-subscribing is not missed.
            for client in tuple(self._clients):
                await self.image(client, self.symbols_of(client))
            async for price in prices:
                self._deliver((price,))
