"""What a session needs from the server that runs it: counters, live faults, credentials and
the connection slots.

:class:`SessionHost` is the one seam between ``session.py`` and ``server.py``: the session
imports this module, never the server, so the two modules do not import each other. The server
satisfies the protocol structurally (mypy checks it where the server builds its sessions).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

from adapters.alpaca_compatible_server.config import Faults, ServerConfig


@dataclass(slots=True)
class ServerStats:
    """Counters over the server's lifetime (all connections)."""

    connections_accepted: int = 0
    """TCP connections accepted (before the upgrade)."""
    upgrades_rejected: int = 0
    """Upgrades answered with an HTTP error: 429 (fault ``http_429_at_upgrade``) or 404 (a path
    that is no endpoint)."""
    handshake_timeouts: int = 0
    rest_requests: int = 0
    """Market-data REST requests answered (latest quotes, ``rest.py``)."""
    auth_attempts: int = 0
    """Auth messages and upgrades carrying the key headers."""
    auth_successes: int = 0
    header_auths: int = 0
    """Sessions authenticated by the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers."""
    errors_sent: Counter[int] = field(default_factory=Counter)
    """``{"T":"error"}`` messages sent, by code."""
    frames_sent: int = 0
    """Data frames (quotes, trades, bars); malformed and control frames are not counted."""
    messages_sent: int = 0
    """Data messages."""
    control_frames_sent: int = 0
    malformed_frames_sent: int = 0
    frames_dropped: int = 0
    """Frames skipped by the ``drop`` slow-client policy."""
    connections_dropped: int = 0
    """TCP connections closed without a close frame (faults, blocked sends)."""
    slow_client_disconnects: int = 0
    client_close_codes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))
    """Close codes sent by clients (1006: the client dropped TCP without a close frame)."""
    accept_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    """``trio.current_time()`` of each accepted connection, stamped on accepting (a test reading
    the counter later would stamp it late; these are never earlier than the client's connect)."""
    rejected_upgrade_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    """``trio.current_time()`` of each upgrade answered with an HTTP error, stamped before the
    answer is sent (as ``error_times``)."""
    error_times: dict[int, deque[float]] = field(default_factory=dict)
    """By code, ``trio.current_time()`` of each error message, stamped before it is sent (so
    never later than the client's receipt: gaps measured from here are never too long)."""


class SessionHost(Protocol):
    """The server as its sessions see it."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def faults(self) -> Faults:
        """Live fault switches (read on every use: tests flip them while sessions run)."""
        ...

    @property
    def stats(self) -> ServerStats: ...

    def notify(self) -> None:
        """Wake whoever waits for a counter or a session to change."""

    def credentials_valid(self, key: str, secret: str) -> bool: ...

    def claim_slot(self, key: str, endpoint: str, session_id: int) -> bool:
        """Take one of ``key``'s connection slots on ``endpoint`` (a path such as
        ``/v2/iex``) for session ``session_id``; False when the endpoint's limit is reached
        (406). The server frees the slot when the session ends."""
        ...

    def record_client_close(self, code: int) -> None: ...
