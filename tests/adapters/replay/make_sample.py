"""Regenerate adapters/replay/data/sample.jsonl.gz: AlpacaQuoteFeed with a recorder, against the
local Alpaca-compatible server (random-walk quotes, a few one-sided and crossed ones).

    .venv/bin/python -m tests.adapters.replay.make_sample [seconds]
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from adapters.alpaca import AlpacaFeedConfig, AlpacaQuoteFeed, Secret, record_stream
from adapters.alpaca_compatible_server import AlpacaCompatibleServer, ServerConfig
from domain.market import Subscriptions

SYMBOLS = frozenset({"AAPL", "MSFT", "SPY", "BRK.B"})
TARGET = Path(__file__).parents[3] / "adapters" / "replay" / "data" / "sample.jsonl.gz"


async def make(seconds: float, target: Path) -> None:
    server = AlpacaCompatibleServer(
        ServerConfig(
            rate=100.0,
            batch=2,
            seed=20240724,
            one_sided_probability=0.03,
            crossed_probability=0.01,
            bar_interval_s=None,
        )
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        config = AlpacaFeedConfig(
            Secret("PKSAMPLE"), Secret("sample-secret"), url=f"{server.url}/v2/iex",
            record_path=target,
        )  # fmt: skip
        stats = await record_stream(AlpacaQuoteFeed(config), Subscriptions.quotes(SYMBOLS), seconds)
        nursery.cancel_scope.cancel()
    print(f"{target}: {stats.frames} frames, {stats.messages['quote']} quotes")


if __name__ == "__main__":
    TARGET.unlink(missing_ok=True)  # the recorder appends
    trio.run(make, float(sys.argv[1]) if len(sys.argv) > 1 else 6.0, TARGET)
