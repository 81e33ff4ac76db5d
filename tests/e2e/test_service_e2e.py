"""Local stream server -> service (a real process) -> real Redis -> /health, /prices, pub/sub;
the connection dropped mid-stream and recovered; SIGTERM ends it cleanly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest
import redis

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader
from domain.price import Price
from tests.e2e.service_process import SECRET, parse_metrics, start_service
from tests.price_contract import check_http_price, check_price_json
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def exact(price: Price) -> bool:
    return Decimal(repr(price.mid)) == (Decimal(repr(price.bid)) + Decimal(repr(price.ask))) / 2


async def test_stream_to_redis_with_a_drop_and_a_clean_sigterm(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    server = AlpacaCompatibleServer(ServerConfig(rate=400, batch=10, seed=7, bar_interval_s=None))
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        service = start_service(tmp_path, f"{server.url}/v2/iex", own_redis_server.url)
        try:
            health = await service.wait_health(
                lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 2
            )
            assert health["websocket_connected"] is True and health["redis"] == "ok"

            received: list[Price] = []
            with anyio.fail_after(20):
                async with PriceReader(own_redis_server.url) as reader:
                    async with reader.subscribe(["AAPL", "MSFT"]) as updates:
                        async for price in updates:
                            received.append(price)
                            if len(received) == 200:
                                break
                    # The connection drops mid-stream; the service reconnects and resubscribes.
                    drops_before = server.stats.auth_successes
                    await server.drop_connections()
                    await server.wait_until(lambda: server.stats.auth_successes > drops_before)
                    await service.wait_health(
                        lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 2
                    )
                    session = next(iter(server.active_sessions.values()))
                    assert {"AAPL", "MSFT"} <= set(session.subscriptions.get("quotes", ()))
                    after: list[Price] = []
                    async with reader.subscribe(["AAPL", "MSFT"]) as updates:
                        async for price in updates:
                            after.append(price)
                            if len(after) == 50:
                                break
                    cached = await reader.get_many(["AAPL", "MSFT"])

            assert all(exact(p) for p in received + after)
            for symbol in ("AAPL", "MSFT"):
                stamps = [p.ts_event_ns for p in received if p.symbol == symbol]
                assert stamps == sorted(stamps)  # in order per symbol
            assert set(cached) == {"AAPL", "MSFT"} and not cached["AAPL"].stale

            raw = redis.Redis.from_url(own_redis_server.url)
            try:
                assert 290 < raw.ttl("price:AAPL") <= 300
                cached_json = check_price_json(raw.get("price:AAPL"))
                assert cached_json["symbol"] == "AAPL" and cached_json["exchange"] == "IEX"
                assert cached_json["bid_exchange"] == cached_json["ask_exchange"] == "V"
            finally:
                raw.close()

            answer = await service.get("/prices/AAPL")
            assert answer.status_code == 200 and answer.json()["stale"] is False
            check_http_price(answer.json())
            metrics = parse_metrics((await service.get("/metrics")).text)
            # One reconnect per session the service lost: the drop, plus one per 406 while the
            # server still held the dropped session (every session but the live one ended).
            assert metrics["mds_reconnects_total"] == server.stats.connections_accepted - 1
            assert metrics["mds_reconnects_total"] >= 1

            service.terminate()  # the 2 s bound is the fault tier's (SIGTERM under load)
            assert service.proc.returncode == 0
            await server.wait_until(lambda: 1000 in server.stats.client_close_codes)
            log = service.log()
            assert SECRET not in log
        finally:
            service.kill()
        tg.cancel_scope.cancel()
