"""wire.py: golden frames to exact domain objects, malformed input, and decoding properties."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.alpaca.wire import (
    ChannelFilter,
    RateLimitedErrorLog,
    decode_frame,
    encode_action,
    parse_subscription,
)
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
from domain.price import NoMid, Price, price_from_quote
from domain.stats import FeedStats
from tests.adapters.alpaca.conftest import LogRecords

DATA = Path(__file__).parents[2] / "data" / "alpaca"
R = 1_800_000_000_123_456_789  # the receive time stamped on every event of a frame
S = 1_721_807_813 * 1_000_000_000  # 2024-07-24T07:56:53Z

GOLDEN_QUOTES = [
    Quote("AAPL", 218.5, 2, 218.52, 3, "V", "V", ("R",), "C", S, R),
    Quote("MSFT", 440.0, 1, 441.0, 1, "V", "V", ("R",), "C", S + 100_000_000, R),
    Quote("SPY", 0.0, 0, 550.01, 4, "", "V", ("R",), "B", S + 250_000_000, R),
    Quote("BRK.B", 0.0, 0, 455.1, 1, "", "N", ("R",), "A", S + 208_000_000, R),
    Quote("AAPL", 218.49, 1, 0.0, 0, "V", "", ("R",), "C", S + 100_000, R),
    Quote("FAKEPACA", 10.05, 4, 10.0, 5, "O", "R", ("R",), "A", S + 123_450_000, R),
    Quote("IONM", 5.5, 1, 5.5, 1, "Q", "Q", ("R",), "C", S + 639_713_000, R),
    Quote("AMD", 87.66, 1, 87.68, 4, "U", "Q", ("R", "Y"), "C", S + 639_713_700, R),
    Quote("GOOGL", 0.0001, 100, 0.0002, 100, "V", "V", (), "C", S + 835_409_580, R),
    Quote("AMD", 87.66, 1, 87.68, 4, "U", "Q", ("R",), "C", S + 639_713_735, R),
]

GOLDEN_MIDS: list[float | NoMid] = [
    218.51, 440.5, NoMid.EMPTY_BID, NoMid.EMPTY_BID, NoMid.EMPTY_ASK, NoMid.CROSSED, 5.5, 87.67,
    0.00015, 87.67,
]  # fmt: skip

GOLDEN_ALL_TYPES: list[MarketEvent] = [
    Quote("AMD", 87.66, 1, 87.68, 4, "U", "Q", ("R",), "C", 1_614_009_105_335_689_322, R),
    Trade("AAPL", 96921, "D", 126.55, 1, ("@", "I"), "C", 1_614_009_104_208_000_000, R),
    Bar(BarKind.MINUTE, "SPY", 388.985, 389.13, 388.975, 389.12, 49378, 461, 389.062639,
        1_614_021_300_000_000_000, R),
    Bar(BarKind.DAILY, "FAKEPACA", 132.65, 136.0, 132.12, 134.65, 205, 16, 133.7,
        1_721_807_760_000_000_000, R),
    Bar(BarKind.UPDATED, "SPY", 388.985, 389.2, 388.975, 389.2, 49400, 462, 389.0627,
        1_614_021_300_000_000_000, R),
    TradingStatus("AAPL", "H", "Trading Halt", "T12",
                  "Trading Halted; For information requested by NASDAQ", "C",
                  1_614_021_300_000_000_000, R),
    LimitUpLimitDown("IONM", 3.24, 2.65, "B", "C", 1_680_788_085_565_004_401, R),
    TradeCorrection("EEM", "M", 52983525033527, 39.1582, 440000, 52983525034326, 39.1809, 440000,
                    "B", 1_680_791_106_542_305_024, R),
    TradeCancel("GOOGL", 465, "D", 105.31, 300, "C", "C", 1_680_786_942_835_409_580, R),
    Imbalance("INAQU", 9.12, "C", 1_734_119_889_242_138_635, R),
]  # fmt: skip


def frame(name: str) -> str | bytes:
    path = DATA / name
    return path.read_text() if name.endswith(".json") else path.read_bytes()


def prices(event: MarketEvent) -> list[float]:
    if isinstance(event, Quote):
        return [event.bid_price, event.ask_price]
    if isinstance(event, Trade | TradeCancel | Imbalance):
        return [event.price]
    if isinstance(event, Bar):
        return [event.open, event.high, event.low, event.close, event.vwap]
    if isinstance(event, LimitUpLimitDown):
        return [event.limit_up, event.limit_down]
    if isinstance(event, TradeCorrection):
        return [event.original_price, event.corrected_price]
    return []


# -- golden frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quotes.json", "quotes.bin"])
def test_golden_quotes(name: str) -> None:
    stats = FeedStats()
    events, controls = decode_frame(frame(name), R, stats)
    assert events == GOLDEN_QUOTES
    assert [tuple(e) for e in events if isinstance(e, Quote)] == [tuple(q) for q in GOLDEN_QUOTES]
    assert all(type(p) is float for e in events for p in prices(e))  # ints became floats
    assert controls == []
    assert stats.messages == {"quote": 10}
    assert stats.decode_errors == {}
    assert stats.frames == 1
    assert stats.bytes == len(frame(name))


def test_golden_quotes_give_exact_mids() -> None:
    events, _ = decode_frame(frame("quotes.json"), R, FeedStats())
    got: list[float | NoMid] = []
    for event in events:
        assert isinstance(event, Quote)
        result = price_from_quote(event, "IEX")
        got.append(result.mid if isinstance(result, Price) else result)
    assert got == GOLDEN_MIDS
    assert [repr(m) for m in got if isinstance(m, float)] == [
        "218.51", "440.5", "5.5", "87.67", "0.00015", "87.67",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["all_types.json", "all_types.bin"])
def test_golden_every_message_type(name: str) -> None:
    stats = FeedStats()
    events, controls = decode_frame(frame(name), R, stats)
    assert events == GOLDEN_ALL_TYPES
    assert all(type(p) is float for e in events for p in prices(e))
    assert controls == []
    assert stats.messages == {
        "quote": 1, "trade": 1, "bar": 1, "daily_bar": 1, "updated_bar": 1,
        "trading_status": 1, "luld": 1, "trade_correction": 1, "trade_cancel": 1, "imbalance": 1,
    }  # fmt: skip


def test_golden_control_frames() -> None:
    stats = FeedStats()
    decoded = [
        decode_frame(line, R, stats)
        for line in (DATA / "control_frames.jsonl").read_text().splitlines()
    ]
    assert all(events == [] for events, _ in decoded)
    controls = [c for _, cs in decoded for c in cs]
    assert [c["T"] for c in controls] == ["success"] * 2 + ["subscription"] * 2 + ["error"] * 4
    assert [c.get("code") for c in controls[4:]] == [406, 402, 405, 404]
    assert stats.messages == {"success": 2, "subscription": 2, "error": 4}

    full, complaints = parse_subscription(controls[2])
    assert complaints == []
    assert full == Subscriptions({
        Channel.TRADES: frozenset({"AAPL"}), Channel.QUOTES: frozenset({"AMD", "CLDR"}),
        Channel.BARS: frozenset({"*"}), Channel.DAILY_BARS: frozenset({"VOO"}),
        Channel.STATUSES: frozenset({"*"}),
    })  # fmt: skip
    partial, _ = parse_subscription(controls[3])  # only some keys: the rest are empty
    assert partial == Subscriptions(
        {Channel.QUOTES: frozenset({"FAKEPACA"}), Channel.BARS: frozenset({"FAKEPACA"})}
    )


def test_golden_msgpack_subscription() -> None:
    _, controls = decode_frame(frame("subscription.bin"), R, FeedStats())
    assert parse_subscription(controls[0])[0].symbols(Channel.QUOTES) == {"AMD", "CLDR"}


def test_lenient_subscription_parsing_reports_bad_shapes() -> None:
    confirmed, complaints = parse_subscription(
        {"T": "subscription", "quotes": "AAPL", "trades": [1], "bars": ["SPY"], "news": ["X"]}
    )
    assert confirmed == Subscriptions({Channel.BARS: frozenset({"SPY"})})
    assert len(complaints) == 2


def test_json_inside_a_binary_frame_is_decoded() -> None:
    events, _ = decode_frame(frame("quotes.json").encode(), R, FeedStats())  # type: ignore[union-attr]
    assert events == GOLDEN_QUOTES


# -- malformed input ---------------------------------------------------------------------------

GOOD = {"T": "q", "S": "AAPL", "bp": 1.0, "ap": 2.0, "t": "2024-07-24T07:56:53Z"}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"T": "q", "bp": 1.0, "t": "2024-07-24T07:56:53Z"}, "missing_field"),
        ({"T": "q", "S": "AAPL"}, "missing_field"),
        ({"S": "AAPL"}, "missing_field"),
        ({**GOOD, "t": "yesterday"}, "bad_field"),
        ({**GOOD, "t": "2024-07-24T07:56:53.1234567890Z"}, "bad_field"),
        ({**GOOD, "t": 1.5}, "bad_field"),
        ({**GOOD, "t": 1721807813000000000}, "bad_field"),  # an int is msgpack's, not JSON's
        ({**GOOD, "bp": "1.5"}, "bad_field"),
        ({**GOOD, "bp": True}, "bad_field"),
        ({**GOOD, "ap": -1}, "bad_field"),
        ({**GOOD, "ap": None}, "bad_field"),
        ({**GOOD, "bs": "3"}, "bad_field"),
        ({**GOOD, "c": 5}, "bad_field"),
        ({**GOOD, "c": [1]}, "bad_field"),
        ({**GOOD, "S": 5}, "bad_field"),
        ({**GOOD, "bx": None}, "bad_field"),
        ({**GOOD, "T": 5}, "bad_field"),
        ({**GOOD, "T": ["q"]}, "bad_field"),
        ({**GOOD, "T": "zz"}, "unknown_type"),
        ({"T": "t", "S": "A", "i": "1", "p": 1.0, "s": 1, "t": "2024-07-24T07:56:53Z"},
         "bad_field"),
        ({"T": "b", "S": "A", "h": 1, "l": 1, "c": 1, "v": 1, "t": "2024-07-24T07:56:53Z"},
         "missing_field"),
        ({"T": "x", "S": "A", "i": 1, "p": 1, "s": -5, "a": "C", "t": "2024-07-24T07:56:53Z"},
         "bad_field"),
        ([1, 2], "not_an_object"),
        ("junk", "not_an_object"),
        (None, "not_an_object"),
    ],
)  # fmt: skip
def test_a_malformed_message_is_counted_and_the_rest_delivered(bad: Any, reason: str) -> None:
    stats = FeedStats()
    seen: list[tuple[str, str]] = []
    events, _ = decode_frame(
        orjson.dumps([GOOD, bad, GOOD]).decode(), R, stats, lambda r, d: seen.append((r, d))
    )
    assert [e.symbol for e in events] == ["AAPL", "AAPL"]
    assert stats.decode_errors == {reason: 1}
    assert stats.messages["quote"] == 2
    assert seen[0][0] == reason
    assert len(seen[0][1]) < 400  # details are truncated


def test_msgpack_timestamps_may_be_ext_or_text_but_not_floats() -> None:
    stats = FeedStats()
    ext = {**GOOD, "t": msgpack.Timestamp(1, 5)}
    events, _ = decode_frame(msgpack.packb([ext, GOOD, {**GOOD, "t": 1.0}]), R, stats)
    assert [e.ts_event_ns for e in events] == [1_000_000_005, S]
    assert stats.decode_errors == {"bad_field": 1}


def test_non_finite_msgpack_price_is_refused() -> None:
    stats = FeedStats()
    data = msgpack.packb([{**GOOD, "bp": math.nan}, {**GOOD, "ap": math.inf}, GOOD])
    events, _ = decode_frame(data, R, stats)
    assert len(events) == 1
    assert stats.decode_errors == {"bad_field": 2}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("[{not json", "bad_json"),
        (b"[1", "bad_json"),
        (b"\xc1", "bad_msgpack"),
        (msgpack.packb([1]) + b"\x00", "bad_msgpack"),
        ("", "bad_json"),
        ('{"T":"q"}', "not_a_list"),
        ("42", "not_a_list"),
        (msgpack.packb({"T": "q"}), "not_a_list"),
    ],
)
def test_a_malformed_frame_is_counted(data: str | bytes, reason: str) -> None:
    stats = FeedStats()
    assert decode_frame(data, R, stats) == ([], [])
    assert stats.decode_errors == {reason: 1}
    assert stats.frames == 1


def test_error_log_is_rate_limited_per_reason(logs: LogRecords) -> None:
    now = [100.0]
    sink = RateLimitedErrorLog(interval_s=10.0, monotonic=lambda: now[0])
    for _ in range(5):
        sink("bad_json", "detail")
    sink("not_a_list", "other")
    now[0] += 10.5
    sink("bad_json", "later")
    warnings = logs.at(30)
    assert len(warnings) == 3
    assert "4 more of this kind suppressed" in warnings[2]
    assert "later" in warnings[2]


# -- filter and actions ------------------------------------------------------------------------


def test_channel_filter_follows_channels_and_wildcards() -> None:
    events, _ = decode_frame(frame("all_types.json"), R, FeedStats())
    confirmed = Subscriptions({
        Channel.TRADES: frozenset({"AAPL", "GOOGL"}), Channel.BARS: frozenset({"*"}),
        Channel.QUOTES: frozenset({"MSFT"}),
    })  # fmt: skip
    kept = ChannelFilter(confirmed).apply(events)
    assert [(type(e).__name__, e.symbol) for e in kept] == [
        ("Trade", "AAPL"), ("Bar", "SPY"), ("TradeCancel", "GOOGL"),
    ]  # fmt: skip
    assert ChannelFilter(Subscriptions()).apply(events) == []


def test_actions_are_encoded_in_the_session_format() -> None:
    action = {"action": "subscribe", "quotes": ["AAPL"]}
    assert encode_action(action, "json") == '{"action":"subscribe","quotes":["AAPL"]}'
    assert msgpack.unpackb(encode_action(action, "msgpack")) == action


# -- properties --------------------------------------------------------------------------------

_symbols = st.from_regex(r"[A-Z][A-Z0-9.]{0,6}", fullmatch=True)
_prices = st.decimals(min_value=0, max_value=100_000, places=4).map(float)
_ns = st.integers(min_value=0, max_value=4_102_444_800 * 10**9 - 1)  # up to 2100


def _rfc3339(ns: int, digits: int) -> str:
    from domain.timestamps import format_ns

    text = format_ns(ns)  # 9 digits; trim like Alpaca does
    fraction = text[20:29][:digits].rstrip("0")
    return text[:19] + ("." + fraction if fraction else "") + "Z"


@settings(max_examples=200, deadline=None)
@given(
    symbol=_symbols, bid=_prices, ask=_prices, bid_size=st.integers(0, 10**6),
    ask_size=st.integers(0, 10**6), ns=_ns, digits=st.integers(0, 9),
    conditions=st.lists(st.sampled_from(["R", "Y", " ", "@"]), max_size=3),
)  # fmt: skip
@example(symbol="A", bid=0.0, ask=0.0, bid_size=0, ask_size=0, ns=0, digits=0, conditions=[])
@example(symbol="BRK.B", bid=100_000.0, ask=0.0001, bid_size=10**6, ask_size=1,
         ns=4_102_444_800 * 10**9 - 1, digits=9, conditions=["R", "Y", "@"])  # fmt: skip
@example(symbol="AAPL", bid=150.25, ask=150.27, bid_size=1, ask_size=1,
         ns=1_721_807_813_639_713_735, digits=6, conditions=[" "])  # fmt: skip
def test_quotes_decode_identically_from_json_and_msgpack(
    symbol: str, bid: float, ask: float, bid_size: int, ask_size: int, ns: int, digits: int,
    conditions: list[str],
) -> None:  # fmt: skip
    text = _rfc3339(ns, digits)
    expected_ns = ns - ns % 10 ** (9 - digits)
    base = {"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": bid_size, "ax": "Q", "ap": ask,
            "as": ask_size, "c": conditions, "z": "C"}  # fmt: skip
    from_json, _ = decode_frame(orjson.dumps([{**base, "t": text}]).decode(), R, FeedStats())
    seconds, nanos = divmod(expected_ns, 10**9)
    packed = msgpack.packb([{**base, "t": msgpack.Timestamp(seconds, nanos)}])
    from_msgpack, _ = decode_frame(packed, R, FeedStats())
    expected = Quote(symbol, bid, bid_size, ask, ask_size, "V", "Q", tuple(conditions), "C",
                     expected_ns, R)  # fmt: skip
    assert from_json == [expected]
    assert from_msgpack == [expected]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["T", "S", "t", "bp", "ap", "c", "code", "p", "x", "q"]),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json_values, max_size=5), st.booleans())
@example([], False)  # an empty frame
@example([None], True)  # a message that is not an object
@example([{"T": "q"}], True)  # a quote without fields
@example([{"T": "q", "S": "A", "bp": True, "ap": 1.0, "t": 0}], False)  # a bool as a price
def test_decoding_arbitrary_structures_never_raises(messages: list[Any], as_msgpack: bool) -> None:
    stats = FeedStats()
    data: str | bytes = msgpack.packb(messages) if as_msgpack else orjson.dumps(messages).decode()
    events, controls = decode_frame(data, R, stats)
    assert len(events) + len(controls) + stats.decode_errors_total == len(messages)
    for control in controls:
        if control["T"] == "subscription":
            parse_subscription(control)  # never raises either
    for event in events:
        assert isinstance(event.symbol, str)
        assert all(type(p) is float and 0.0 <= p < math.inf for p in prices(event))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
@example(b"")  # empty frame
@example(b"[")  # truncated JSON
@example(b"\x91")  # truncated msgpack array
@example(b"\x91\x81\xa1T\xa1q")  # a quote with no fields (alpaca-trade-api-go's test frame)
@example(b"\xc1")  # the one byte msgpack never uses
def test_decoding_arbitrary_bytes_never_raises(data: bytes) -> None:
    stats = FeedStats()
    decode_frame(data, R, stats)
    assert stats.frames == 1


# -- crypto and option quotes ------------------------------------------------------------------


def test_crypto_quotes_decode_with_fractional_sizes_and_no_venue_fields() -> None:
    frame = [
        {"T": "q", "S": "BTC/USD", "bp": 97000.5, "bs": 0.25, "ap": 97001.5, "as": 1.2,
         "t": "2024-07-24T07:56:53.123456789Z"},
        {"T": "q", "S": "SHIB/USD", "bp": 0.00000912, "bs": 15000000.5, "ap": 0.00000913,
         "as": 2000000, "t": "2024-07-24T07:56:53Z"},
    ]  # fmt: skip
    for raw in (orjson.dumps(frame).decode(), msgpack.packb(frame)):
        stats = FeedStats()
        events, _ = decode_frame(raw, R, stats)
        assert stats.decode_errors == {}
        assert events == [
            Quote("BTC/USD", 97000.5, 0.25, 97001.5, 1.2, "", "", (), "", S + 123_456_789, R),
            Quote("SHIB/USD", 0.00000912, 15000000.5, 0.00000913, 2000000, "", "", (), "", S, R),
        ]
        shib = price_from_quote(events[1], "CRYPTO_US")  # type: ignore[arg-type]
        assert isinstance(shib, Price) and repr(shib.mid) == "9.125e-06"


def test_option_quotes_decode_from_msgpack_with_a_single_condition() -> None:
    frame = [
        {"T": "q", "S": "AAPL250117C00150000", "bx": "C", "bp": 1.05, "bs": 12, "ax": "X",
         "ap": 1.1, "as": 7, "c": "A", "t": msgpack.Timestamp(1_721_807_813, 5)},
    ]  # fmt: skip
    stats = FeedStats()
    events, _ = decode_frame(msgpack.packb(frame, datetime=False), R, stats)
    assert events == [
        Quote("AAPL250117C00150000", 1.05, 12, 1.1, 7, "C", "X", ("A",), "", S + 5, R)
    ]
    price = price_from_quote(events[0], "INDICATIVE")  # type: ignore[arg-type]
    assert isinstance(price, Price) and repr(price.mid) == "1.075"
