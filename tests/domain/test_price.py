"""The exact mid, the no-mid rule and the Price JSON contract."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from domain.market import Quote
from domain.price import NoMid, Price, exact_mid, no_mid_reason, price_from_quote
from domain.timestamps import format_ns, parse_rfc3339_ns
from tests.price_contract import PriceContractError, check_price, check_price_json


def q(bid: float, ask: float, ts: int = 1_614_009_105_335_689_322) -> Quote:
    return Quote("AAPL", bid, 1, ask, 2, "V", "Q", ("R",), "C", ts, ts + 5)


@pytest.mark.parametrize(
    ("bid", "ask", "mid"),
    [
        (150.25, 150.27, "150.26"),
        (1.0001, 1.0002, "1.00015"),
        (305.95, 305.97, "305.96"),
        (0.0001, 0.0002, "0.00015"),
        (99999.99, 100000.01, "100000.0"),
        (5.0, 5.0, "5.0"),
    ],
)
def test_mid_is_the_exact_decimal_midpoint(bid: float, ask: float, mid: str) -> None:
    assert repr(exact_mid(bid, ask)) == mid


# Prices as venues quote them: up to 4 decimals (sub-penny), up to 9 for crypto-like prices.
decimals = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=9),
).filter(lambda d: d < Decimal(10**9))


@given(decimals, decimals)
@example(Decimal("0.1"), Decimal("86922784.9"))  # found by hypothesis: was one unit high
@example(Decimal("89999999.99999999"), Decimal("89999999.99999999"))  # top of the fast path
@example(Decimal("90000000"), Decimal("90000000.01"))  # past it: the Decimal path
@example(Decimal("0.00000001"), Decimal("0.00000003"))  # the smallest 1e-8 units
@example(Decimal("0.000000001"), Decimal("0.000000002"))  # 9 decimals: the Decimal path
@example(Decimal("150.25"), Decimal("150.27"))  # the README's example
def test_mid_equals_decimal_arithmetic_for_any_quoted_prices(a: Decimal, b: Decimal) -> None:
    bid, ask = float(a), float(b)
    exact = (Decimal(repr(bid)) + Decimal(repr(ask))) / 2
    assert exact_mid(bid, ask) == float(exact)  # the double nearest the exact decimal
    if len(exact.normalize().as_tuple().digits) <= 15:
        assert Decimal(repr(exact_mid(bid, ask))) == exact  # and it prints as that decimal


def test_no_mid_rule() -> None:
    assert price_from_quote(q(0.0, 10.0), "SIP") is NoMid.EMPTY_BID
    assert price_from_quote(q(10.0, 0.0), "SIP") is NoMid.EMPTY_ASK
    assert price_from_quote(q(10.01, 10.0), "SIP") is NoMid.CROSSED
    locked = price_from_quote(q(10.0, 10.0), "SIP")
    assert isinstance(locked, Price) and locked.mid == 10.0


def test_price_json_is_the_contract() -> None:
    price = price_from_quote(q(150.25, 150.27), "SIP")
    assert isinstance(price, Price)
    raw = price.to_json()
    obj = check_price_json(raw)  # the shipped JSON Schema
    assert list(obj) == [
        "symbol", "bid", "ask", "mid", "timestamp", "exchange", "bid_exchange", "ask_exchange"
    ]  # fmt: skip
    assert obj == {
        "symbol": "AAPL",
        "bid": 150.25,
        "ask": 150.27,
        "mid": 150.26,
        "timestamp": "2021-02-22T15:51:45.335689322Z",
        "exchange": "SIP",  # the feed, never a venue
        "bid_exchange": "V",
        "ask_exchange": "Q",
    }
    assert datetime.fromisoformat(obj["timestamp"]) == datetime(
        2021, 2, 22, 15, 51, 45, 335689, tzinfo=UTC
    )
    assert Price.from_json(raw) == price  # nanoseconds survive the round trip


def test_from_json_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="mid"):
        Price.from_json(
            b'{"symbol":"A","bid":1,"ask":2,"mid":"x","timestamp":'
            b'"2021-02-22T15:51:45Z","exchange":"V"}'
        )
    with pytest.raises(ValueError):
        Price.from_json(b"not json")


def test_odd_exchange_codes_stay_valid_json() -> None:
    price = Price("A", 1.0, 2.0, 1.5, 0, 'we"ird\\', "\n", "")
    obj = orjson.loads(price.to_json())
    assert obj["exchange"] == 'we"ird\\' and obj["bid_exchange"] == "\n"
    assert obj["ask_exchange"] == ""
    with pytest.raises(PriceContractError):  # and the schema refuses such a feed name
        check_price(obj)


@pytest.mark.off_contract_prices
def test_records_without_the_sides_still_read() -> None:
    """Records written before bid_exchange/ask_exchange existed (a cache during an upgrade)
    still parse; the sides read as empty."""
    old = (
        b'{"symbol":"A","bid":1,"ask":2,"mid":1.5,"timestamp":'
        b'"2021-02-22T15:51:45.000000000Z","exchange":"V"}'
    )
    assert Price.from_json(old) == Price("A", 1.0, 2.0, 1.5, 1_614_009_105 * 10**9, "V")


def test_the_schema_refuses_what_the_contract_excludes() -> None:
    good = check_price_json(price_json())
    for broken in (
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "ask_exchange"},
        {**good, "timestamp": "2021-02-22T15:51:45Z"},  # not fixed-width
        {**good, "symbol": "aapl"},
        {**good, "mid": "150.26"},
        {**good, "bid": 0},
    ):
        with pytest.raises(PriceContractError):
            check_price(broken)


def price_json() -> bytes:
    price = price_from_quote(q(150.25, 150.27), "IEX")
    assert isinstance(price, Price)
    return price.to_json()


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))
@example(0)  # the epoch
@example(999_999_999)  # the last nanosecond of a second
@example(1_614_009_105_000_000_000)  # a whole second (fraction all zeros)
@example(4_102_444_800 * 10**9)  # 2100-01-01, the top of the range
def test_timestamps_round_trip_and_sort_as_text(ns: int) -> None:
    text = format_ns(ns)
    assert parse_rfc3339_ns(text) == ns
    assert len(text) == 30
    assert format_ns(ns) < format_ns(ns + 1)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2021-02-22T15:51:45.335689322Z", 1_614_009_105_335_689_322),
        ("2021-02-22T15:51:44.208Z", 1_614_009_104_208_000_000),
        ("2021-02-22T19:15:00Z", 1_614_021_300_000_000_000),
        ("2021-02-22T19:15:00.5+00:00", 1_614_021_300_500_000_000),
    ],
)
def test_rfc3339_with_0_to_9_fraction_digits(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "2021-02-22",
        "2021-02-22T19:15:00+01:00",
        "2021-02-22T19:15:00.1234567890Z",
        "2021-02-22T19:15:00.x1Z",
    ],
)
def test_bad_timestamps_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns(bad)


def test_no_mid_reason_for_sub_dollar_and_locked_quotes() -> None:
    assert no_mid_reason(0.5, 0.6) is None
    assert no_mid_reason(10.0, 10.0) is None  # locked: a mid, not crossed
    assert no_mid_reason(0.0, 0.6) is NoMid.EMPTY_BID
    assert no_mid_reason(0.5, 0.0) is NoMid.EMPTY_ASK
    assert no_mid_reason(0.5, 0.4) is NoMid.CROSSED  # crossed below a dollar: not "empty"
    assert price_from_quote(q(0.5, 0.4), "SIP") is NoMid.CROSSED
    assert price_from_quote(q(0.4, 0.0), "SIP") is NoMid.EMPTY_ASK


def test_to_json_uses_the_timestamp_the_caller_already_formatted() -> None:
    price = Price("A", 1.0, 2.0, 1.5, 0, "IEX", "V", "V")
    text = "2021-02-22T15:51:45.335689322Z"
    assert orjson.loads(price.to_json(text))["timestamp"] == text
    assert orjson.loads(price.to_json())["timestamp"] == "1970-01-01T00:00:00.000000000Z"


@pytest.mark.parametrize("odd", [0, 1, 2])
def test_any_one_exchange_field_that_needs_escaping_is_escaped(odd: int) -> None:
    fields = ["IEX", "V", "Q"]
    fields[odd] = 'a"b'
    price = Price("A", 1.0, 2.0, 1.5, 0, *fields)
    obj = orjson.loads(price.to_json())
    assert [obj["exchange"], obj["bid_exchange"], obj["ask_exchange"]] == fields


@pytest.mark.off_contract_prices
@pytest.mark.parametrize("field", ["bid", "ask", "mid"])
def test_from_json_names_the_field_that_is_not_a_number(field: str) -> None:
    record = {"symbol": "A", "bid": 1, "ask": 2, "mid": 1.5, "exchange": "V",
              "timestamp": "2021-02-22T15:51:45.000000000Z", field: "1"}  # fmt: skip
    with pytest.raises(ValueError) as info:
        Price.from_json(orjson.dumps(record))
    assert str(info.value) == f"price record field {field!r} is not a number: '1'"


@pytest.mark.off_contract_prices
def test_from_json_says_which_fields_must_be_strings_and_what_is_not_a_record() -> None:
    record = (
        b'{"symbol":1,"bid":1,"ask":2,"mid":1.5,"timestamp":"2021-02-22T15:51:45Z","exchange":"V"}'
    )
    with pytest.raises(ValueError) as info:
        Price.from_json(record)
    assert str(info.value) == (
        "price record fields 'symbol', 'exchange', 'bid_exchange' and 'ask_exchange' "
        "must be strings"
    )
    with pytest.raises(ValueError) as missing:
        Price.from_json(b'{"symbol":"A"}')
    assert str(missing.value) == "not a price record: 'bid'"


@pytest.mark.parametrize(
    "bad",
    [
        "2021-02-22T15:51:45.1234567890",  # 30 characters, no zone
        "2021-02-22T15:51:45.123456789Zx",  # something after the Z
        "2021-02-22T15:51:45.123456789z",  # lower-case zone
        "2021-02-22t15:51:45.123456789Z",  # lower-case separator
        "2021-02-22 15:51:45.123456789Z",  # a space for the T
        "2021-02-22T15:51:45x123456789Z",  # no dot before the fraction
        "2021-02-22T19:15:00x5Z",  # the same, short fraction
        "2021-02-22T19:15:00.5x",  # no zone
        "2021-02-22T19:15:00.1234567890Z",  # 10 fraction digits
        "2021-02-22T15:51:45.12345678xZ",  # not a digit in 9 fraction places
        "2021-02-22xT5:51:45.123456789Z",  # the T one place late
    ],
)
def test_a_bad_timestamp_is_refused_naming_the_text(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rfc3339_ns(bad)
    assert repr(bad) in str(info.value)


def test_nine_fraction_digits_parse_with_either_utc_suffix() -> None:
    assert parse_rfc3339_ns("2021-02-22T19:15:00.123456789+00:00") == 1_614_021_300_123_456_789
    assert parse_rfc3339_ns("2021-02-22T19:15:00.123456789Z") == 1_614_021_300_123_456_789


@pytest.mark.parametrize(
    ("bid", "ask"),
    [(150.25, 150.27), (0.5, 0.75), (0.00000001, 1.0), (33554431.99999999, 33554431.99999999)],
)
def test_prices_with_up_to_8_decimals_below_2_to_the_25_take_the_integer_path(
    bid: float, ask: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path's fast case (the module docstring): such prices never touch Decimal."""
    exact = (Decimal(repr(bid)) + Decimal(repr(ask))) / 2

    def no_decimal(_: str) -> Decimal:
        raise AssertionError("took the Decimal path")

    monkeypatch.setattr("domain.price.Decimal", no_decimal)
    assert exact_mid(bid, ask) == float(exact)
