"""Asset classes: routing by shape, OCC symbols, crypto pairs in positions, exact crypto mids."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from domain.assets import (
    AssetClass,
    classify,
    crypto_stream_symbol,
    is_crypto_pair,
    is_occ_symbol,
    parse_asset_classes,
    route,
)
from domain.market import Quote
from domain.price import Price, exact_mid, price_from_quote


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("AAPL", AssetClass.US_EQUITY),
        ("BRK.B", AssetClass.US_EQUITY),
        ("FAKEPACA", AssetClass.US_EQUITY),
        ("BTC/USD", AssetClass.CRYPTO),
        ("SHIB/USD", AssetClass.CRYPTO),
        ("ETH/BTC", AssetClass.CRYPTO),
        ("AAPL250117C00150000", AssetClass.US_OPTION),
        ("SPXW251219P05000000", AssetClass.US_OPTION),
        ("A250117C00150000", AssetClass.US_OPTION),
        ("AAPL251317C00150000", AssetClass.US_EQUITY),  # month 13: not an OCC symbol
        ("AAPL250117X00150000", AssetClass.US_EQUITY),  # neither call nor put
        ("AAPL250117C0015000", AssetClass.US_EQUITY),  # 7-digit strike
    ],
)
def test_class_by_shape(symbol: str, expected: AssetClass) -> None:
    assert classify(symbol) is expected


def test_occ_shape() -> None:
    assert is_occ_symbol("AAPL250117C00150000")
    assert not is_occ_symbol("AAPL")
    assert not is_occ_symbol("1AAPL250117C00150000")


@pytest.mark.parametrize(
    ("position", "stream"),
    [
        ("BTCUSD", "BTC/USD"),
        ("ETHUSDT", "ETH/USDT"),
        ("SOLUSDC", "SOL/USDC"),
        ("ETHBTC", "ETH/BTC"),
        ("BTC/USD", "BTC/USD"),
        ("USD", "USD"),  # nothing before the quote currency: left for the caller to report
        ("XYZ", "XYZ"),
    ],
)
def test_alpaca_position_crypto_symbols_map_to_the_stream_form(position: str, stream: str) -> None:
    assert crypto_stream_symbol(position) == stream


def test_route_prefers_the_positions_class_then_the_shape() -> None:
    routed = route(
        ["AAPL", "BTC/USD", "AAPL250117C00150000", "ODD"],
        {"ODD": AssetClass.CRYPTO},
    )
    assert routed == {
        AssetClass.US_EQUITY: frozenset({"AAPL"}),
        AssetClass.CRYPTO: frozenset({"BTC/USD", "ODD"}),
        AssetClass.US_OPTION: frozenset({"AAPL250117C00150000"}),
    }


def test_parse_asset_classes() -> None:
    assert parse_asset_classes(" us_equity, CRYPTO ") == {AssetClass.US_EQUITY, AssetClass.CRYPTO}
    with pytest.raises(ValueError, match="'bonds'"):
        parse_asset_classes("us_equity,bonds")
    with pytest.raises(ValueError, match="no asset class"):
        parse_asset_classes(" , ")


def test_shib_mid_is_exact() -> None:
    assert repr(exact_mid(0.00000912, 0.00000913)) == "9.125e-06"
    assert Decimal(repr(exact_mid(0.00000912, 0.00000913))) == Decimal("0.000009125")
    quote = Quote("SHIB/USD", 0.00000912, 1.5e9, 0.00000913, 2.25e8, "", "", (), "", 1, 2)
    price = price_from_quote(quote, "CRYPTO_US")
    assert isinstance(price, Price)
    assert Price.from_json(price.to_json()).mid == 0.000009125


# Crypto prices: up to 12 decimals below 1 (SHIB, PEPE), up to 9 decimals on large prices.
crypto_prices = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(min_value=1, max_value=10**13),
    st.integers(min_value=0, max_value=12),
).filter(lambda d: Decimal("1e-12") <= d < Decimal(10**7))


@given(crypto_prices, crypto_prices)
@example(Decimal("0.00000912"), Decimal("0.00000913"))
@example(Decimal("0.000000001234"), Decimal("0.000000001235"))
@example(Decimal("97123.123456789"), Decimal("97123.123456791"))
def test_crypto_mid_equals_decimal_arithmetic(a: Decimal, b: Decimal) -> None:
    bid, ask = float(min(a, b)), float(max(a, b))
    exact = (Decimal(repr(bid)) + Decimal(repr(ask))) / 2
    mid = exact_mid(bid, ask)
    assert mid == float(exact)  # the double nearest to the exact decimal midpoint
    if len(exact.normalize().as_tuple().digits) <= 15:
        assert Decimal(repr(mid)) == exact  # prints as that decimal, no binary noise


@pytest.mark.parametrize(
    ("symbol", "pair"),
    [
        ("BTC/USD", True),
        ("AAPL", False),  # no slash
        ("BTC/", False),  # nothing after it
        ("/USD", False),  # nothing before it
        ("A/B/C", False),  # two slashes
    ],
)
def test_a_crypto_pair_is_one_slash_between_two_names(symbol: str, pair: bool) -> None:
    assert is_crypto_pair(symbol) is pair


def test_a_symbol_with_two_slashes_is_routed_as_a_stock_not_a_pair() -> None:
    assert classify("A/B/C") is AssetClass.US_EQUITY


def test_empty_items_in_an_asset_class_list_are_skipped_not_the_end_of_it() -> None:
    assert parse_asset_classes("us_equity,,crypto") == {AssetClass.US_EQUITY, AssetClass.CRYPTO}
    assert parse_asset_classes(",us_option") == {AssetClass.US_OPTION}


def test_an_unknown_asset_class_is_named_with_the_ones_allowed() -> None:
    with pytest.raises(ValueError) as info:
        parse_asset_classes("bonds")
    assert str(info.value) == "unknown asset class 'bonds' (use us_equity, crypto, us_option)"
    with pytest.raises(ValueError) as empty:
        parse_asset_classes(" , ")
    assert str(empty.value) == "names no asset class"
