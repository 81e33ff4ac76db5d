"""PriceReader: how consumer services read the prices market-data-service keeps in Redis.

Public API (other services import it)::

    from adapters.redis.reader import PriceReader

    async with PriceReader("redis://localhost:6379/0") as reader:   # trio, anyio or asyncio
        aged = await reader.get("AAPL")                # AgedPrice | None
        if aged is not None and not aged.stale:
            use(aged.price.mid)
        many = await reader.get_many(["AAPL", "MSFT"])  # dict[str, AgedPrice]
        async with reader.subscribe(symbols=["AAPL"]) as prices:
            async for price in prices:                 # domain.price.Price, in order per symbol
                ...
        # Cluster: one shard's trouble raises SubscriptionGap(symbols) once those symbols are
        # subscribed again: re-read them (get_many) and keep iterating the same ``prices``.

    with PriceReader(url) as reader:                   # plain scripts, no event loop
        print(reader.get_sync("AAPL"))

Symbols are normalised as the HTTP API does: surrounding whitespace stripped, ASCII letters
upper-cased (``brk.b`` finds ``BRK.B``), then Alpaca's format checked; a malformed symbol raises
``ValueError`` (:class:`domain.errors.InvalidSymbol`) instead of silently finding nothing. Results
are keyed by the normalised symbol. Take a price's symbol from ``price.symbol`` (the message's
``symbol`` field), never by splitting a channel name: ``price.updated.BRK.B``.

Only anyio APIs are used, so the same object works under trio and asyncio (anyio runs on
both). The blocking redis-py calls run in worker threads, one hop per call. Ages are measured
against the venue timestamp and this machine's wall clock (``now_ns``); ``stale`` means older
than ``max_age_s`` (default 300 s, the cache TTL).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from adapters.redis.connection import RedisConnection, RedisMode, RedisOptions
from adapters.redis.event_bus import RedisEventBus
from adapters.redis.price_cache import DEFAULT_KEY_PREFIX, RedisPriceCache
from domain.price import Price
from domain.staleness import DEFAULT_MAX_AGE_S, DEFAULT_MAX_FUTURE_SKEW_S, AgedPrice
from domain.symbols import normalize_symbol
from ports.event_bus import PRICE_CHANNEL_PREFIX, SubscriptionGap

__all__ = ["AgedPrice", "PriceReader", "SubscriptionGap"]


class PriceReader:
    """Read-only access to ``price:{SYMBOL}`` and ``price.updated.{SYMBOL}``.

    Construction does not connect (connections open on first use). Every call raises
    ``ConnectionError`` when Redis cannot be reached within about 1-2 s; the next call after
    Redis is back succeeds. ``cluster=True`` for a Redis Cluster URL; ``mode``/``sentinels``/
    ``master_name`` for Sentinel. Close it (``close()``, ``with`` or ``async with``) when done.
    """

    def __init__(
        self,
        url: str | None,
        *,
        cluster: bool = False,
        mode: RedisMode | str | None = None,
        sentinels: Sequence[str | tuple[str, int]] = (),
        master_name: str | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        channel_prefix: str = PRICE_CHANNEL_PREFIX,
        buffer: int = 10_000,
        now_ns: Callable[[], int] = time.time_ns,
        options: RedisOptions | None = None,
    ) -> None:
        if mode is None:
            mode = RedisMode.CLUSTER if cluster else RedisMode.STANDALONE
        self._conn = RedisConnection(
            url,
            mode=RedisMode(mode),
            sentinels=sentinels,
            master_name=master_name,
            options=options,
        )
        self._cache = RedisPriceCache(
            self._conn, key_prefix=key_prefix, channel_prefix=channel_prefix
        )
        self._bus = RedisEventBus(
            self._conn, channel_prefix=channel_prefix, key_prefix=key_prefix, buffer=buffer
        )
        self.max_age_s = max_age_s
        self.max_future_skew_s = max_future_skew_s
        self._now_ns = now_ns

    def __repr__(self) -> str:
        return f"PriceReader({self._conn.redacted_url!r}, mode={self._conn.mode.value!r})"

    def _age(self, prices: dict[str, Price]) -> dict[str, AgedPrice]:
        now = self._now_ns()
        skew = self.max_future_skew_s
        return {s: AgedPrice.at(p, now, self.max_age_s, skew) for s, p in prices.items()}

    async def get(self, symbol: str) -> AgedPrice | None:
        """The cached price of ``symbol`` (normalised: ``brk.b`` finds ``BRK.B``) with its age,
        or None when absent or expired. Raises ``ValueError`` for a malformed symbol."""
        wanted = normalize_symbol(symbol)
        return (await self.get_many((wanted,))).get(wanted)

    async def get_many(self, symbols: Collection[str]) -> dict[str, AgedPrice]:
        """The cached prices of those ``symbols`` that have one (one round trip), keyed by the
        normalised symbol. Raises ``ValueError`` naming the first malformed symbol."""
        return self._age(await self._cache.get_many(_normalized(symbols)))

    def get_sync(self, symbol: str) -> AgedPrice | None:
        """Blocking :meth:`get`, for scripts without an event loop."""
        wanted = normalize_symbol(symbol)
        return self.get_many_sync((wanted,)).get(wanted)

    def get_many_sync(self, symbols: Collection[str]) -> dict[str, AgedPrice]:
        """Blocking :meth:`get_many`."""
        wanted = _normalized(symbols)
        prices = self._conn.call_sync("get_many", lambda: self._cache.get_many_sync(wanted))
        return self._age(prices)

    def subscribe(
        self, symbols: Collection[str] = (), pattern: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Price]]:
        """Live updates for ``symbols`` and/or a glob ``pattern`` over symbols (``"*"``: all).

        See :meth:`adapters.redis.event_bus.RedisEventBus.subscribe` for the guarantees (in
        order per symbol, bounded, ``ConnectionError`` from the iterator when the connection
        is lost; in a cluster a pattern is resolved from the cached keys, and one shard's
        trouble raises :class:`SubscriptionGap` for its symbols only: re-read them with
        :meth:`get_many` and keep iterating). ``symbols`` are
        normalised as in :meth:`get`; ``pattern`` is used as given."""
        return self._bus.subscribe(_normalized(symbols), pattern)

    def close(self) -> None:
        """Close the connections (idempotent)."""
        self._conn.close()

    def __enter__(self) -> PriceReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> PriceReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _normalized(symbols: Collection[str]) -> list[str]:
    if isinstance(symbols, str):  # a lone "AAPL" would otherwise read as A, A, P, L
        symbols = (symbols,)
    return list(dict.fromkeys(normalize_symbol(s) for s in symbols))
