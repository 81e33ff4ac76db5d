"""The initial image with the real wiring: the service as a process, the local server's streams
mute (``stall``) so no quote ever streams, its REST latest quotes on the same port, a real
Redis. Every class is priced from the snapshot alone, then again after a reconnect."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from adapters.alpaca_compatible_server.config import Faults, ServerConfig
from adapters.redis.reader import PriceReader
from entrypoints.testbed.helpers import alpaca_server, service_process
from tests.conditions import wait_for
from tests.ports import refused_port
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

OPTION = "AAPL250117C00150000"
SYMBOLS = ("AAPL", "BTC/USD", OPTION)
MUTE = ServerConfig(seed=3, bar_interval_s=None, faults=Faults(stall=True))


async def priced_after(reader: PriceReader, after_ns: int) -> dict[str, object]:
    while True:
        cached = await reader.get_many(list(SYMBOLS))
        if all(s in cached and cached[s].price.ts_event_ns > after_ns for s in SYMBOLS):
            return dict(cached)
        await anyio.sleep(0.02)


async def test_symbols_the_stream_never_quotes_are_priced_from_the_local_servers_snapshot(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    async with (
        alpaca_server(MUTE) as server,
        service_process(
            tmp_path,
            server,
            own_redis_server.url,
            ALPACA_CRYPTO_STREAM_URL=server.url + "/v1beta3/crypto/us",
            ALPACA_OPTIONS_STREAM_URL=server.url + "/v1beta1/indicative",
            MDS_SYMBOLS=",".join(SYMBOLS),
            MDS_INITIAL_IMAGE="true",
        ) as service,
        PriceReader(own_redis_server.url) as reader,
    ):
        await service.wait_health(lambda h: h["subscribed_symbols"] == 3)
        with anyio.fail_after(5):  # the virtual-time test holds the 1 s bound; this is a process
            cached = await priced_after(reader, 0)
        assert server.stats.frames_sent == 0  # nothing streamed: the prices are the snapshot's
        assert server.stats.rest_requests >= 3
        metrics = await service.metrics()
        assert metrics["mds_snapshot_quotes_total"] >= 3
        assert metrics["mds_snapshot_missing_total"] == 0
        exchanges = [cached[s].price.exchange for s in SYMBOLS]  # type: ignore[attr-defined]
        assert exchanges == ["IEX", "CRYPTO_US", "INDICATIVE"]
        for s in SYMBOLS:
            p = cached[s].price  # type: ignore[attr-defined]
            assert Decimal(repr(p.mid)) == (Decimal(repr(p.bid)) + Decimal(repr(p.ask))) / 2

        # After a reconnect, the quiet symbols are refreshed from a new snapshot.
        before_ns = time.time_ns()
        requests = server.stats.rest_requests
        for session in list(server.sessions.values()):
            await session.abort("test: drop")
        with anyio.fail_after(20):
            await priced_after(reader, before_ns)
        assert server.stats.rest_requests >= requests + 3
        assert server.stats.frames_sent == 0


async def test_an_unreachable_rest_api_never_holds_the_stream(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    # Held for the whole test (bound, never listening): every REST call is refused. (A port
    # closed again at once could be taken by another process's server.)
    with refused_port() as port:
        async with (
            alpaca_server(ServerConfig(rate=200, batch=5, seed=3, bar_interval_s=None)) as server,
            service_process(
                tmp_path,
                server,
                own_redis_server.url,
                MDS_SYMBOLS="AAPL,MSFT",
                MDS_INITIAL_IMAGE="true",
                ALPACA_DATA_URL=f"http://127.0.0.1:{port}",
            ) as service,
            PriceReader(own_redis_server.url) as reader,
        ):
            await service.wait_health(lambda h: h["status"] == "healthy")

            async def both_priced() -> bool:
                return len(await reader.get_many(["AAPL", "MSFT"])) == 2

            await wait_for(both_priced, timeout_s=10)
            assert server.stats.rest_requests == 0
            await wait_for(lambda: "symbols skipped" in service.log(), timeout_s=10)
            assert (await service.metrics())["mds_snapshot_missing_total"] >= 2
