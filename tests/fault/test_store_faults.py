"""Redis killed (kill -9) and restarted while the service streams at a high rate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import psutil
import pytest

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.redis.reader import PriceReader
from tests.conditions import wait_for
from tests.e2e.service_process import metric_total
from tests.fault.helpers import (
    alpaca_server,
    cached_timestamps,
    quotes_of_active_session,
    service_process,
    wall_ns,
)
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

SYMBOLS = ("AAPL", "AMD", "AMZN", "GOOGL", "META", "MSFT", "NVDA", "QQQ", "SPY", "TSLA")
LOAD = ServerConfig(rate=20_000, batch=50, bar_interval_s=None, seed=3)
OUTAGE_S = 10.0
SAMPLE_EVERY_S = 0.2
RSS_GROWTH_LIMIT = 30 * 1024 * 1024
# Recovery after the restart: the writer retries at most every 0.25 s (StreamMidPrices'
# retry_cap_s, however long the outage), then one write carries every symbol's latest price.
# The bound is that, plus a second of slack, plus three "freshness rounds" measured on the same
# machine under the same load before the kill (how long until every symbol's cached price is
# newer than a given instant): so CPU contention stretches the bound, a backoff that grew
# during the outage (seconds) still fails it.
WRITER_RETRY_CAP_S = 0.25
RECOVERY_SLACK_S = 1.0


async def test_redis_kill9_under_load_degrades_bounded_and_recovers_promptly(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """At 20 000 quotes/s over 10 symbols, Redis is killed with SIGKILL for 10 s, then
    restarted (empty) on the same port. During the outage the process stays up, /health says
    "degraded" with redis "degraded", quotes keep being read (the feed is not stalled by the
    store) and the RSS grows by less than 30 MB (pending prices conflate to the latest per
    symbol). Promptly after the restart (within the writer's retry cap + 1 s + three freshness
    rounds measured before the kill: about 1.3 s on an idle machine) every symbol's cached price
    carries a venue timestamp later than the restart, and /health is healthy again."""
    redis = own_redis_server
    async with (
        alpaca_server(LOAD) as server,
        service_process(tmp_path, server, redis.url, MDS_SYMBOLS=",".join(SYMBOLS)) as service,
        PriceReader(redis.url) as reader,
    ):
        await service.wait_health(
            lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == len(SYMBOLS)
        )
        with anyio.fail_after(5):
            await server.wait_until(lambda: quotes_of_active_session(server) >= set(SYMBOLS))
        process = psutil.Process(service.pid)

        # Warm up: steady state (allocator pools, caches) before the baseline.
        async def written(n: int) -> bool:
            return (await service.metrics())["mds_prices_written_total"] >= n

        await wait_for(lambda: written(60_000), timeout_s=20, step_s=0.1)
        baseline = process.memory_info().rss

        def fresh_after(mark_ns: int) -> Callable[[], Awaitable[bool]]:
            async def fresh() -> bool:
                stamps = await cached_timestamps(reader, SYMBOLS)
                return all(ts > mark_ns for ts in stamps.values())

            return fresh

        # The freshness round with Redis up, under this load, on this machine right now.
        mark_ns, mark_at = wall_ns(), anyio.current_time()
        await wait_for(fresh_after(mark_ns), timeout_s=10, step_s=0.01)
        round_s = anyio.current_time() - mark_at

        await anyio.to_thread.run_sync(redis.kill9)
        await service.wait_health(
            lambda h: h["status"] == "degraded" and h["redis"] == "degraded", timeout_s=5
        )
        quotes_at_kill = (await service.metrics())['mds_messages_total{type="quote"}']

        # The outage: sample memory and health for OUTAGE_S (a measurement, not a wait).
        peak = baseline
        max_pending = 0.0
        samples = 0
        outage_started = anyio.current_time()
        while anyio.current_time() - outage_started < OUTAGE_S:
            assert service.proc.poll() is None, service.log()[-3000:]
            peak = max(peak, process.memory_info().rss)
            health = await service.health()
            assert health is not None
            assert health["status"] == "degraded" and health["redis"] == "degraded", health
            metrics = await service.metrics()
            max_pending = max(max_pending, metrics["mds_pending_writes"])
            samples += 1
            await anyio.sleep(SAMPLE_EVERY_S)
        quotes_during = metrics['mds_messages_total{type="quote"}'] - quotes_at_kill
        pending_at_end = metrics["mds_pending_writes"]

        await anyio.to_thread.run_sync(redis.restart)
        back_ns = wall_ns()
        back_at = anyio.current_time()

        await wait_for(fresh_after(back_ns), timeout_s=20, step_s=0.01)
        recovered_after = anyio.current_time() - back_at
        await service.wait_health(lambda h: h["status"] == "healthy" and h["redis"] == "ok")
        metrics = await service.metrics()

    growth = peak - baseline
    print(
        f"\nRedis outage {OUTAGE_S:g} s at {LOAD.rate:g} quotes/s: {quotes_during:.0f} quotes read,"
        f" RSS baseline {baseline / 2**20:.1f} MiB, peak +{growth / 2**20:.1f} MiB"
        f" ({samples} samples), max pending {max_pending:.0f};"
        f" all symbols fresh {recovered_after * 1000:.0f} ms after the restart"
        f" (freshness round with Redis up: {round_s * 1000:.0f} ms)"
    )
    assert samples >= 5, samples  # fewer under CPU contention: each takes two HTTP calls
    assert quotes_during >= OUTAGE_S * 1_000, quotes_during  # the feed was read all along
    assert growth < RSS_GROWTH_LIMIT, growth
    # Bounded: the queue (50 000 by default) collapses to the latest price per symbol.
    assert max_pending <= 50_000 + 5_000 + len(SYMBOLS), max_pending
    assert pending_at_end <= len(SYMBOLS), pending_at_end
    limit_s = WRITER_RETRY_CAP_S + RECOVERY_SLACK_S + 3 * round_s
    assert recovered_after <= limit_s, (recovered_after, round_s)
    assert metric_total(metrics, "mds_cache_write_errors_total") > 0
    assert metrics["mds_reconnects_total"] == 0  # the feed never noticed
