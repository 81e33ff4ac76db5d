"""PriceCache in a dict, with TTL against the injected clock and latest-wins writes."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from domain.price import Price
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, future_limit_ns, skew_ns
from ports.clock import Clock


class InMemoryPriceCache:
    """``values`` holds the latest price per symbol (expired or not: tests read it);
    ``get``/``get_many`` honour the TTL. Set ``fail_writes`` to simulate an outage."""

    def __init__(
        self,
        clock: Clock,
        ttl_s: float = 300.0,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._clock = clock
        self._max_future_skew_ns = skew_ns(max_future_skew_s)
        self._ttl_s = ttl_s
        self.values: dict[str, Price] = {}
        self.expires_at: dict[str, float] = {}
        self.fail_writes = False
        self.writes = 0  # put_many calls that succeeded
        self.refused_older = 0

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def _live(self, symbol: str, now: float) -> Price | None:
        price = self.values.get(symbol)
        if price is None or self.expires_at[symbol] <= now:
            return None
        return price

    async def put_many(self, prices: Sequence[Price]) -> Sequence[Price]:
        if self.fail_writes:
            raise ConnectionError("in-memory cache: writes failing (simulated outage)")
        now = self._clock.monotonic()
        # A cached price stamped beyond this is not trusted: replaceable, as in Redis.
        limit = future_limit_ns(self._clock.now_ns(), self._max_future_skew_ns)
        applied: list[Price] = []
        for price in prices:
            current = self._live(price.symbol, now)
            if current is not None and price.ts_event_ns < current.ts_event_ns <= limit:
                self.refused_older += 1
                continue
            self.values[price.symbol] = price
            self.expires_at[price.symbol] = now + self._ttl_s
            applied.append(price)
        self.writes += 1
        return applied

    async def get(self, symbol: str) -> Price | None:
        return self._live(symbol, self._clock.monotonic())

    async def get_many(self, symbols: Collection[str]) -> dict[str, Price]:
        now = self._clock.monotonic()
        out: dict[str, Price] = {}
        for symbol in symbols:
            price = self._live(symbol, now)
            if price is not None:
                out[symbol] = price
        return out
