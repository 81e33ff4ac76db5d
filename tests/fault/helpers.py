"""Building blocks of the fault suite (the server in-process, the service as a real process, a
Redis subscriber, a positions gateway): the code lives in :mod:`entrypoints.testbed.helpers`,
shared with the chaos soak; re-exported here."""

from __future__ import annotations

import signal
from collections.abc import Sequence

import anyio

from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader
from entrypoints.testbed.helpers import (
    NewestPrices,
    PositionsGateway,
    alpaca_server,
    authenticated_sessions,
    cached_timestamps,
    quotes_of_active_session,
    service_process,
    subscribe_prices,
    wall_ns,
)
from entrypoints.testbed.service_process import ServiceProcess, metric_total
from tests.conditions import wait_for

__all__ = [
    "NewestPrices",
    "PositionsGateway",
    "alpaca_server",
    "authenticated_sessions",
    "cached_timestamps",
    "pending_writes_reach",
    "quotes_of_active_session",
    "service_process",
    "signal_and_wait_clean_exit",
    "subscribe_prices",
    "wall_ns",
]


async def pending_writes_reach(service: ServiceProcess, count: int) -> None:
    """Wait until at least ``count`` prices wait unwritten (the store is stuck)."""

    async def piling_up() -> bool:
        return metric_total(await service.metrics(), "mds_pending_writes") >= count

    await wait_for(piling_up, timeout_s=10, step_s=0.05)


async def signal_and_wait_clean_exit(
    service: ServiceProcess,
    server: AlpacaCompatibleServer,
    reader: PriceReader,
    seen: NewestPrices,
    symbols: Sequence[str],
    sig: signal.Signals,
) -> tuple[int, float]:
    """Send ``sig`` to a streaming service; its exit code and the seconds it took, once every
    price it published is the cached one and the venue saw close 1000.

    The subscriber (in this process) may still be reading what was published just before the
    exit: on a loaded 2-core machine it lagged more than 5 s behind 10,000 prices/s."""
    sent_at = anyio.current_time()
    service.proc.send_signal(sig)
    code = await service.wait_exit(5)
    took = anyio.current_time() - sent_at
    cached = await reader.get_many(symbols)
    await wait_for(
        lambda: all(s in cached and seen.newest.get(s) == cached[s].price for s in symbols),
        timeout_s=30,
    )
    with anyio.fail_after(5):
        await server.wait_until(lambda: 1000 in server.stats.client_close_codes)
    return code, took
