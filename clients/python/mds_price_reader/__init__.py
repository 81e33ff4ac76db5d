"""Read market-data-service prices from Redis (``price:{SYMBOL}``, ``price.updated.{SYMBOL}``).

A consumer's client with a top-level name of its own: installing it puts only
``mds_price_reader`` into site-packages (the service's own packages are not for consumers).
Synchronous (redis-py); the message contract is the service's README, "Reading prices from
another service", and its JSON Schema ``domain/price.schema.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final

__all__ = ["CHANNEL_PREFIX", "KEY_PREFIX", "Price", "PriceReader", "normalize", "parse_price"]

KEY_PREFIX: Final = "price:"
CHANNEL_PREFIX: Final = "price.updated."
_FIELDS: Final = ("symbol", "bid", "ask", "mid", "timestamp", "exchange")
_MAX_SYMBOL: Final = 21


@dataclass(frozen=True, slots=True)
class Price:
    """One price as the service writes it. ``timestamp`` is the venue's time (RFC 3339, UTC,
    9 fraction digits); ``exchange`` the source feed (IEX, SIP, SIM, REPLAY...)."""

    symbol: str
    bid: float
    ask: float
    mid: float
    timestamp: str
    exchange: str
    bid_exchange: str = ""
    ask_exchange: str = ""

    def time_ns(self) -> int:
        """The venue time in nanoseconds since the epoch (all 9 digits kept)."""
        whole, _, rest = self.timestamp.rstrip("Z").partition(".")
        seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
        return seconds * 1_000_000_000 + int((rest or "0").ljust(9, "0")[:9])

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the venue time (``now_ns`` default: the wall clock)."""
        now = time.time_ns() if now_ns is None else now_ns
        return (now - self.time_ns()) / 1e9


def normalize(symbol: str) -> str:
    """``" brk.b "`` -> ``"BRK.B"``; raises ``ValueError`` for what cannot be a symbol."""
    text = symbol.strip().upper()
    if not text or len(text) > _MAX_SYMBOL or not all(c.isalnum() or c in "./-" for c in text):
        raise ValueError(f"not a symbol: {symbol[:40]!r}")
    return text


def parse_price(data: bytes | str) -> Price:
    """A price message (the value of ``price:{SYMBOL}`` or a ``price.updated.*`` message);
    raises ``ValueError`` when it is not one."""
    try:
        obj: Any = json.loads(data)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or any(name not in obj for name in _FIELDS):
        raise ValueError(f"not a price message: needs {', '.join(_FIELDS)}")
    try:
        return Price(
            symbol=str(obj["symbol"]),
            bid=float(obj["bid"]),
            ask=float(obj["ask"]),
            mid=float(obj["mid"]),
            timestamp=str(obj["timestamp"]),
            exchange=str(obj["exchange"]),
            bid_exchange=str(obj.get("bid_exchange", "")),
            ask_exchange=str(obj.get("ask_exchange", "")),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a price message: {e}") from None


class PriceReader:
    """Read-only access to the service's prices in one Redis (standalone; the URL as
    redis-py takes it, ``rediss://`` for TLS). Every call has a socket timeout
    (``timeout_s``); Redis down raises redis-py's ``ConnectionError``."""

    def __init__(self, url: str = "redis://localhost:6379/0", *, timeout_s: float = 2.0) -> None:
        import redis  # here, so importing the module needs nothing

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def get(self, symbol: str) -> Price | None:
        """The latest price of ``symbol``, or None (never written, or expired)."""
        return self.get_many([symbol]).get(normalize(symbol))

    def get_many(self, symbols: Iterable[str]) -> dict[str, Price]:
        """The latest price of each symbol that has one (one MGET)."""
        wanted = list(dict.fromkeys(normalize(s) for s in symbols))
        if not wanted:
            return {}
        values = self._redis.mget([KEY_PREFIX + s for s in wanted])
        return {s: parse_price(v) for s, v in zip(wanted, values, strict=True) if v is not None}

    def subscribe(
        self, symbols: Iterable[str] | None = None, *, timeout_s: float | None = None
    ) -> Iterator[Price]:
        """Prices as the service publishes them (``symbols``, or every symbol when None), in
        order per symbol. Ends after ``timeout_s`` without a message (None: never)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            if symbols is None:
                pubsub.psubscribe(CHANNEL_PREFIX + "*")
            else:
                pubsub.subscribe(*[CHANNEL_PREFIX + normalize(s) for s in symbols])
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                wait = 1.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    return
                message = pubsub.get_message(timeout=min(wait, 1.0))
                if message is None or message.get("type") not in ("message", "pmessage"):
                    continue
                yield parse_price(message["data"])
                if timeout_s is not None:
                    deadline = time.monotonic() + timeout_s
        finally:
            pubsub.close()

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> PriceReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
