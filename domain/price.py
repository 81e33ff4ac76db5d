"""Price, the record other services read, and the exact mid.

**Mid rule.** A quote gives a mid only when both sides are present and not crossed:
``bid > 0``, ``ask > 0`` and ``bid <= ask``. A locked quote (``bid == ask``) gives that price.
An empty side (price 0 or missing, common on IEX) or a crossed quote (``bid > ask``) gives no
mid: :func:`price_from_quote` returns the :class:`NoMid` reason, the caller counts it and caches
nothing, so the last good price stays in place and ages towards stale.

**Exactness.** Wire prices are doubles; each stands for the shortest decimal that round-trips
(``150.25``). The mid is the exact decimal midpoint of those decimals, returned as the double
nearest to it, so its ``repr`` and its JSON are that decimal: 150.25 / 150.27 gives ``150.26``,
never ``150.26000000000002``; 1.0001 / 1.0002 gives ``1.00015``. The fast path scales both sides
to integers of 1e-8 (exact for prices with up to 8 decimals below 2**25, 33.5 million) and
divides once, correctly rounded, by Python's int/int true division; other prices take
``decimal.Decimal``.

**JSON contract** (``price:{SYMBOL}`` and ``price.updated.{SYMBOL}``; the JSON Schema ships in the
package as ``domain/price.schema.json``)::

    {"symbol":"AAPL","bid":150.25,"ask":150.27,"mid":150.26,
     "timestamp":"2024-07-24T07:56:53.639713735Z","exchange":"IEX",
     "bid_exchange":"V","ask_exchange":"V"}

numbers as JSON numbers, ``timestamp`` the venue's time (fixed-width, nanoseconds, UTC; see
:mod:`domain.timestamps`). ``exchange`` is the SOURCE FEED the price came from (``IEX``, ``SIP``,
``DELAYED_SIP``, ``TEST``, ``SIM``, ``REPLAY``): one meaning, never a venue.
``bid_exchange`` / ``ask_exchange`` are the venue codes of each side as Alpaca sends them
(``bx`` / ``ax``, e.g. ``V`` IEX, ``Q`` Nasdaq; on SIP the two sides often differ); empty when
the source has none. The symbol is the ``symbol`` field: channel names contain the symbol's dots
(``price.updated.BRK.B``), so never split a channel name to find it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

from domain.market import Quote
from domain.timestamps import format_ns, parse_rfc3339_ns

_SCALE = 100_000_000  # 1e-8 units
_SCALE_F = 1e8
# Below 2**25 a double's spacing is under 0.5e-8, so each 1e-8 unit has its own double and the
# round trip check in _units is conclusive. (Was 9e7: at 86922784.9 neighbouring units share a
# double, the check passed with a unit off by one, and the mid came out one unit high.)
_FAST_LIMIT = float(2**25)


class NoMid(StrEnum):
    """Why a quote gives no mid."""

    EMPTY_BID = "empty_bid"
    EMPTY_ASK = "empty_ask"
    CROSSED = "crossed"


def _units(price: float) -> int | None:
    """``price`` in exact 1e-8 units, or None when it has more than 8 decimals or is too large."""
    if not 0.0 < price < _FAST_LIMIT:
        return None
    units = round(price * _SCALE_F)
    return units if units / _SCALE_F == price else None


def exact_mid(bid: float, ask: float) -> float:
    """The double nearest to the exact decimal midpoint of ``bid`` and ``ask`` (both > 0)."""
    b = _units(bid)
    a = _units(ask)
    if b is not None and a is not None:
        # (b + a) / 2 in 1e-8 units == (b + a) * 5 in 1e-9 units; int / int is correctly rounded.
        return ((b + a) * 5) / 1_000_000_000
    return float((Decimal(repr(bid)) + Decimal(repr(ask))) / 2)


def no_mid_reason(bid: float, ask: float) -> NoMid | None:
    """None when the quote gives a mid, else why not (see the module's mid rule)."""
    if not bid > 0.0:
        return NoMid.EMPTY_BID
    if not ask > 0.0:
        return NoMid.EMPTY_ASK
    if bid > ask:
        return NoMid.CROSSED
    return None


class Price(NamedTuple):
    """The latest two-sided price of a symbol, as other services read it."""

    symbol: str
    bid: float
    ask: float
    mid: float
    ts_event_ns: int
    exchange: str
    """The source feed (``IEX``, ``SIP``, ...), not a venue."""
    bid_exchange: str = ""
    """Venue code of the bid (Alpaca ``bx``)."""
    ask_exchange: str = ""
    """Venue code of the ask (Alpaca ``ax``)."""

    @property
    def timestamp(self) -> str:
        return format_ns(self.ts_event_ns)

    def to_json(self, timestamp: str | None = None) -> bytes:
        """The contract JSON, encoded once and reused for the cache and the channel.

        ``timestamp`` is ``self.timestamp`` when the caller already formatted it (it is
        needed beside the JSON for the server-side order check; formatting once saves work).
        """
        ts = format_ns(self.ts_event_ns) if timestamp is None else timestamp
        ex, bx, ax = self.exchange, self.bid_exchange, self.ask_exchange
        if not (ex.isidentifier() and bx.isidentifier() and ax.isidentifier()):
            ex, bx, ax = _text(ex), _text(bx), _text(ax)  # rare: escape what needs it
        return (
            f'{{"symbol":"{self.symbol}","bid":{self.bid!r},"ask":{self.ask!r},'
            f'"mid":{self.mid!r},"timestamp":"{ts}","exchange":"{ex}",'
            f'"bid_exchange":"{bx}","ask_exchange":"{ax}"}}'
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Price:
        """Parse the contract JSON; raises ``ValueError`` (with the field) when it does not fit."""
        try:
            obj = json.loads(data)
            symbol, bid, ask, mid = obj["symbol"], obj["bid"], obj["ask"], obj["mid"]
            ts = parse_rfc3339_ns(obj["timestamp"])
            exchange = obj["exchange"]
            # Records written before the sides were published have neither (read them still).
            bid_exchange = obj.get("bid_exchange", "")
            ask_exchange = obj.get("ask_exchange", "")
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a price record: {e}") from e
        for name, value in (("bid", bid), ("ask", ask), ("mid", mid)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"price record field {name!r} is not a number: {value!r}")
        texts = (symbol, exchange, bid_exchange, ask_exchange)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(
                "price record fields 'symbol', 'exchange', 'bid_exchange' and 'ask_exchange' "
                "must be strings"
            )
        return cls(
            symbol, float(bid), float(ask), float(mid), ts, exchange, bid_exchange, ask_exchange
        )


def _text(value: str) -> str:
    """``value`` escaped for a JSON string. Feed names and venue codes (``IEX``,
    ``DELAYED_SIP``, ``V``, empty) are identifiers, which need no escaping: the common case
    costs one ``isidentifier``."""
    if not value or value.isidentifier():
        return value
    return json.dumps(value)[1:-1]


def price_from_quote(quote: Quote, source: str) -> Price | NoMid:
    """The Price a quote gives (``exchange`` = ``source``, the feed's name), or the reason it
    gives none."""
    bid = quote.bid_price
    ask = quote.ask_price
    if bid > 0.0 and ask > 0.0 and bid <= ask:
        return Price(
            quote.symbol,
            bid,
            ask,
            exact_mid(bid, ask),
            quote.ts_event_ns,
            source,
            quote.bid_exchange,
            quote.ask_exchange,
        )
    reason = no_mid_reason(bid, ask)
    assert reason is not None
    return reason
