"""Building blocks of the fault suite (the server in-process, the service as a real process, a
Redis subscriber, a positions gateway): the code lives in :mod:`entrypoints.testbed.helpers`,
shared with the chaos soak; re-exported here."""

from __future__ import annotations

from entrypoints.testbed.helpers import (
    NewestPrices,
    PositionsGateway,
    alpaca_server,
    authenticated_sessions,
    cached_timestamps,
    quotes_of_active_session,
    record_times,
    service_process,
    subscribe_prices,
    wall_ns,
)

__all__ = [
    "NewestPrices",
    "PositionsGateway",
    "alpaca_server",
    "authenticated_sessions",
    "cached_timestamps",
    "quotes_of_active_session",
    "record_times",
    "service_process",
    "subscribe_prices",
    "wall_ns",
]
