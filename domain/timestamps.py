"""Timestamps as integer nanoseconds since the Unix epoch (UTC), and their ISO-8601 form.

The venue sends nanoseconds; ``datetime`` keeps only microseconds, so the domain carries ``int``
nanoseconds and formats them itself. The text form is fixed-width,
``YYYY-MM-DDTHH:MM:SS.fffffffffZ``: Python 3.11+ ``datetime.fromisoformat`` parses it (to the
microsecond), and because every field has a fixed width, text order is time order (the Redis
"never older over newer" check relies on that).
"""

from __future__ import annotations

import calendar
import time
from functools import lru_cache

NS_PER_SECOND = 1_000_000_000


@lru_cache(maxsize=8192)
def _second_prefix(epoch_seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_seconds))


@lru_cache(maxsize=8192)
def _prefix_seconds(prefix: str) -> int:
    return calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))


def format_ns(ts_ns: int) -> str:
    """Format nanoseconds since the epoch as fixed-width ISO-8601 UTC with 9 fraction digits."""
    seconds, nanos = divmod(ts_ns, NS_PER_SECOND)
    return f"{_second_prefix(seconds)}.{nanos:09d}Z"


def parse_rfc3339_ns(text: str) -> int:
    """Parse an RFC-3339 UTC timestamp (``Z`` or ``+00:00``; 0 to 9 fraction digits) to nanoseconds.

    Raises ``ValueError`` for anything else. The seconds part is cached: a stream's timestamps
    share it for a whole second, so the common case costs a slice and an ``int``.
    """
    if len(text) == 30 and text[29] == "Z" and text[19] == "." and text[10] == "T":
        # The common case (9 fraction digits, as Alpaca and the local server send).
        fraction = text[20:29]
        if fraction.isdigit():
            return _prefix_seconds(text[:19]) * NS_PER_SECOND + int(fraction)
        raise ValueError(f"bad fraction of a second in {text!r}")
    if len(text) < 20 or text[10] != "T":
        raise ValueError(f"not an RFC-3339 timestamp: {text!r}")
    if text.endswith("Z"):
        body = text[:-1]
    elif text.endswith("+00:00"):
        body = text[:-6]
    else:
        raise ValueError(f"not a UTC timestamp: {text!r}")
    seconds = _prefix_seconds(body[:19])
    if len(body) == 19:
        return seconds * NS_PER_SECOND
    fraction = body[20:]
    if body[19] != "." or not fraction.isdigit() or len(fraction) > 9:
        raise ValueError(f"bad fraction of a second in {text!r}")
    return seconds * NS_PER_SECOND + int(fraction.ljust(9, "0"))
