"""Signals (issue 11): SIGHUP leaves like SIGTERM; a second signal cuts the shutdown short and
says what it dropped."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.redis.reader import PriceReader
from tests.conditions import wait_for
from tests.fault.helpers import (
    NewestPrices,
    alpaca_server,
    pending_writes_reach,
    service_process,
    signal_and_wait_clean_exit,
    subscribe_prices,
)
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "TSLA")


async def test_sighup_under_load_leaves_like_sigterm(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """SIGHUP at 5,000 quotes/s: exit 0 within 2 s, a close frame (1000) to the venue, and the
    newest price a subscriber received for each symbol is the cached one (pending flushed).
    Before: the default action killed the process (exit -1, no close frame, no flush)."""
    config = ServerConfig(rate=5_000, batch=50, bar_interval_s=None, seed=31)
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS)
        ) as service,
        PriceReader(own_redis_server.url) as reader,
        anyio.create_task_group() as tg,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
        )
        seen = NewestPrices()
        await tg.start(subscribe_prices, reader, SYMBOLS, seen)
        await wait_for(lambda: seen.received >= 2_000 and len(seen.newest) == len(SYMBOLS))

        code, took = await signal_and_wait_clean_exit(
            service, server, reader, seen, SYMBOLS, signal.SIGHUP
        )
        tg.cancel_scope.cancel()

    log = service.log()
    print(f"\nSIGHUP at 5,000 quotes/s: exit {code} after {took * 1000:.0f} ms")
    assert code == 0
    assert took < 2.0
    assert "received SIGHUP: shutting down" in log
    assert '"msg":"stopped"' in log


async def test_a_second_sigterm_exits_at_once_and_logs_how_many_prices_were_dropped(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """With Redis frozen (SIGSTOP) prices pile up unwritten and the first SIGTERM's flush waits
    out its deadline; a second SIGTERM exits at once (143) with one line counting the prices
    it dropped. Before: the second signal was ignored until the flush deadline."""
    config = ServerConfig(rate=1_000, batch=10, bar_interval_s=None, seed=37)
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path, server, own_redis_server.url, MDS_SYMBOLS=",".join(SYMBOLS)
        ) as service,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
        )
        own_redis_server.pause()
        try:
            await pending_writes_reach(service, 50)
            service.proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: "received SIGTERM: shutting down" in service.log(), 5)
            sent_at = anyio.current_time()
            service.proc.send_signal(signal.SIGTERM)
            code = await service.wait_exit(5)
            took = anyio.current_time() - sent_at
        finally:
            own_redis_server.resume()

    log = service.log()
    print(f"\nsecond SIGTERM: exit {code} after {took * 1000:.0f} ms")
    assert code == 128 + signal.SIGTERM
    assert took < 0.5
    (line,) = [x for x in log.splitlines() if "exiting at once" in x]
    dropped = int(line.split("; ")[1].split(" prices dropped")[0])
    assert dropped >= 50
