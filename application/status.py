"""What the service knows about itself: the source of /health, /ready and /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from domain.connection import ConnectionState, ConnectionStateMachine
from domain.features import FeatureHealth
from domain.staleness import silence_s

FUTURE_REFUSAL_DEGRADED_S = 10.0
"""How long /health stays degraded after a quote was refused as stamped in the future."""


class StoreState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


@dataclass
class ServiceStatus:
    """Mutable state shared by the use cases of one service; read by the HTTP API.

    Counters (``counters``): ``quotes``, ``trades``, ``bars``, ``other_events``,
    ``no_mid_empty_bid``, ``no_mid_empty_ask``, ``no_mid_crossed``, ``prices`` (computed),
    ``prices_written``, ``published``, ``conflated``, ``refused_older``, ``refused_future``
    (stamped more than MDS_MAX_FUTURE_SKEW ahead of their receive time), ``dropped``,
    ``cache_write_errors``, ``position_sync_errors``, ``symbols_rejected``.
    """

    started_at: float
    connection: ConnectionStateMachine = field(default_factory=ConnectionStateMachine)
    reconnect_attempts: int = 0  # consecutive failed attempts since the last healthy session
    reconnects: int = 0  # every reconnect since start
    last_message_ns: int | None = None  # wall time of the last frame received
    # Wall time since which data is expected: set when the stream first has confirmed symbols,
    # kept across reconnects (a watchdog reconnect to a silent venue is no fresh start),
    # cleared when the stream stops (no symbols, leadership lost, shutdown).
    data_expected_since_ns: int | None = None
    connected_since: float | None = None
    store: StoreState = StoreState.OK
    store_error: str | None = None
    fatal_error: str | None = None
    role: Role = Role.LEADER
    desired: frozenset[str] = frozenset()
    confirmed: frozenset[str] = frozenset()
    left_out: tuple[str, ...] = ()
    rejected: frozenset[str] = frozenset()
    unrouted: frozenset[str] = frozenset()  # asset class not streamed (MDS_ASSET_CLASSES)
    # Wanted, subscribed, but left out of the venue's ack (unknown to it): asked for again at
    # every sync; shown in /subscriptions and the /health detail.
    unconfirmed: frozenset[str] = frozenset()
    last_sync_error: str | None = None
    pending_writes: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    # The last quote refused as stamped in the future (what and when, monotonic): /health says
    # degraded for FUTURE_REFUSAL_DEGRADED_S after it.
    last_future_refusal: str | None = None
    last_future_refused_at: float | None = None
    # Optional features failing alone (recording, metrics, HTTP API, position sync): prices
    # flow on, health says degraded with the reason.
    features: FeatureHealth = field(default_factory=FeatureHealth)

    @property
    def state(self) -> ConnectionState:
        return self.connection.state

    def set_state(self, state: ConnectionState) -> None:
        """Move the connection state machine; repeating the current state is a no-op."""
        if self.connection.state is not state:
            self.connection.to(state)

    @property
    def connected(self) -> bool:
        return self.connection.state is ConnectionState.CONNECTED

    @property
    def streaming(self) -> bool:
        """Connected, subscribed to something, and the cache is being written."""
        return self.connected and bool(self.confirmed) and self.store is StoreState.OK

    def health(self) -> Health:
        if self.connection.failed or self.fatal_error is not None:
            return Health.FAILED
        if self.role is Role.STANDBY:
            ok = self.store is StoreState.OK and not self.features.failing
            return Health.HEALTHY if ok else Health.DEGRADED
        if not self.connected or self.store is not StoreState.OK or self.features.failing:
            return Health.DEGRADED
        return Health.HEALTHY

    def note_subscribed(self, now_ns: int) -> None:
        """After a subscribe or unsubscribe: data is expected from ``now_ns`` on if symbols
        are now confirmed and were not expected before; with none confirmed, none is."""
        if not self.confirmed:
            self.data_expected_since_ns = None
        elif self.data_expected_since_ns is None:
            self.data_expected_since_ns = now_ns

    def silent_s(self, now_ns: int) -> float | None:
        """Seconds without data since data is expected (the stream got its symbols), through
        reconnects (a stall's watchdog reconnects, or any other cause of no prices); None when
        no data is expected (nothing subscribed, the stream stopped)."""
        since = self.data_expected_since_ns
        if since is None:
            return None
        return silence_s(self.last_message_ns, since, now_ns)

    def future_refusal_detail(self, now: float) -> str | None:
        """Why /health is degraded by future-stamped quotes, while the last one is recent."""
        at = self.last_future_refused_at
        if at is None or now - at > FUTURE_REFUSAL_DEGRADED_S:
            return None
        return (
            f"{self.counters['refused_future']} quotes refused as stamped in the future "
            f"(last: {self.last_future_refusal})"
        )

    def uptime_s(self, now: float) -> float:
        return now - self.started_at
