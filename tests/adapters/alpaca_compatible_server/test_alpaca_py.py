"""alpaca-py's StockDataStream (a client nobody here wrote; msgpack, message auth) against the
local server: every channel it can subscribe, in raw mode (wire dicts) and model mode (its
pydantic models). If the server drifts from Alpaca's protocol, alpaca-py notices here.

alpaca-py runs its own asyncio loop in a worker thread; the server runs in the test's trio loop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import anyio
import msgpack
import pytest

from adapters.alpaca_compatible_server import ServerConfig
from tests.adapters.alpaca_compatible_server.client import running_server

stock = pytest.importorskip("alpaca.data.live.stock")
models = pytest.importorskip("alpaca.data.models")

SYMBOL = "AAPL"
#: What alpaca-py delivers per registration, with the wire type behind it.
CHANNELS = ("trades", "quotes", "bars", "updated_bars", "daily_bars", "statuses",
            "corrections", "cancels")  # fmt: skip


def run_alpaca_py(url: str, raw: bool, timeout_s: float) -> dict[str, list[Any]]:
    """Subscribe every channel of StockDataStream, collect until each delivered at least one
    message (or the timeout), then stop. Runs in a worker thread with its own asyncio loop."""
    got: dict[str, list[Any]] = defaultdict(list)
    stream = stock.StockDataStream("PKTEST", "secret", raw_data=raw, url_override=url)

    def collector(name: str) -> Any:
        async def handler(data: Any) -> None:
            got[name].append(data)
            if all(got[c] for c in CHANNELS):
                await stream.stop_ws()

        return handler

    stream.subscribe_trades(collector("trades"), SYMBOL)
    stream.subscribe_quotes(collector("quotes"), SYMBOL)
    stream.subscribe_bars(collector("bars"), SYMBOL)
    stream.subscribe_updated_bars(collector("updated_bars"), SYMBOL)
    stream.subscribe_daily_bars(collector("daily_bars"), SYMBOL)
    stream.subscribe_trading_statuses(collector("statuses"), SYMBOL)
    stream.register_trade_corrections(collector("corrections"))
    stream.register_trade_cancels(collector("cancels"))

    async def main() -> None:
        try:
            await asyncio.wait_for(stream._run_forever(), timeout_s)
        except TimeoutError:
            pass
        finally:
            await stream.close()

    asyncio.run(main())
    return dict(got)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "models"])
async def test_alpaca_py_stock_stream_receives_every_channel(raw: bool) -> None:
    config = ServerConfig(rate=100, batch=5, bar_interval_s=0.3, seed=5)
    with anyio.fail_after(30):
        async with running_server(config) as server:
            url = f"{server.url}/v2/iex"
            got = await anyio.to_thread.run_sync(run_alpaca_py, url, raw, 15.0)
            assert server.stats.auth_successes >= 1
            await server.wait_until(lambda: not server.sessions)
            (session,) = server.ended_sessions
            assert session.format.value == "msgpack"  # alpaca-py always asks for msgpack
    assert sorted(got) == sorted(CHANNELS), f"nothing on {set(CHANNELS) - set(got)}"
    if raw:
        wire_type = {
            "trades": "t", "quotes": "q", "bars": "b", "updated_bars": "u", "daily_bars": "d",
            "statuses": "s", "corrections": "c", "cancels": "x",
        }  # fmt: skip
        for name, messages in got.items():
            assert all(m["T"] == wire_type[name] and m["S"] == SYMBOL for m in messages)
            assert all(isinstance(m["t"], msgpack.Timestamp) for m in messages)  # alpaca-py #247
    else:
        expected = {"trades": models.Trade, "quotes": models.Quote, "bars": models.Bar,
                    "updated_bars": models.Bar, "daily_bars": models.Bar,
                    "statuses": models.TradingStatus, "corrections": models.TradeCorrection,
                    "cancels": models.TradeCancel}  # fmt: skip
        for name, messages in got.items():
            assert all(isinstance(m, expected[name]) for m in messages), name
            assert all(m.symbol == SYMBOL for m in messages)
        quote = got["quotes"][0]
        assert quote.bid_exchange == "V" and quote.ask_exchange == "V"  # the IEX feed
        assert quote.bid_price > 0 and quote.ask_price >= quote.bid_price
