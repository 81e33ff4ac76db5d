"""Symbols: Alpaca's format, validated once at the edge.

Rule: 1 to 21 characters; the first is an upper-case letter or a digit, the rest upper-case
letters, digits, ``.`` (class shares, ``BRK.B``), ``/`` (crypto pairs, ``BTC/USD``) or ``-``.
21 is the length of an OCC option symbol, the longest Alpaca streams. Lower case is refused, not
silently upper-cased, except by :func:`normalize_symbol`, which callers use on human input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from domain.errors import InvalidSymbol

MAX_SYMBOL_LENGTH = 21
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9./\-]*")


def validate_symbol(symbol: object) -> str:
    """Return ``symbol`` unchanged if it is valid, else raise :class:`InvalidSymbol` naming it."""
    if not isinstance(symbol, str):
        raise InvalidSymbol(symbol, "not a string")
    if not symbol:
        raise InvalidSymbol(symbol, "empty")
    if len(symbol) > MAX_SYMBOL_LENGTH:
        raise InvalidSymbol(symbol, f"longer than {MAX_SYMBOL_LENGTH} characters")
    if _SYMBOL.fullmatch(symbol) is None:
        raise InvalidSymbol(
            symbol,
            "use upper-case letters, digits, '.', '/' or '-', starting with a letter or digit",
        )
    return symbol


def normalize_symbol(text: str) -> str:
    """Strip and upper-case human input, then validate it."""
    return validate_symbol(text.strip().upper())


def parse_symbol_list(text: str) -> frozenset[str]:
    """Parse a comma-separated list (``"AAPL, msft,BRK.B"``); empty items are ignored."""
    return validate_symbols(normalize_symbol(part) for part in text.split(",") if part.strip())


def validate_symbols(symbols: Iterable[str]) -> frozenset[str]:
    """Validate every symbol; the first bad one raises :class:`InvalidSymbol`."""
    return frozenset(validate_symbol(s) for s in symbols)
