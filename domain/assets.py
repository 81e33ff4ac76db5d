"""Asset classes: which stream carries a symbol, by the position's class or the symbol's shape.

Alpaca streams three classes on three endpoints, each its own session:

- ``us_equity``: stocks and ETFs (``AAPL``, ``BRK.B``), ``/v2/{iex|sip}``;
- ``crypto``: pairs written ``BASE/QUOTE`` (``BTC/USD``), ``/v1beta3/crypto/us``;
- ``us_option``: OCC contract symbols (``AAPL250117C00150000``: root, expiry ``YYMMDD``,
  ``C``/``P``, strike × 1000 in 8 digits), ``/v1beta1/{indicative|opra}``.

**Routing rule.** A symbol's class is the one its position names (Alpaca's ``asset_class``, or
the gateway's optional ``asset_class``); failing that, its shape decides (:func:`classify`): a
``/`` makes it crypto, an OCC shape an option, anything else a stock. The same rule applies to
``MDS_SYMBOLS``.

**Crypto symbols in positions.** Alpaca's positions name a pair without the slash (``BTCUSD``)
while its data stream wants ``BTC/USD``: :func:`crypto_stream_symbol` puts the slash back before
a known quote currency.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final


class AssetClass(StrEnum):
    """Alpaca's ``asset_class`` values; each is served by its own stream."""

    US_EQUITY = "us_equity"
    CRYPTO = "crypto"
    US_OPTION = "us_option"


ALL_ASSET_CLASSES: Final = frozenset(AssetClass)

# Root (1-6 characters: letters, digits, '.' for adjusted roots), expiry YYMMDD, C/P, strike
# in thousandths as 8 digits. Alpaca writes the root unpadded (``AAPL250117C00150000``).
_OCC: Final = re.compile(r"[A-Z][A-Z0-9.]{0,5}\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[CP]\d{8}")

# Quote currencies of Alpaca's crypto pairs, longest first so USDT wins over USD.
CRYPTO_QUOTE_CURRENCIES: Final = ("USDT", "USDC", "USD", "BTC")


def is_occ_symbol(symbol: str) -> bool:
    """True for an OCC option contract symbol (``AAPL250117C00150000``)."""
    return _OCC.fullmatch(symbol) is not None


def is_crypto_pair(symbol: str) -> bool:
    """True for ``BASE/QUOTE`` (``BTC/USD``): one slash with letters or digits on both sides."""
    base, sep, quote = symbol.partition("/")
    return bool(sep and base and quote and "/" not in quote)


def classify(symbol: str) -> AssetClass:
    """The asset class a symbol's shape says (the routing rule's fallback)."""
    if "/" in symbol and is_crypto_pair(symbol):
        return AssetClass.CRYPTO
    if len(symbol) >= 16 and is_occ_symbol(symbol):
        return AssetClass.US_OPTION
    return AssetClass.US_EQUITY


def parse_asset_class(value: object) -> AssetClass | None:
    """``AssetClass`` for one of Alpaca's values (case-insensitive), else None (unknown)."""
    if not isinstance(value, str):
        return None
    try:
        return AssetClass(value.strip().lower())
    except ValueError:
        return None


def parse_asset_classes(text: str) -> frozenset[AssetClass]:
    """Parse ``"us_equity,crypto"``; raises ``ValueError`` naming an unknown class or none."""
    classes: set[AssetClass] = set()
    for part in text.split(","):
        word = part.strip().lower()
        if not word:
            continue
        found = parse_asset_class(word)
        if found is None:
            allowed = ", ".join(c.value for c in AssetClass)
            raise ValueError(f"unknown asset class {word!r} (use {allowed})")
        classes.add(found)
    if not classes:
        raise ValueError("names no asset class")
    return frozenset(classes)


def crypto_stream_symbol(symbol: str) -> str:
    """The stream's form of a crypto pair: ``BTCUSD`` -> ``BTC/USD``; ``BTC/USD`` unchanged.

    A symbol that ends in none of :data:`CRYPTO_QUOTE_CURRENCIES` (or is nothing but one) is
    returned unchanged: the caller reports it rather than guessing.
    """
    if "/" in symbol:
        return symbol
    for quote in CRYPTO_QUOTE_CURRENCIES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    return symbol


def route(
    symbols: Iterable[str], classes: Mapping[str, AssetClass] | None = None
) -> dict[AssetClass, frozenset[str]]:
    """Split symbols by class: the class ``classes`` gives (from positions), else the shape."""
    known = classes or {}
    out: dict[AssetClass, set[str]] = {}
    for symbol in symbols:
        out.setdefault(known.get(symbol) or classify(symbol), set()).add(symbol)
    return {c: frozenset(s) for c, s in out.items()}
