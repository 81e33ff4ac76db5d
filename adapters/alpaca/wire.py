"""Alpaca market-data stream v2 wire format: frames in, domain events out (the hot path).

A frame is a JSON text frame or a msgpack binary frame holding a list of messages, each a map
with a type ``T``. Decoding is one pass: ``orjson.loads`` / ``msgpack.unpackb`` and one loop
that dispatches on ``T`` and builds the domain values positionally. Sample payloads::

    {"T":"q","S":"AMD","bx":"U","bp":87.66,"bs":1,"ax":"Q","ap":87.68,"as":4,
     "t":"2021-02-22T15:51:45.335689322Z","c":["R"],"z":"C"}                       -> Quote
    {"T":"t","i":96921,"S":"AAPL","x":"D","p":126.55,"s":1,
     "t":"2021-02-22T15:51:44.208Z","c":["@","I"],"z":"C"}                          -> Trade
    {"T":"b","S":"SPY","o":388.985,"h":389.13,"l":388.975,"c":389.12,"v":49378,
     "n":461,"vw":389.062639,"t":"2021-02-22T19:15:00Z"}       -> Bar (also "d", "u")
    {"T":"s","S":"AAPL","sc":"H","sm":"Trading Halt","rc":"T12","rm":"...",
     "t":"2021-02-22T19:15:00Z","z":"C"}                                    -> TradingStatus
    {"T":"l","S":"IONM","u":3.24,"d":2.65,"i":"B","t":"...","z":"C"}     -> LimitUpLimitDown
    {"T":"c","S":"EEM","x":"M","oi":1,"op":39.1582,"os":440000,"oc":[],"ci":2,
     "cp":39.1809,"cs":440000,"cc":[],"z":"B","t":"..."}                   -> TradeCorrection
    {"T":"x","S":"GOOGL","i":465,"x":"D","p":105.31,"s":300,"a":"C","z":"C","t":"..."}
                                                                              -> TradeCancel
    {"T":"i","S":"INAQU","p":9.12,"z":"C","t":"..."}                              -> Imbalance
    {"T":"success","msg":"connected"}, {"T":"error","code":402,"msg":"auth failed"},
    {"T":"subscription","quotes":["AAPL"],...}                       -> control (dict as-is)

Rules:
- The crypto stream (``/v1beta3/crypto/us``) and the option stream (``/v1beta1/{indicative|
  opra}``) speak the same format: a crypto quote has no ``bx``/``ax``/``c``/``z`` and
  fractional sizes (``{"T":"q","S":"BTC/USD","bp":97000.5,"bs":0.25,"ap":97001.5,"as":1.2,
  "t":"..."}``); an option quote carries its one condition as a string (``"c":"A"``).
- ``t`` is an RFC-3339 string in JSON (0 to 9 fraction digits) and a msgpack Timestamp
  extension (type -1) in msgpack, unpacked straight to integer nanoseconds.
- Prices may arrive as integers (``136``): they become floats. A missing ``bp``/``ap`` is 0.0,
  an empty side. Prices must be finite and >= 0; strings are refused, never coerced.
- Malformed input is counted in ``FeedStats.decode_errors`` by reason and skipped: a bad
  frame (``bad_json``, ``bad_msgpack``, ``not_a_list``, ``too_many_messages``) drops it; a
  bad message (``not_an_object``, ``missing_field``, ``bad_field``, ``unknown_type``) drops
  only itself, the rest of the frame is still decoded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack
import orjson

from domain.market import (
    Bar,
    BarKind,
    Channel,
    Imbalance,
    LimitUpLimitDown,
    MarketEvent,
    Quote,
    Subscriptions,
    Trade,
    TradeCancel,
    TradeCorrection,
    TradingStatus,
)
from domain.stats import FeedStats
from domain.timestamps import parse_rfc3339_ns

log = logging.getLogger(__name__)

ErrorSink = Callable[[str, str], None]
"""Called as ``sink(reason, detail)`` for every malformed frame or message."""

CONTROL_TYPES: Final = frozenset({"success", "error", "subscription"})

_INF: Final = math.inf
_BAR_KINDS: Final = {"b": BarKind.MINUTE, "d": BarKind.DAILY, "u": BarKind.UPDATED}
_DETAIL_MAX: Final = 200

MAX_MESSAGES_PER_FRAME: Final = 200_000
"""Most messages a frame may hold (Alpaca's frames hold a few thousand at most). With the
10 MiB message-size limit this bounds the Python objects one hostile frame can make: an array
of ten million empty maps would otherwise take ~700 MB to decode."""
_GUARDED_SIZE: Final = 1 << 20  # frames above 1 MiB are counted before they are parsed
_MAX_COMMAS: Final = 16 * MAX_MESSAGES_PER_FRAME


class _Malformed(Exception):
    """A message that does not fit its type's schema (raised inside the decode loop only)."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def _price(value: object) -> float:
    """A price that is not already a float in range: an int becomes a float; a string, a bool,
    a negative or non-finite number is refused (never coerced)."""
    if type(value) is int:
        value = float(value)
    if type(value) is not float:
        raise _Malformed("bad_field", f"price is not a number: {value!r}")
    if not 0.0 <= value < _INF:
        raise _Malformed("bad_field", f"price out of range: {value!r}")
    return value


def _size(value: object) -> float:
    """A size that is not an int: a finite float >= 0 is kept (fractional shares)."""
    if type(value) is float and 0.0 <= value < _INF:
        return value
    raise _Malformed("bad_field", f"size is not a non-negative number: {value!r}")


def _volume(value: object) -> float:
    if type(value) is int and value >= 0:
        return value
    return _size(value)


def _int(value: object) -> int:
    if type(value) is not int:
        raise _Malformed("bad_field", f"not an integer: {value!r}")
    return value


def _str(value: object) -> str:
    if type(value) is not str:
        raise _Malformed("bad_field", f"not a string: {value!r}")
    return value


def _ts_msgpack(value: object) -> int:
    """Nanoseconds from a msgpack frame's ``t``: the Timestamp extension, which the unpacker
    already turned into an int (or, leniently, RFC-3339 text)."""
    if type(value) is int:
        return value
    if type(value) is str:
        return parse_rfc3339_ns(value)
    if isinstance(value, msgpack.Timestamp):
        return int(value.to_unix_nano())
    raise _Malformed("bad_field", f"timestamp is not a msgpack Timestamp: {value!r}")


def _ts_json(value: object) -> int:
    """Nanoseconds from a JSON frame's ``t``, which must be RFC-3339 text (an integer there
    would be silently wrong, so it is refused)."""
    if type(value) is str:
        return parse_rfc3339_ns(value)
    raise _Malformed("bad_field", f"timestamp is not RFC-3339 text: {value!r}")


def _conditions(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        if type(value) is str:  # option quotes and trades carry one condition as a string
            return (value,)
        raise _Malformed("bad_field", f"conditions are not a list: {value!r}")
    for item in value:
        if type(item) is not str:
            raise _Malformed("bad_field", f"condition is not a string: {item!r}")
    return tuple(value)


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def _report(stats: FeedStats, sink: ErrorSink | None, reason: str, detail: str) -> None:
    stats.decode_errors[reason] += 1
    if sink is not None:
        sink(reason, detail)


def _rare(
    kind: str, m: Mapping[str, Any], received_ns: int, _ts: Callable[[object], int]
) -> MarketEvent:
    """Decode the message types that are not quotes or trades (a few a minute per symbol)."""
    bar_kind = _BAR_KINDS.get(kind)
    if bar_kind is not None:
        return Bar(
            bar_kind, _str(m["S"]), _price(m["o"]), _price(m["h"]), _price(m["l"]),
            _price(m["c"]), _volume(m["v"]), _int(m.get("n", 0)), _price(m.get("vw", 0.0)),
            _ts(m["t"]), received_ns,
        )  # fmt: skip
    if kind == "s":
        return TradingStatus(
            _str(m["S"]), _str(m["sc"]), _str(m.get("sm", "")), _str(m.get("rc", "")),
            _str(m.get("rm", "")), _str(m.get("z", "")), _ts(m["t"]), received_ns,
        )  # fmt: skip
    if kind == "l":
        return LimitUpLimitDown(
            _str(m["S"]), _price(m["u"]), _price(m["d"]), _str(m.get("i", "")),
            _str(m.get("z", "")), _ts(m["t"]), received_ns,
        )  # fmt: skip
    if kind == "c":
        return TradeCorrection(
            _str(m["S"]), _str(m.get("x", "")), _int(m["oi"]), _price(m["op"]),
            _volume(m["os"]), _int(m["ci"]), _price(m["cp"]), _volume(m["cs"]),
            _str(m.get("z", "")), _ts(m["t"]), received_ns,
        )  # fmt: skip
    if kind == "x":
        return TradeCancel(
            _str(m["S"]), _int(m["i"]), _str(m.get("x", "")), _price(m["p"]), _volume(m["s"]),
            _str(m["a"]), _str(m.get("z", "")), _ts(m["t"]), received_ns,
        )  # fmt: skip
    if kind == "i":
        return Imbalance(
            _str(m["S"]), _price(m["p"]), _str(m.get("z", "")), _ts(m["t"]), received_ns
        )
    raise _Malformed("unknown_type", f"unknown message type T={kind!r}")


_RARE_NAMES: Final = {
    "b": "bar",
    "d": "daily_bar",
    "u": "updated_bar",
    "s": "trading_status",
    "l": "luld",
    "c": "trade_correction",
    "x": "trade_cancel",
    "i": "imbalance",
}


def _too_many_json_values(data: bytes | str) -> bool:
    """A cheap count (C speed) of objects and separators in a large JSON frame, so that a
    frame of millions of tiny values is refused before ``orjson.loads`` builds them."""
    if isinstance(data, str):
        return data.count("{") > MAX_MESSAGES_PER_FRAME or data.count(",") > _MAX_COMMAS
    return data.count(b"{") > MAX_MESSAGES_PER_FRAME or data.count(b",") > _MAX_COMMAS


def decode_frame(
    data: bytes | str,
    received_ns: int,
    stats: FeedStats,
    on_error: ErrorSink | None = None,
) -> tuple[list[MarketEvent], list[dict[str, Any]]]:
    """Decode one frame into (market events in frame order, control messages as dicts).

    ``received_ns`` (wall time of receipt) stamps every event of the frame. Counts the frame, its
    length (characters for text frames, bytes for binary), every message by type and every
    malformed frame or message by reason in ``stats``; ``on_error(reason, detail)`` hears of each
    malformed one. Never raises for bad input.
    """
    stats.frames += 1
    stats.bytes += len(data)
    is_json = data.__class__ is str or data[:1] == b"["
    if is_json and len(data) > _GUARDED_SIZE and _too_many_json_values(data):
        _report(stats, on_error, "too_many_messages", f"frame of {len(data)} bytes refused")
        return [], []
    try:
        msgs = (
            orjson.loads(data)
            if is_json
            else msgpack.unpackb(
                data, timestamp=2, max_array_len=MAX_MESSAGES_PER_FRAME, max_map_len=256
            )
        )
    except (ValueError, msgpack.UnpackException) as e:
        reason = "bad_json" if is_json else "bad_msgpack"
        _report(stats, on_error, reason, f"{e} in frame {_short(data)}")
        return [], []
    if msgs.__class__ is not list:
        _report(stats, on_error, "not_a_list", f"frame is not a list: {_short(msgs)}")
        return [], []
    return decode_messages(msgs, received_ns, stats, on_error, msgpack_frame=not is_json)


def decode_messages(
    msgs: list[Any],
    received_ns: int,
    stats: FeedStats,
    on_error: ErrorSink | None = None,
    *,
    msgpack_frame: bool = False,
) -> tuple[list[MarketEvent], list[dict[str, Any]]]:
    """The loop of :func:`decode_frame` over an already-parsed frame (a list of messages);
    ``msgpack_frame`` says which timestamp representation ``t`` must have."""
    events: list[MarketEvent] = []
    controls: list[dict[str, Any]] = []
    append = events.append
    quotes = trades = 0
    rare: Counter[str] | None = None
    parse_ts = parse_rfc3339_ns
    _ts = _ts_msgpack if msgpack_frame else _ts_json
    for m in msgs:
        try:
            kind = m["T"]
            if kind == "q":
                t = m["t"]
                ts = parse_ts(t) if t.__class__ is str else _ts(t)
                symbol = m["S"]
                bid = m.get("bp", 0.0)
                ask = m.get("ap", 0.0)
                bid_size = m.get("bs", 0)
                ask_size = m.get("as", 0)
                bid_x = m.get("bx", "")
                ask_x = m.get("ax", "")
                tape = m.get("z", "")
                conditions = m.get("c")
                if bid.__class__ is not float or not 0.0 <= bid < _INF:
                    bid = _price(bid)
                if ask.__class__ is not float or not 0.0 <= ask < _INF:
                    ask = _price(ask)
                if bid_size.__class__ is not int:
                    bid_size = _size(bid_size)
                if ask_size.__class__ is not int:
                    ask_size = _size(ask_size)
                if (
                    symbol.__class__ is not str
                    or bid_x.__class__ is not str
                    or ask_x.__class__ is not str
                    or tape.__class__ is not str
                ):
                    raise _Malformed("bad_field", "S, bx, ax and z must be strings")
                append(
                    Quote(
                        symbol, bid, bid_size, ask, ask_size, bid_x, ask_x,
                        () if conditions is None else _conditions(conditions),
                        tape, ts, received_ns,
                    )
                )  # fmt: skip
                quotes += 1
            elif kind == "t":
                t = m["t"]
                ts = parse_ts(t) if t.__class__ is str else _ts(t)
                symbol = m["S"]
                trade_id = m["i"]
                price = m["p"]
                size = m["s"]
                exchange = m.get("x", "")
                tape = m.get("z", "")
                conditions = m.get("c")
                if price.__class__ is not float or not 0.0 <= price < _INF:
                    price = _price(price)
                if size.__class__ is not int:
                    size = _size(size)
                if (
                    trade_id.__class__ is not int
                    or symbol.__class__ is not str
                    or exchange.__class__ is not str
                    or tape.__class__ is not str
                ):
                    raise _Malformed("bad_field", "i must be an integer; S, x and z strings")
                append(
                    Trade(
                        symbol, trade_id, exchange, price, size,
                        () if conditions is None else _conditions(conditions),
                        tape, ts, received_ns,
                    )
                )  # fmt: skip
                trades += 1
            elif kind in CONTROL_TYPES:
                if m.__class__ is not dict:
                    raise _Malformed("not_an_object", "control message is not a map")
                controls.append(m)
                if rare is None:
                    rare = Counter()
                rare[kind] += 1
            else:
                if kind.__class__ is not str:
                    raise _Malformed("bad_field", f"T is not a string: {kind!r}")
                append(_rare(kind, m, received_ns, _ts))
                if rare is None:
                    rare = Counter()
                rare[_RARE_NAMES[kind]] += 1
        except _Malformed as e:
            _report(stats, on_error, e.reason, f"{e} in {_short(m)}")
        except KeyError as e:
            if m.__class__ is not dict:
                _report(stats, on_error, "not_an_object", f"message is not a map: {_short(m)}")
            else:
                _report(stats, on_error, "missing_field", f"missing field {e} in {_short(m)}")
        except (TypeError, ValueError, AttributeError) as e:
            if m.__class__ is not dict:
                _report(stats, on_error, "not_an_object", f"message is not a map: {_short(m)}")
            else:
                _report(stats, on_error, "bad_field", f"{e} in {_short(m)}")
    counts = stats.messages
    if quotes:
        counts["quote"] += quotes
    if trades:
        counts["trade"] += trades
    if rare:
        counts.update(rare)
    return events, controls


class RateLimitedErrorLog:
    """An :data:`ErrorSink` that logs at WARNING at most once per reason per ``interval_s``,
    saying how many were suppressed since the last line. Counting is the caller's job (the
    decoder counts every error in ``FeedStats`` whether logged or not)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        what: str = "market data",
    ) -> None:
        self._log = logger or log
        self._interval = interval_s
        self._monotonic = monotonic
        self._what = what
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, reason: str, detail: str) -> None:
        now = self._monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] += 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        self._log.warning(
            "malformed %s skipped (%s): %s%s",
            self._what,
            reason,
            detail,
            f" [{suppressed} more of this kind suppressed in the last {self._interval:g} s]"
            if suppressed
            else "",
        )


# -- control messages and actions -----------------------------------------------------------


def parse_subscription(message: Mapping[str, Any]) -> tuple[Subscriptions, list[str]]:
    """The full set a ``subscription`` message confirms, and complaints about its shape.

    Lenient by design (the venue omits keys): a missing channel key means nothing on that
    channel, unknown keys (``corrections``, ``cancelErrors``) are ignored, and a channel whose
    value is not a list of strings is taken as empty and reported in the complaints.
    """
    by_channel: dict[Channel, frozenset[str]] = {}
    complaints: list[str] = []
    for channel in Channel:
        value = message.get(channel.value)
        if value is None:
            continue
        if value.__class__ is not list or any(s.__class__ is not str for s in value):
            complaints.append(f"{channel.value}: not a list of strings: {_short(value)}")
            continue
        if value:
            by_channel[channel] = frozenset(value)
    return Subscriptions(by_channel), complaints


def encode_action(action: Mapping[str, Any], fmt: str) -> str | bytes:
    """An outgoing action (auth, subscribe, unsubscribe) in the session's format: a JSON text
    frame, or a msgpack binary frame (the SDKs mirror the format they asked for)."""
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(action)
        return packed
    return orjson.dumps(action).decode()


# -- filtering by the confirmed set ----------------------------------------------------------

_EVENT_KEYS: Final[dict[Channel, tuple[object, ...]]] = {
    Channel.QUOTES: (Quote,),
    Channel.TRADES: (Trade, TradeCorrection, TradeCancel),  # corrections/cancels follow trades
    Channel.BARS: (BarKind.MINUTE,),
    Channel.UPDATED_BARS: (BarKind.UPDATED,),
    Channel.DAILY_BARS: (BarKind.DAILY,),
    Channel.STATUSES: (TradingStatus,),
    Channel.LULDS: (LimitUpLimitDown,),
    Channel.IMBALANCES: (Imbalance,),
}
_ABSENT: Final = frozenset[str]()


class ChannelFilter:
    """Keeps only events whose (channel, symbol) is in a confirmed set; ``"*"`` confirms every
    symbol of its channel. Venues keep sending for a while after an unsubscribe, and a replay
    holds everything: this is what makes "only confirmed data" true."""

    __slots__ = ("_all", "_allowed")

    def __init__(self, confirmed: Subscriptions) -> None:
        allowed: dict[object, frozenset[str]] = {}
        every: set[object] = set()
        for channel, symbols in confirmed.by_channel.items():
            for key in _EVENT_KEYS[channel]:
                if "*" in symbols:
                    every.add(key)
                elif symbols:
                    allowed[key] = symbols
        self._allowed = allowed
        self._all = frozenset(every)

    def apply(self, batch: Sequence[MarketEvent]) -> list[MarketEvent]:
        """The events of ``batch`` that are confirmed, in order."""
        allowed = self._allowed
        every = self._all
        out: list[MarketEvent] = []
        keep = out.append
        for event in batch:
            key: object = event.kind if type(event) is Bar else type(event)
            if event.symbol in allowed.get(key, _ABSENT) or key in every:
                keep(event)
        return out
