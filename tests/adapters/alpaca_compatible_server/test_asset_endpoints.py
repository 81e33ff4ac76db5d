"""The crypto and option streams of the local server: protocol details that differ from stocks."""

from __future__ import annotations

import anyio
import pytest

from adapters.alpaca_compatible_server import Faults, ServerConfig
from tests.adapters.alpaca_compatible_server.client import connect, running_server

QUIET = ServerConfig(bar_interval_s=None, faults=Faults(stall=True))
OPTION = "AAPL250117C00150000"


def error(code: int, msg: str) -> dict[str, object]:
    return {"T": "error", "code": code, "msg": msg}


async def test_crypto_ack_lists_the_crypto_channels() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(QUIET) as server,
            connect(server, "/v1beta3/crypto/us", authenticate=True) as client,
        ):
            ack = await client.subscribe(quotes=["BTC/USD"], orderbooks=["ETH/USD"])
    assert ack == {
        "T": "subscription",
        "trades": [],
        "quotes": ["BTC/USD"],
        "bars": [],
        "updatedBars": [],
        "dailyBars": [],
        "orderbooks": ["ETH/USD"],
    }


@pytest.mark.parametrize("path", ["/v1beta1/indicative", "/v1beta1/opra"])
async def test_option_streams_answer_json_with_412(path: str) -> None:
    with anyio.fail_after(5):
        async with running_server(QUIET) as server, connect(server, path) as client:
            assert await client.auth() == error(
                412, "option messages are only available in MsgPack format"
            )


async def test_option_streams_refuse_a_star_for_quotes_and_bars_at_all() -> None:
    with anyio.fail_after(5):
        async with (
            running_server(QUIET) as server,
            connect(server, "/v1beta1/indicative", use_msgpack=True, authenticate=True) as client,
        ):
            assert await client.subscribe(quotes=["*"]) == error(
                413, "star subscription is not allowed for option quotes"
            )
            assert (await client.subscribe(bars=[OPTION]))["code"] == 410
            assert await client.subscribe(quotes=[OPTION]) == {
                "T": "subscription",
                "trades": [],
                "quotes": [OPTION],
            }


async def test_faults_can_target_one_endpoint() -> None:
    config = ServerConfig(
        bar_interval_s=None,
        faults=Faults(insufficient_subscription=True, paths=frozenset({"/v1beta1/opra"})),
    )
    with anyio.fail_after(5):
        async with running_server(config) as server:
            async with connect(server, "/v1beta1/opra", use_msgpack=True) as client:
                assert (await client.auth())["code"] == 409
            async with connect(server, "/v1beta1/indicative", use_msgpack=True) as client:
                assert await client.auth() == {"T": "success", "msg": "authenticated"}
            async with connect(server, "/v2/iex") as client:
                assert await client.auth() == {"T": "success", "msg": "authenticated"}
