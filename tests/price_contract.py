"""The price message's JSON Schema (``domain/price.schema.json``, shipped in the package) as the
tests hold every price to it.

- :func:`check_price_json`: a ``price:{SYMBOL}`` value or a ``price.updated.{SYMBOL}`` message.
- :func:`check_http_price`: a price in an HTTP API answer (the message plus ``age_s``/``stale``).
- :func:`validating_from_json`: wraps ``Price.from_json`` so that every record a test reads
  through the adapters (the cache, the bus, :class:`~adapters.redis.reader.PriceReader`) is
  validated too; the root conftest installs it for every test.

fastjsonschema compiles the schema to Python (~5 µs per price, against ~100-400 µs for
jsonschema), so tests that read thousands of prices can validate each one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema

import domain
from domain.price import Price

SCHEMA_PATH = Path(domain.__file__).parent / "price.schema.json"
PRICE_SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
_validate: Callable[[object], object] = fastjsonschema.compile(PRICE_SCHEMA)


class PriceContractError(AssertionError):
    """A price that does not fit the published schema."""


def check_price(obj: Mapping[str, object]) -> None:
    try:
        _validate(dict(obj))
    except fastjsonschema.JsonSchemaException as e:
        raise PriceContractError(f"price breaks the schema: {e}: {obj!r:.300}") from None


def check_price_json(raw: object) -> dict[str, Any]:
    """Parse and validate one price message; returns it. ``None`` (a missing key) fails."""
    if raw is None:
        raise PriceContractError("no price (the key is missing)")
    if not isinstance(raw, bytes | str):
        raise PriceContractError(f"a price is JSON text, got {type(raw).__name__}")
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise PriceContractError(f"a price is a JSON object, got {obj!r:.100}")
    check_price(obj)
    return obj


def check_http_price(body: Mapping[str, object]) -> None:
    """A price in an HTTP answer: the message's fields plus ``age_s`` and ``stale``."""
    rest = dict(body)
    age, stale = rest.pop("age_s", None), rest.pop("stale", None)
    if not isinstance(age, int | float) or isinstance(age, bool) or not isinstance(stale, bool):
        raise PriceContractError(f"age_s (number) and stale (bool) expected: {body!r:.300}")
    check_price(rest)


def validating_from_json(original: Callable[[bytes | str], Price]) -> Callable[..., Price]:
    """``Price.from_json`` that also validates every record it parses successfully (records
    it refuses still raise its own ``ValueError``, as the adapters expect)."""

    def from_json(data: bytes | str) -> Price:
        price = original(data)
        check_price_json(data)
        return price

    return from_json
