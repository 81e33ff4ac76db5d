"""Golden input we did not produce: Alpaca frames as other SDKs' published tests carry them.

``tests/data/alpaca/*.bin`` were encoded by us from our own JSON (``msgpack.packb``), so they
only prove that we read what we write. The frames here come from outside this project: bytes
and values from other clients' test fixtures, with the encoder choices those fixtures make
(which differ from Python msgpack's: fixed-width ``uint32``/``int64``/``uint64`` instead of the
smallest integer, a field we do not know). Only bytes and facts are taken, no code; each frame
names its source. Decoded with our adapter (``adapters/alpaca/wire.py``).
"""

from __future__ import annotations

from adapters.alpaca.wire import decode_frame
from domain.market import Quote, Trade
from domain.price import Price, price_from_quote
from domain.stats import FeedStats

R = 1_800_000_000_000_000_000  # receive time stamped on each event

# alpacahq/alpaca-trade-api-go, marketdata/stream/raw_message_test.go: the raw frame its
# reader test feeds, a quote message with nothing but its type: [{"T": "q"}].
GO_RAW_QUOTE_WITHOUT_FIELDS = bytes([0x91, 0x81, 0xA1, ord("T"), 0xA1, ord("q")])

# alpacahq/alpaca-trade-api-go, marketdata/stream/message_test.go: testQuote, testTrade and
# testOther, marshalled there with vmihailenco/msgpack v5 as one array (TestHandleMessagesStocks).
# The bytes below are that encoder's default output for those structs, field by field in their
# declared order: float64 as 0xcb, uint32 as 0xce, int64 as 0xd3, uint64 as 0xcf, time.Time as
# the Timestamp extension (type -1, timestamp64 when the seconds fit 34 bits). testTime is
# 2021-03-04T15:16:17.000000018Z (epoch 1614870977, 18 ns). Each struct carries "n" (NewField),
# "for testing correct handling of added fields in the future": it must be ignored.
GO_STOCK_FRAME = bytes.fromhex(
    "93"  # array of 3 messages: testOther, testTrade, testQuote
    # testOther: {"T": "o", "w": "whatever"}, a type we do not know
    "82" "a154" "a16f" "a177" "a8" + b"whatever".hex() +
    # testTrade: 10 fields
    "8a"
    "a154" "a174"  # T: "t"
    "a169" "d3000000000000002a"  # i: int64 42
    "a153" "a454455354"  # S: "TEST"
    "a178" "a158"  # x: "X"
    "a170" "cb4059000000000000"  # p: float64 100
    "a173" "ce0000000a"  # s: uint32 10
    "a174" "d7ff000000486040f9c1"  # t: Timestamp(1614870977 s, 18 ns)
    "a163" "91a120"  # c: [" "]
    "a17a" "a141"  # z: "A"
    "a16e" "cf0000000000000000"  # n: uint64 0 (NewField)
    # testQuote: 12 fields
    "8c"
    "a154" "a171"  # T: "q"
    "a153" "a454455354"  # S: "TEST"
    "a26278" "a142"  # bx: "B"
    "a26270" "cb4058f9999999999a"  # bp: float64 99.9
    "a26273" "ce00000064"  # bs: uint32 100
    "a26178" "a141"  # ax: "A"
    "a26170" "cb4059066666666666"  # ap: float64 100.1
    "a26173" "ce000000c8"  # as: uint32 200
    "a174" "d7ff000000486040f9c1"  # t: Timestamp(1614870977 s, 18 ns)
    "a163" "91a152"  # c: ["R"]
    "a17a" "a142"  # z: "B"
    "a16e" "cf0000000000000000"  # n: uint64 0 (NewField)
)  # fmt: skip
GO_TEST_TIME_NS = 1_614_870_977 * 1_000_000_000 + 18

# alpacahq/alpaca-py, tests/data/test_websockets.py (test_cast): the quote it casts, with its
# timestamp fixture msgpack Timestamp(seconds=10, nanoseconds=10) (timestamp64 on the wire).
ALPACA_PY_QUOTE = bytes.fromhex(
    "91" "8b"
    "a154" "a171"  # T: "q"
    "a153" "a453504950"  # S: "SPIP"
    "a26278" "a156"  # bx: "V"
    "a26270" "cb403968f5c28f5c29"  # bp: 25.41
    "a26273" "23"  # bs: 35
    "a26178" "a156"  # ax: "V"
    "a26170" "cb40396e147ae147ae"  # ap: 25.43
    "a26173" "23"  # as: 35
    "a163" "91a152"  # c: ["R"]
    "a17a" "a142"  # z: "B"
    "a174" "d7ff000000280000000a"  # t: Timestamp(10 s, 10 ns)
)  # fmt: skip


def test_a_quote_without_fields_from_the_go_sdk_is_counted_not_raised() -> None:
    stats = FeedStats()
    events, controls = decode_frame(GO_RAW_QUOTE_WITHOUT_FIELDS, R, stats)
    assert events == [] and controls == []
    assert stats.decode_errors_total == 1
    assert stats.frames == 1 and stats.bytes == 6


def test_the_go_sdks_stock_frame_decodes_with_wide_ints_and_an_unknown_field() -> None:
    stats = FeedStats()
    events, controls = decode_frame(GO_STOCK_FRAME, R, stats)
    assert controls == []
    assert events == [
        Trade("TEST", 42, "X", 100.0, 10, (" ",), "A", GO_TEST_TIME_NS, R),
        Quote("TEST", 99.9, 100, 100.1, 200, "B", "A", ("R",), "B", GO_TEST_TIME_NS, R),
    ]
    # NewField is ignored silently; the unknown type "o" is counted and skipped, the rest decoded.
    assert stats.decode_errors == {"unknown_type": 1}
    price = price_from_quote(events[1], "iex")  # type: ignore[arg-type]
    assert isinstance(price, Price) and price.mid == 100.0
    assert price.timestamp == "2021-03-04T15:16:17.000000018Z"  # nanoseconds kept


def test_alpaca_pys_quote_fixture_decodes_to_its_values() -> None:
    stats = FeedStats()
    events, _ = decode_frame(ALPACA_PY_QUOTE, R, stats)
    assert events == [Quote("SPIP", 25.41, 35, 25.43, 35, "V", "V", ("R",), "B", 10_000_000_010, R)]
    price = price_from_quote(events[0], "iex")  # type: ignore[arg-type]
    assert isinstance(price, Price) and repr(price.mid) == "25.42"
