"""How old a price is, measured against a wall-clock time the caller passes in, and how far
ahead of that clock a venue timestamp may be.

**Future skew.** A venue timestamp more than ``max_skew`` ahead of our receive clock is not
trusted (a venue or clock fault): the quote is refused, never cached, published or used to order
later quotes, and a cached price stamped that far ahead (written by anything) is replaceable and
stale. Within the skew (clocks a few milliseconds apart), a price stamped ahead has age 0: no
price is ever reported fresh with a negative age.
"""

from __future__ import annotations

from typing import NamedTuple

from domain.price import Price
from domain.timestamps import NS_PER_SECOND

DEFAULT_MAX_AGE_S = 300.0
DEFAULT_MAX_FUTURE_SKEW_S = 5.0


def skew_ns(max_skew_s: float) -> int:
    """``max_skew_s`` in whole nanoseconds (the unit of every comparison below)."""
    return round(max_skew_s * NS_PER_SECOND)


def too_far_ahead(ts_event_ns: int, now_ns: int, max_skew_ns: int) -> bool:
    """True when the venue's ``ts_event_ns`` is more than ``max_skew_ns`` ahead of ``now_ns``
    (our clock: for a quote, the time we received it)."""
    return ts_event_ns - now_ns > max_skew_ns


def future_limit_ns(now_ns: int, max_skew_ns: int) -> int:
    """The newest venue timestamp still trusted at ``now_ns`` (see :func:`too_far_ahead`)."""
    return now_ns + max_skew_ns


def age_seconds(price: Price, now_ns: int) -> float:
    """Seconds between the venue's timestamp and ``now_ns`` (negative if the venue is ahead)."""
    return (now_ns - price.ts_event_ns) / NS_PER_SECOND


def is_stale(
    price: Price,
    now_ns: int,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> bool:
    """True when the price is strictly older than ``max_age_s``, or stamped more than
    ``max_future_skew_s`` ahead of ``now_ns`` (not trusted)."""
    return AgedPrice.at(price, now_ns, max_age_s, max_future_skew_s).stale


class AgedPrice(NamedTuple):
    """A price with its age and stale flag at one moment, as readers return it."""

    price: Price
    age_s: float
    stale: bool

    @classmethod
    def at(
        cls,
        price: Price,
        now_ns: int,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    ) -> AgedPrice:
        """Age the price at ``now_ns``. Stamped ahead of ``now_ns`` by at most the skew: age 0
        (clock jitter). Further ahead: stale, with its (negative) age shown as it is."""
        age = age_seconds(price, now_ns)
        if age >= 0:
            return cls(price, age, age > max_age_s)
        if too_far_ahead(price.ts_event_ns, now_ns, skew_ns(max_future_skew_s)):
            return cls(price, age, True)
        return cls(price, 0.0, False)


def silence_s(last_data_ns: int | None, expected_since_ns: int, now_ns: int) -> float:
    """Seconds a subscribed stream has gone without data at ``now_ns``: since its last data, or
    since data was first expected (``expected_since_ns``: the stream got its symbols) when
    none has come since. Never negative (clocks read a few ns apart)."""
    start = expected_since_ns if last_data_ns is None else max(last_data_ns, expected_since_ns)
    return max(0.0, (now_ns - start) / NS_PER_SECOND)


def is_silent(silent_s: float, stall_after_s: float | None) -> bool:
    """True when a subscribed stream's silence counts as a stall: it lasted longer than
    ``stall_after_s`` (MDS_DATA_TIMEOUT: the operator's word that these symbols trade, the
    data watchdog's threshold too). ``None``: quiet streams are normal (closed markets,
    quiet symbols), silence is never a fault."""
    return stall_after_s is not None and silent_s > stall_after_s
