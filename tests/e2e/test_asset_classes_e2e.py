"""Stocks, crypto and options from one service (a real process) against the local server's three
streams and a real Redis: positions from the gateway and from an Alpaca-positions fake are all
priced; a plan without options leaves stocks and crypto streaming; each stream survives its own
drop and re-subscribes."""

from __future__ import annotations

import time
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest

from adapters.alpaca_compatible_server.config import Faults, ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader
from entrypoints.testbed.helpers import PositionsGateway, alpaca_server, service_process
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def auths_above(server: AlpacaCompatibleServer, count: int) -> bool:
    return server.stats.auth_successes > count


OPTION = "AAPL250117C00150000"
SYMBOLS = ("AAPL", "BTC/USD", OPTION)
CRYPTO_PATH = "/v1beta3/crypto/us"
OPTIONS_PATH = "/v1beta1/indicative"
STREAM = ServerConfig(rate=300, batch=5, seed=3, bar_interval_s=None)


def stream_env(server_url: str) -> dict[str, str]:
    return {
        "ALPACA_CRYPTO_STREAM_URL": server_url + CRYPTO_PATH,
        "ALPACA_OPTIONS_STREAM_URL": server_url + OPTIONS_PATH,
        "MDS_SYMBOLS": "",
        "MDS_INITIAL_IMAGE": "false",
    }


async def all_priced_after(reader: PriceReader, symbols: tuple[str, ...], after_ns: int) -> None:
    """Wait until every symbol has a cached price stamped after ``after_ns``."""
    while True:
        cached = await reader.get_many(list(symbols))
        if all(s in cached and cached[s].price.ts_event_ns > after_ns for s in symbols):
            for aged in cached.values():
                p = aged.price
                assert Decimal(repr(p.mid)) == (Decimal(repr(p.bid)) + Decimal(repr(p.ask))) / 2
            return
        await anyio.sleep(0.05)


def streams(health: dict[str, object]) -> dict[str, dict[str, Any]]:
    """The ``streams`` part of a /health answer."""
    return cast(dict[str, dict[str, Any]], health["streams"])


async def test_gateway_positions_of_every_class_are_priced_and_each_stream_survives_its_drop(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    gateway = PositionsGateway(())
    gateway.body = orjson.dumps(
        {
            "positions": [
                {"symbol": "AAPL", "qty": 10},
                {"symbol": "BTCUSD", "qty": "0.25", "asset_class": "crypto"},
                {"symbol": OPTION, "qty": -2},
            ]
        }
    )
    async with alpaca_server(STREAM) as server, anyio.create_task_group() as tg:
        await gateway.up(tg)
        async with (
            service_process(
                tmp_path,
                server,
                own_redis_server.url,
                MDS_POSITION_SOURCE="gateway",
                MDS_POSITIONS_URL=gateway.url,
                **stream_env(server.url),
            ) as service,
            PriceReader(own_redis_server.url) as reader,
        ):
            health = await service.wait_health(
                lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 3
            )
            assert {n: s["state"] for n, s in streams(health).items()} == {
                "us_equity": "connected",
                "crypto": "connected",
                "us_option": "connected",
            }
            with anyio.fail_after(15):
                await all_priced_after(reader, SYMBOLS, 0)
            cached = await reader.get_many(list(SYMBOLS))
            assert [cached[s].price.exchange for s in SYMBOLS] == [
                "IEX", "CRYPTO_US", "INDICATIVE"
            ]  # fmt: skip
            # One session per endpoint, each holding only its class.
            sessions = {s.path: s for s in server.sessions.values() if s.authenticated}
            assert set(sessions) == {"/v2/iex", CRYPTO_PATH, OPTIONS_PATH}
            assert sessions[CRYPTO_PATH].subscriptions["quotes"] == {"BTC/USD"}
            assert sessions[OPTIONS_PATH].subscriptions["quotes"] == {OPTION}

            # Each stream survives its own drop: the others keep their sessions.
            for path in (CRYPTO_PATH, OPTIONS_PATH, "/v2/iex"):
                others = {p: s.id for p, s in sessions.items() if p != path}
                before = server.stats.auth_successes
                await sessions[path].abort("test: drop this stream only")
                with anyio.fail_after(15):
                    await server.wait_until(partial(auths_above, server, before))
                    await service.wait_health(
                        lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 3
                    )
                sessions = {s.path: s for s in server.sessions.values() if s.authenticated}
                assert {p: sessions[p].id for p in others} == others  # untouched
                assert sessions[path].subscriptions["quotes"]  # re-subscribed
                with anyio.fail_after(15):
                    await all_priced_after(reader, SYMBOLS, time.time_ns())
            metrics = await service.metrics()
            for name in ("us_equity", "crypto", "us_option"):
                assert metrics[f'mds_stream_reconnects_total{{stream="{name}"}}'] == 1
        gateway.down()


async def test_alpaca_positions_with_real_asset_classes_are_priced(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    alpaca = PositionsGateway(())
    alpaca.body = orjson.dumps(
        [
            {"symbol": "AAPL", "qty": "5", "side": "long", "asset_class": "us_equity"},
            {"symbol": "BTCUSD", "qty": "0.1", "side": "long", "asset_class": "crypto"},
            {"symbol": OPTION, "qty": "1", "side": "long", "asset_class": "us_option"},
        ]
    )
    async with alpaca_server(STREAM) as server, anyio.create_task_group() as tg:
        await alpaca.up(tg)
        async with (
            service_process(
                tmp_path,
                server,
                own_redis_server.url,
                MDS_POSITION_SOURCE="alpaca",
                ALPACA_TRADING_URL=f"http://127.0.0.1:{alpaca.port}",
                **stream_env(server.url),
            ) as service,
            PriceReader(own_redis_server.url) as reader,
        ):
            await service.wait_health(
                lambda h: h["status"] == "healthy" and h["subscribed_symbols"] == 3
            )
            with anyio.fail_after(15):
                await all_priced_after(reader, SYMBOLS, 0)
            subs = (await service.get("/subscriptions")).json()
            assert subs["streams"]["crypto"]["confirmed"] == ["BTC/USD"]
            assert subs["streams"]["us_option"]["confirmed"] == [OPTION]
        alpaca.down()


async def test_a_plan_without_options_leaves_stocks_and_crypto_streaming(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    config = ServerConfig(
        rate=300,
        batch=5,
        seed=3,
        bar_interval_s=None,
        faults=Faults(insufficient_subscription=True, paths=frozenset({OPTIONS_PATH})),
    )
    async with (
        alpaca_server(config) as server,
        service_process(
            tmp_path,
            server,
            own_redis_server.url,
            **{**stream_env(server.url), "MDS_SYMBOLS": ",".join(SYMBOLS)},
        ) as service,
        PriceReader(own_redis_server.url) as reader,
    ):
        health = await service.wait_health(
            lambda h: (
                streams(h)["us_option"]["state"] == "disabled"
                and streams(h)["us_equity"]["connected"]
                and streams(h)["crypto"]["connected"]
            )
        )
        assert health["status"] == "degraded"
        assert "us_option stream disabled" in str(health["detail"])
        assert "409" in streams(health)["us_option"]["detail"]
        with anyio.fail_after(15):
            await all_priced_after(reader, ("AAPL", "BTC/USD"), 0)
        await anyio.sleep(1)  # stays up, and the options stream is not retried
        assert service.proc.poll() is None
        option_auths = [s for s in server.ended_sessions if s.path == OPTIONS_PATH]
        assert len(option_auths) == 1
        lines = [line for line in service.log().splitlines() if "us_option stream disabled" in line]
        assert len(lines) == 1
