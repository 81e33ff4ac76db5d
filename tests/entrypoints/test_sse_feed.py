"""Where ``/prices/stream`` gets its prices, through the running service (``entrypoints.service.
run``): the instance that streams hands its published batches to the fan-out in-process (no bus
subscription: it does not read its own prices back from Redis), a standby follows the bus, and
a takeover switches the standby's clients from one to the other without a gap or a repeat."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import httpx
import redis

from adapters.memory import InMemoryEventBus
from application.status import Role
from domain.timestamps import parse_rfc3339_ns
from entrypoints.service import Running, run
from entrypoints.settings import load_settings
from ports.event_bus import PRICE_CHANNEL_PREFIX
from tests.conditions import wait_for
from tests.entrypoints.test_http_sse import events
from tests.redis_servers import RedisServer

EMBEDDED = {"MDS_HTTP_PORT": "0", "MDS_SIM_RATE": "200", "MDS_LOG_FORMAT": "json"}


async def read_prices(
    url: str, symbol: str, into: list[dict[str, Any]], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Append every price event of ``/prices/stream?symbols=symbol`` (image first) to ``into``."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as c,
        c.stream("GET", f"/prices/stream?symbols={symbol}") as r,
    ):
        assert r.status_code == 200
        task_status.started()
        async for event in events(r.aiter_lines()):
            if "data" in event:
                into.append(json.loads(event["data"]))


def assert_in_order_without_repeats(got: list[dict[str, Any]]) -> None:
    stamps = [parse_rfc3339_ns(p["timestamp"]) for p in got]
    assert stamps == sorted(stamps), stamps
    assert len({json.dumps(p, sort_keys=True) for p in got}) == len(got)


async def test_a_single_instance_feeds_its_stream_in_process_without_the_bus() -> None:
    settings = load_settings(EMBEDDED)  # the simulator, the in-memory store and bus
    got: list[dict[str, Any]] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            running: Running = await tg.start(run, settings)
            bus = running.service.bus
            assert isinstance(bus, InMemoryEventBus)
            await tg.start(read_prices, running.http_urls[0], "AAPL", got)
            await wait_for(lambda: len(got) >= 5)  # the image, then updates as they come
            assert bus._subscribers == []  # ...none of them read back from the bus
            assert {p["symbol"] for p in got} == {"AAPL"}
            assert_in_order_without_repeats(got)
            tg.cancel_scope.cancel()


def subscribers(url: str, symbols: list[str]) -> Mapping[str, int]:
    """Redis's count of (plain) subscribers of each symbol's price channel."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        channels = [PRICE_CHANNEL_PREFIX + s for s in symbols]
        answer = client.pubsub_numsub(*channels)
        return {str(name).removeprefix(PRICE_CHANNEL_PREFIX): n for name, n in answer}
    finally:
        client.close()


async def test_leader_in_process_standby_via_the_bus_and_a_takeover_switches(
    own_redis_server: RedisServer,
) -> None:
    url = own_redis_server.url
    settings = load_settings(
        EMBEDDED | {"REDIS_URL": url, "MDS_HA": "true", "MDS_HA_LEASE_TTL": "2"}
    )
    first_got: list[dict[str, Any]] = []
    second_got: list[dict[str, Any]] = []

    async def numsub() -> Mapping[str, int]:
        return await anyio.to_thread.run_sync(subscribers, url, ["AAPL", "MSFT"])

    async def instance(
        scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[Running]
    ) -> None:
        with scope:
            await run(settings, task_status=task_status)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            first_scope, first_reader = anyio.CancelScope(), anyio.CancelScope()
            first: Running = await tg.start(instance, first_scope)
            await wait_for(lambda: first.service.status.role is Role.LEADER, timeout_s=20)
            second: Running = await tg.start(instance, anyio.CancelScope())
            assert second.service.status.role is Role.STANDBY

            async def read_first(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with first_reader:
                    await read_prices(
                        first.http_urls[0], "AAPL", first_got, task_status=task_status
                    )

            await tg.start(read_first)
            await tg.start(read_prices, second.http_urls[0], "MSFT", second_got)
            await wait_for(lambda: len(first_got) >= 5 and len(second_got) >= 5, timeout_s=20)
            # The leader's clients (AAPL) cost no subscription; the standby's (MSFT) follow one.
            assert await numsub() == {"AAPL": 0, "MSFT": 1}

            # Takeover: the leader stops, the standby leads and feeds its clients in-process.
            first_reader.cancel()
            first_scope.cancel()
            await wait_for(lambda: second.service.status.role is Role.LEADER, timeout_s=20)
            await wait_for(lambda: second.service.status.counters["published"] > 0)

            async def unsubscribed() -> bool:
                return await numsub() == {"AAPL": 0, "MSFT": 0}

            await wait_for(unsubscribed, timeout_s=10)
            before = len(second_got)
            await wait_for(lambda: len(second_got) >= before + 3, timeout_s=20)
            assert await numsub() == {"AAPL": 0, "MSFT": 0}
            assert {p["symbol"] for p in second_got} == {"MSFT"}
            assert_in_order_without_repeats(second_got)
            assert_in_order_without_repeats(first_got)
            tg.cancel_scope.cancel()


async def test_a_failing_live_stream_feed_fails_alone(monkeypatch: Any) -> None:
    """An optional feature fails alone: a fault in the fan-out's in-process feed never reaches
    the writer (prices go on being published, none retried), /health and mds_feature_failing
    name it, and it recovers by itself when the fault is gone."""
    from application.price_fanout import PriceFanOut

    broken = True
    original = PriceFanOut.published

    def published(self: PriceFanOut, prices: Any) -> None:
        if broken:
            raise RuntimeError("table bug")
        original(self, prices)

    monkeypatch.setattr(PriceFanOut, "published", published)
    settings = load_settings(EMBEDDED)
    got: list[dict[str, Any]] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
            running: Running = await tg.start(run, settings)
            url = running.http_urls[0]
            await tg.start(read_prices, url, "AAPL", got)
            counters = running.service.status.counters
            await wait_for(lambda: "live_stream" in running.service.status.features.failing)
            before = counters["published"]
            await wait_for(lambda: counters["published"] >= before + 20)  # prices flow on
            health = (await http.get(f"{url}/health")).json()
            assert health["status"] == "degraded" and "live_stream failing" in health["detail"]
            metrics = (await http.get(f"{url}/metrics")).text
            assert 'mds_feature_failing{feature="live_stream"} 1.0' in metrics
            broken = False
            await wait_for(lambda: "live_stream" not in running.service.status.features.failing)
            seen = len(got)
            await wait_for(lambda: len(got) > seen)  # the client gets prices again
            assert_in_order_without_repeats(got)
            tg.cancel_scope.cancel()
