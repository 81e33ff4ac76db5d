"""The position source (the execution gateway) failing, and the positions.changed signal."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import redis

from adapters.alpaca_compatible_server.config import ServerConfig
from tests.conditions import wait_for
from tests.e2e.service_process import ServiceProcess
from tests.fault.helpers import PositionsGateway, alpaca_server, service_process
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.e2e]

STREAM = ServerConfig(rate=200, batch=10, bar_interval_s=None, seed=17)


async def subscriptions(service: ServiceProcess) -> dict[str, object]:
    answer = await service.get("/subscriptions")
    answer.raise_for_status()
    body: dict[str, object] = answer.json()
    return body


async def sync_errors(service: ServiceProcess) -> float:
    return (await service.metrics())["mds_position_sync_errors_total"]


async def test_position_source_down_for_several_cycles_keeps_subscriptions_then_catches_up(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """Positions are polled every second from a gateway holding NVDA (plus MDS_SYMBOLS=AAPL).
    The gateway then answers HTTP 500 for two sync cycles and is down (connection refused)
    for two more: the subscriptions stay exactly as they were, the stream stays connected,
    /health says degraded naming position_sync (the feature fails alone), the failures are
    counted and reported in /subscriptions. The gateway comes back holding TSLA too: TSLA is
    subscribed at the venue at the next cycle, NVDA kept, /health healthy again."""
    gateway = PositionsGateway({"NVDA"})
    async with alpaca_server(STREAM) as server, anyio.create_task_group() as tg:
        await gateway.up(tg)
        async with service_process(
            tmp_path,
            server,
            own_redis_server.url,
            MDS_SYMBOLS="AAPL",
            MDS_POSITION_SOURCE="gateway",
            MDS_POSITIONS_URL=gateway.url,
            MDS_POSITION_SYNC_INTERVAL="1",
            MDS_POSITION_CALLS_PER_MINUTE="600",  # a poll a second, 3 attempts each
        ) as service:
            await service.wait_health(
                lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 2
            )
            before = await subscriptions(service)
            assert before["confirmed"] == ["AAPL", "NVDA"]

            async def failing_cycles_keep_everything(cycles: int) -> None:
                start = await sync_errors(service)
                with anyio.fail_after(8 * cycles):
                    while await sync_errors(service) < start + cycles:
                        now = await subscriptions(service)
                        assert now["confirmed"] == before["confirmed"], now
                        assert now["desired"] == before["desired"], now
                        health = await service.health()
                        # Position sync fails alone: prices flow, /health says degraded and
                        # why (issue 11), nothing else is wrong.
                        assert health is not None and health["websocket_connected"], health
                        assert health["status"] == "healthy" or (
                            health["status"] == "degraded"
                            and "position_sync failing" in str(health["detail"])
                        ), health
                        await anyio.sleep(0.1)  # poll interval; fail_after bounds it
                health = await service.health()
                assert health is not None and health["status"] == "degraded", health

            gateway.status = 500
            await failing_cycles_keep_everything(2)
            gateway.down()
            await failing_cycles_keep_everything(2)
            during = await subscriptions(service)
            assert during["last_sync_error"], during

            gateway.status = 200
            gateway.set_positions({"NVDA", "TSLA"})
            await gateway.up(tg)

            async def tsla_confirmed() -> bool:
                return (await subscriptions(service))["confirmed"] == ["AAPL", "NVDA", "TSLA"]

            await wait_for(tsla_confirmed, timeout_s=10, step_s=0.05)
            await service.wait_health(lambda h: h["status"] == "healthy", timeout_s=5)
            with anyio.fail_after(5):
                await server.wait_until(
                    lambda: any(
                        s.subscriptions["quotes"] == {"AAPL", "NVDA", "TSLA"}
                        for s in server.sessions.values()
                    )
                )
            after = await subscriptions(service)
            metrics = await service.metrics()
        gateway.down()
        tg.cancel_scope.cancel()

    assert after["last_sync_error"] is None
    assert metrics["mds_position_sync_errors_total"] >= 4
    assert metrics["mds_reconnects_total"] == 0
    assert server.stats.connections_accepted == 1  # changes applied on the open session


async def test_positions_changed_signal_syncs_within_1_s(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """With the periodic sync every 300 s, a message on the Redis channel positions.changed
    makes the service read the gateway at once: a new position (TSLA) is subscribed at the
    venue within 1 s of the signal."""
    gateway = PositionsGateway({"NVDA"})
    raw = redis.Redis.from_url(own_redis_server.url)
    try:
        async with alpaca_server(STREAM) as server, anyio.create_task_group() as tg:
            await gateway.up(tg)
            async with service_process(
                tmp_path,
                server,
                own_redis_server.url,
                MDS_SYMBOLS="AAPL",
                MDS_POSITION_SOURCE="gateway",
                MDS_POSITIONS_URL=gateway.url,
                MDS_POSITION_SYNC_INTERVAL="300",
            ) as service:
                await service.wait_health(
                    lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 2
                )

                # The service listens on positions.changed once its subscription is confirmed.
                def listening() -> bool:
                    counts = dict(raw.pubsub_numsub("positions.changed"))
                    return int(counts.get(b"positions.changed", 0)) >= 1

                await wait_for(lambda: listening(), timeout_s=10, step_s=0.05)
                requests_before = gateway.requests
                gateway.set_positions({"NVDA", "TSLA"})

                def venue_has_tsla() -> bool:
                    return any(
                        "TSLA" in s.subscriptions["quotes"] for s in server.sessions.values()
                    )

                signalled_at = anyio.current_time()
                receivers = await anyio.to_thread.run_sync(
                    lambda: raw.publish("positions.changed", b'{"reason":"fill"}')
                )
                with anyio.fail_after(5):
                    await server.wait_until(venue_has_tsla)
                took = anyio.current_time() - signalled_at
                confirmed = (await subscriptions(service))["confirmed"]
            gateway.down()
            tg.cancel_scope.cancel()
    finally:
        raw.close()

    assert receivers == 1
    assert gateway.requests == requests_before + 1  # one read, triggered by the signal
    assert took <= 1.0, took
    assert confirmed == ["AAPL", "NVDA", "TSLA"]
