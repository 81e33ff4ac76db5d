"""How old a price is, measured against a wall-clock time the caller passes in."""

from __future__ import annotations

from typing import NamedTuple

from domain.price import Price
from domain.timestamps import NS_PER_SECOND

DEFAULT_MAX_AGE_S = 300.0


def age_seconds(price: Price, now_ns: int) -> float:
    """Seconds between the venue's timestamp and ``now_ns`` (negative if the venue is ahead)."""
    return (now_ns - price.ts_event_ns) / NS_PER_SECOND


def is_stale(price: Price, now_ns: int, max_age_s: float = DEFAULT_MAX_AGE_S) -> bool:
    """True when the price is strictly older than ``max_age_s``."""
    return age_seconds(price, now_ns) > max_age_s


class AgedPrice(NamedTuple):
    """A price with its age and stale flag at one moment, as readers return it."""

    price: Price
    age_s: float
    stale: bool

    @classmethod
    def at(cls, price: Price, now_ns: int, max_age_s: float = DEFAULT_MAX_AGE_S) -> AgedPrice:
        age = age_seconds(price, now_ns)
        return cls(price, age, age > max_age_s)
