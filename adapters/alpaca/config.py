"""Settings of the Alpaca feed adapter: explicit, typed, validated once; secrets never shown.

The adapter reads no environment: the entrypoint builds an :class:`AlpacaFeedConfig` from its
settings and passes it in.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from domain.errors import FatalFeedError

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "wss://stream.data.alpaca.markets/v2/iex"
URL_SETTING: Final = "ALPACA_STREAM_URL"
INSECURE_SETTING: Final = "MDS_ALLOW_INSECURE_WS"

WireFormat = Literal["json", "msgpack"]
AuthMode = Literal["header", "message"]


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and f-strings give ``***``.

    Only :meth:`reveal` returns the value, and only the adapter calls it, to build the auth
    message it sends. Equality compares values (so configs compare), hashing is by value too.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class AlpacaFeedConfig:
    """Everything the Alpaca stream adapter needs; durations in seconds.

    - ``data_watchdog_s``: while something is subscribed, no frame for this long ends the
      session with ``FeedStalled`` (None: no watchdog; quiet symbols or closed markets).
    - ``subscribe_chunk``: at most this many symbols per subscribe/unsubscribe message.
    - ``event_buffer_frames``: frames decoded but not yet taken by ``events()``; when full, the
      reader waits (back-pressure) rather than drop data.
    - ``record_path``: append every received frame there (JSON lines; gzip if it ends in .gz).
    - ``allow_insecure``: permit ``ws://`` to a non-loopback host (logged loudly).
    - ``auth``: ``header`` sends the keys as ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY``
      headers with the upgrade (Alpaca's header auth: one round trip less on every reconnect,
      and the keys never travel inside a WebSocket frame); ``message`` sends the auth message
      after ``connected``, as the SDKs do.
    - ``header_auth_wait_s``: with header auth, how long to wait for ``authenticated`` after
      ``connected`` before sending the auth message anyway (Alpaca's reply to header auth is
      not documented; a redundant auth message only earns 403, which counts as success).
    - ``max_message_size``: a larger frame ends the session (close 1009). 10 MiB: news and
      large batches can exceed the 1 MiB many clients default to. What one frame can cost to
      decode is bounded in ``wire.decode_frame`` (at most ``MAX_MESSAGES_PER_FRAME`` messages,
      counted before parsing), so a hostile frame at the limit adds well under 200 MB.
    """

    api_key: Secret
    secret_key: Secret
    url: str = DEFAULT_URL
    fmt: WireFormat = "json"
    connect_timeout_s: float = 10.0
    auth_timeout_s: float = 10.0
    subscribe_ack_timeout_s: float = 5.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    data_watchdog_s: float | None = None
    close_timeout_s: float = 2.0
    max_message_size: int = 10 * 1024 * 1024
    message_queue_size: int = 8
    event_buffer_frames: int = 256
    subscribe_chunk: int = 400
    allow_insecure: bool = False
    record_path: Path | None = None
    auth: AuthMode = "header"
    header_auth_wait_s: float = 2.0
    url_setting: str = URL_SETTING  # the variable an operator should check for this stream
    plan_hint: str = "use wss://stream.data.alpaca.markets/v2/iex on the free plan"

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, Secret) or not isinstance(self.secret_key, Secret):
            raise TypeError("api_key and secret_key must be wrapped in Secret(...)")
        if self.fmt not in ("json", "msgpack"):
            raise ValueError(f"fmt must be 'json' or 'msgpack', got {self.fmt!r}")
        for name in (
            "connect_timeout_s",
            "auth_timeout_s",
            "subscribe_ack_timeout_s",
            "ping_interval_s",
            "ping_timeout_s",
            "close_timeout_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.data_watchdog_s is not None and not 0 < self.data_watchdog_s < math.inf:
            raise ValueError(f"data_watchdog_s must be > 0 or None, got {self.data_watchdog_s!r}")
        for name in ("max_message_size", "message_queue_size", "event_buffer_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.auth not in ("header", "message"):
            raise ValueError(f"auth must be 'header' or 'message', got {self.auth!r}")
        if not 0 < self.header_auth_wait_s < math.inf:
            raise ValueError("header_auth_wait_s must be a positive number of seconds")
        if self.subscribe_chunk < 1:
            raise ValueError(f"subscribe_chunk must be >= 1, got {self.subscribe_chunk!r}")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (no name resolution)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_transport(url: str, allow_insecure: bool, setting: str = URL_SETTING) -> None:
    """Refuse a URL the adapter must not use; touches no network.

    ``wss://`` is always fine; ``ws://`` only to a loopback host, or anywhere when
    ``allow_insecure`` (then a WARNING is logged, as the keys would travel in clear text).
    Raises :class:`FatalFeedError` naming ``setting`` (``ALPACA_STREAM_URL``) otherwise.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise FatalFeedError(f"invalid stream URL: {e}", setting=setting) from e
    if parts.scheme not in ("ws", "wss") or not host:
        raise FatalFeedError(
            f"stream URL must be wss://host/path (got scheme {parts.scheme!r})",
            setting=setting,
        )
    if parts.scheme == "wss" or is_loopback_host(host):
        return
    if not allow_insecure:
        raise FatalFeedError(
            f"refusing unencrypted ws:// to non-loopback host {host!r}: the API keys would "
            f"travel in clear text; use wss:// (or set {INSECURE_SETTING}=true for a trusted "
            "network)",
            setting=setting,
        )
    log.warning(
        "INSECURE: streaming over unencrypted ws:// to %s (%s is set); API keys and data "
        "travel in clear text",
        host,
        INSECURE_SETTING,
    )
