"""Market events as immutable values, venue time and receive time on each.

Quote and Trade are the hot path (tens of thousands a second), so they are ``NamedTuple``s: as
immutable as a frozen dataclass and about three times cheaper to build. The rarer events are
frozen, slotted dataclasses.

Prices are ``float``: the IEEE double nearest to the decimal the venue sent, whose ``repr`` is
that decimal (JSON and msgpack both carry binary doubles). Exact arithmetic on them lives in
:mod:`domain.price`. Timestamps are ``int`` nanoseconds since the epoch, UTC: ``ts_event_ns`` is
the venue's, ``ts_received_ns`` ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class Channel(StrEnum):
    """Subscribable stock channels; the values are Alpaca's subscribe keys."""

    QUOTES = "quotes"
    TRADES = "trades"
    BARS = "bars"
    UPDATED_BARS = "updatedBars"
    DAILY_BARS = "dailyBars"
    STATUSES = "statuses"
    LULDS = "lulds"
    IMBALANCES = "imbalances"


class Quote(NamedTuple):
    """Top of book for one symbol. A price of 0 means that side is empty (common on IEX)."""

    symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    bid_exchange: str
    ask_exchange: str
    conditions: tuple[str, ...]
    tape: str
    ts_event_ns: int
    ts_received_ns: int


class Trade(NamedTuple):
    """One print. ``trade_id`` is the venue's id, referenced by corrections and cancels."""

    symbol: str
    trade_id: int
    exchange: str
    price: float
    size: float
    conditions: tuple[str, ...]
    tape: str
    ts_event_ns: int
    ts_received_ns: int


class BarKind(StrEnum):
    MINUTE = "minute"
    DAILY = "daily"
    UPDATED = "updated"


@dataclass(frozen=True, slots=True)
class Bar:
    """An OHLCV bar; ``ts_event_ns`` is the bar's start."""

    kind: BarKind
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    vwap: float
    ts_event_ns: int
    ts_received_ns: int


@dataclass(frozen=True, slots=True)
class TradingStatus:
    """Halt / resume and other status changes (Alpaca ``s``)."""

    symbol: str
    status_code: str
    status_message: str
    reason_code: str
    reason_message: str
    tape: str
    ts_event_ns: int
    ts_received_ns: int


@dataclass(frozen=True, slots=True)
class LimitUpLimitDown:
    """LULD price bands (Alpaca ``l``)."""

    symbol: str
    limit_up: float
    limit_down: float
    indicator: str
    tape: str
    ts_event_ns: int
    ts_received_ns: int


@dataclass(frozen=True, slots=True)
class TradeCorrection:
    """A correction of an earlier trade (Alpaca ``c``)."""

    symbol: str
    exchange: str
    original_id: int
    original_price: float
    original_size: float
    corrected_id: int
    corrected_price: float
    corrected_size: float
    tape: str
    ts_event_ns: int
    ts_received_ns: int


@dataclass(frozen=True, slots=True)
class TradeCancel:
    """A cancel (``action == "C"``) or error (``"E"``) of an earlier trade (Alpaca ``x``)."""

    symbol: str
    trade_id: int
    exchange: str
    price: float
    size: float
    action: str
    tape: str
    ts_event_ns: int
    ts_received_ns: int


@dataclass(frozen=True, slots=True)
class Imbalance:
    """An order imbalance (Alpaca ``i``)."""

    symbol: str
    price: float
    tape: str
    ts_event_ns: int
    ts_received_ns: int


MarketEvent = (
    Quote
    | Trade
    | Bar
    | TradingStatus
    | LimitUpLimitDown
    | TradeCorrection
    | TradeCancel
    | Imbalance
)


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """What a session is (or should be) subscribed to, channel by channel."""

    by_channel: dict[Channel, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def quotes(cls, symbols: frozenset[str] | set[str]) -> Subscriptions:
        return cls({Channel.QUOTES: frozenset(symbols)})

    def symbols(self, channel: Channel = Channel.QUOTES) -> frozenset[str]:
        return self.by_channel.get(channel, frozenset())

    def all_symbols(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for symbols in self.by_channel.values():
            out |= symbols
        return out

    def is_empty(self) -> bool:
        return not any(self.by_channel.values())

    def __hash__(self) -> int:
        return hash(frozenset((c, s) for c, s in self.by_channel.items() if s))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subscriptions):
            return NotImplemented
        mine = {c: s for c, s in self.by_channel.items() if s}
        theirs = {c: s for c, s in other.by_channel.items() if s}
        return mine == theirs


@dataclass(frozen=True, slots=True)
class SubscriptionAck:
    """The venue's answer to a subscribe/unsubscribe: its full current set (never a diff), and
    the symbols that were asked for but are not in it."""

    confirmed: Subscriptions
    missing: frozenset[str] = frozenset()
