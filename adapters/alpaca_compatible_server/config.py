"""Configuration of the Alpaca-compatible server: the static settings and the fault switches.

:class:`ServerConfig` is frozen. :class:`Faults` is deliberately mutable: the server keeps its own
copy (``server.faults``) and every session reads it live, so a test can flip a fault while
clients are connected. Per-frame faults take effect on the next frame; the others within
:data:`FAULT_POLL_S`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from adapters.alpaca_compatible_server.endpoints import Endpoint, all_endpoints, endpoint_map

#: How often an idle or stalled session re-reads the live faults (seconds).
FAULT_POLL_S = 0.02

#: The symbols a ``"*"`` subscription streams (the real feed would send the whole market).
DEFAULT_WILDCARD_SYMBOLS: tuple[str, ...] = (
    "AAPL", "AMD", "AMZN", "FAKEPACA", "GOOGL", "META", "MSFT", "NVDA", "QQQ", "SPY", "TSLA",
)  # fmt: skip


class SlowClientPolicy(StrEnum):
    """What a session does when its client cannot keep up with the configured rate.

    The lag is the time the pacing loop is behind schedule; a socket whose kernel buffer is full
    makes ``send`` block, which is how a slow reader shows up. Either way nothing is buffered in
    the server beyond one frame.
    """

    DROP = "drop"
    """Skip the frames that are overdue (counted in ``frames_dropped``) and carry on."""
    DISCONNECT = "disconnect"
    """Send ``407 slow client`` and close, as Alpaca does."""


@dataclass(slots=True)
class Faults:
    """Fault injection, applied to every connection (counts are per connection).

    All switches default to off. Read live by the sessions; assign attributes on
    ``server.faults`` to change them at runtime.
    """

    drop_after_messages: int | None = None
    """Close the TCP connection abruptly (no close frame) once the session has sent this many
    data messages. The last frame is cut short so that exactly this many arrive."""
    drop_every_s: float | None = None
    """Close the TCP connection abruptly this many seconds after it was accepted."""
    drop_with_rst: bool = False
    """Make the abrupt drops a TCP reset (SO_LINGER 0) instead of a FIN."""
    refuse_auth: bool = False
    """Answer every auth with ``402 auth failed`` and close."""
    reject_connections_with_406: bool = False
    """Answer every auth with ``406 connection limit exceeded`` and close."""
    insufficient_subscription: bool = False
    """Answer every auth with ``409 insufficient subscription`` and close."""
    http_429_at_upgrade: bool = False
    """Answer the HTTP upgrade with ``429 Too Many Requests`` instead of ``101``."""
    send_407_then_close: bool = False
    """At the next data frame, send ``407 slow client`` instead and close the WebSocket."""
    malformed_every: int | None = None
    """After every N data frames, inject one malformed frame (rotating through bad encoding, a
    non-list, a quote missing fields, a quote with wrong types, an unknown ``T``)."""
    internal_error: bool = False
    """Answer every auth (message or headers) with ``500 internal error`` and close, as an
    Alpaca server-side fault would."""
    stall: bool = False
    """Send no data (control replies and pongs still flow): a connected but mute feed."""
    paths: frozenset[str] | None = None
    """Apply the faults only to sessions on these endpoint paths (``{"/v1beta1/opra"}``: a plan
    without OPRA, a drop of the crypto stream alone); ``None``: every endpoint."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Static settings. Rates and counts are per connection."""

    host: str = "127.0.0.1"
    port: int = 0
    """0 binds an ephemeral port; read it from ``task_status.started`` or ``server.port``."""
    keys: Mapping[str, str] | None = None
    """Valid credentials, key id to secret. ``None`` accepts any non-empty key and secret."""
    auth_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    """How long a TCP client may take to complete the HTTP upgrade."""
    close_timeout_s: float = 1.0
    """How long the server waits for the client's answer to its close frame."""
    symbol_limit: int | None = None
    """Distinct symbols per session across the endpoint's limited channels (stocks: trades and
    quotes; Alpaca's free plan: 30); ``"*"`` on a limited channel exceeds any limit. Bars and
    the other channels are not counted. ``None``: unlimited."""
    connection_limit: int = 1
    """Sessions per key on ONE endpoint (Alpaca: 1 on most plans); endpoints count
    separately, so a key may hold ``/v2/iex`` and ``/v2/sip`` at once. The next one gets 406."""
    endpoints: tuple[Endpoint, ...] = field(default_factory=all_endpoints)
    """The streams served, by path (stocks, crypto and options by default); any other path is
    refused with HTTP 404 at the upgrade. Add an asset class by adding its endpoints here."""
    rate: float | None = 1000.0
    """Data messages (quotes and trades) per second per session; ``None`` or 0: as fast as the
    socket takes them (benchmark mode)."""
    batch: int = 10
    """Data messages per frame."""
    bar_interval_s: float | None = 60.0
    """Send a minute bar for each ``bars`` symbol this often; ``None`` or 0: never."""
    one_sided_probability: float = 0.0
    """Share of quotes with one empty side (price and size 0)."""
    crossed_probability: float = 0.0
    """Share of quotes whose bid is above the ask."""
    pool_frames: int = 64
    """Minimum number of distinct pre-encoded frames per subscription set."""
    seed: int | None = None
    """Seed for the random walks (``None``: different every session)."""
    wildcard_symbols: tuple[str, ...] = DEFAULT_WILDCARD_SYMBOLS
    slow_client: SlowClientPolicy = SlowClientPolicy.DROP
    max_lag_s: float = 1.0
    """How far behind schedule the pacing loop may fall before the slow-client policy acts."""
    send_timeout_s: float = 10.0
    """A single frame send blocked this long means the client stopped reading: the connection
    is dropped (no 407 can get through a full socket buffer)."""
    max_client_message_bytes: int = 4 * 1024 * 1024
    faults: Faults = field(default_factory=Faults)
    """Initial faults; the server copies them into its live ``server.faults``."""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if self.rate is not None and self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.pool_frames < 1:
            raise ValueError("pool_frames must be at least 1")
        for name in ("one_sided_probability", "crossed_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.symbol_limit is not None and self.symbol_limit < 0:
            raise ValueError("symbol_limit must be >= 0")
        if self.connection_limit < 1:
            raise ValueError("connection_limit must be at least 1")
        endpoint_map(self.endpoints)  # raises on duplicates
        if self.keys is not None and any(not k or not s for k, s in self.keys.items()):
            raise ValueError("keys must map non-empty key ids to non-empty secrets")

    def __repr__(self) -> str:
        # Never show credentials, not even the key ids.
        keys = "any" if self.keys is None else f"<{len(self.keys)} configured>"
        return (
            f"ServerConfig(host={self.host!r}, port={self.port}, keys={keys}, "
            f"rate={self.rate}, batch={self.batch}, symbol_limit={self.symbol_limit}, "
            f"faults={self.faults!r})"
        )
