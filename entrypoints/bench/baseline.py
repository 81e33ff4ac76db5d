"""The benchmark's competitor: what users write by hand today, alpaca-py -> redis.asyncio.

``python -m entrypoints.bench.baseline --url ws://127.0.0.1:PORT/v2/iex --redis-port N
--symbols 100 --mode naive|pipeline|batched``

alpaca-py's ``StockDataStream`` (msgpack, pydantic ``Quote`` models) with a quote handler that
computes the mid the usual way, ``(bid + ask) / 2`` in floats, serialises with ``json.dumps``
and writes ``price:{S}`` (SETEX, 300 s) and publishes ``price.updated.{S}``:

- ``naive``: ``await r.setex(...); await r.publish(...)`` per quote;
- ``pipeline``: one two-command pipeline per quote;
- ``batched``: the handler appends to a list, one task drains everything queued into one
  pipeline (SETEX + PUBLISH per quote) - the best of what people write by hand.

This is deliberately the ordinary asyncio code a user writes (it is the competitor, not our
code). On SIGUSR1 it prints ``{"quotes": n, "published": m}`` (quotes handled, prices
published) as one line on stdout; on SIGTERM or SIGINT the same, then it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import redis.asyncio as aioredis
from alpaca.data.live import StockDataStream

MODES = ("naive", "pipeline", "batched")
TTL_S = 300


class Counters:
    quotes = 0
    published = 0


def quote_json(q: Any) -> str:
    """The price record as a hand-written handler builds it (float mid, json.dumps)."""
    return json.dumps(
        {
            "symbol": q.symbol,
            "bid": q.bid_price,
            "ask": q.ask_price,
            "mid": (q.bid_price + q.ask_price) / 2,
            "timestamp": q.timestamp.isoformat(),
            "exchange": q.bid_exchange,
        }
    )


def make_handler(mode: str, redis_url: str) -> Any:
    """The quote handler for ``mode`` (an ``async def``, as alpaca-py requires)."""
    client: aioredis.Redis | None = None

    def get_client() -> aioredis.Redis:
        nonlocal client
        if client is None:  # created inside the stream's event loop
            client = aioredis.Redis.from_url(redis_url)
        return client

    if mode == "naive":

        async def naive(q: Any) -> None:
            Counters.quotes += 1
            r = get_client()
            data = quote_json(q)
            await r.setex(f"price:{q.symbol}", TTL_S, data)
            await r.publish(f"price.updated.{q.symbol}", data)
            Counters.published += 1

        return naive

    if mode == "pipeline":

        async def pipelined(q: Any) -> None:
            Counters.quotes += 1
            data = quote_json(q)
            async with get_client().pipeline(transaction=False) as pipe:
                pipe.setex(f"price:{q.symbol}", TTL_S, data)
                pipe.publish(f"price.updated.{q.symbol}", data)
                await pipe.execute()
            Counters.published += 1

        return pipelined

    queue: list[tuple[str, str]] = []
    wakeup: asyncio.Event | None = None
    drainer: asyncio.Task[None] | None = None

    async def drain() -> None:
        assert wakeup is not None
        r = get_client()
        while True:
            await wakeup.wait()
            wakeup.clear()
            while queue:
                items = queue[:]
                queue.clear()
                async with r.pipeline(transaction=False) as pipe:
                    for symbol, data in items:
                        pipe.setex(f"price:{symbol}", TTL_S, data)
                        pipe.publish(f"price.updated.{symbol}", data)
                    await pipe.execute()
                Counters.published += len(items)

    async def batched(q: Any) -> None:
        nonlocal wakeup, drainer
        Counters.quotes += 1
        if drainer is None:
            wakeup = asyncio.Event()
            drainer = asyncio.get_running_loop().create_task(drain())
        queue.append((q.symbol, quote_json(q)))
        assert wakeup is not None
        wakeup.set()

    return batched


def _report(signum: int, frame: FrameType | None) -> None:
    sys.stdout.write(
        json.dumps({"quotes": Counters.quotes, "published": Counters.published}) + "\n"
    )
    sys.stdout.flush()


def _report_and_exit(signum: int, frame: FrameType | None) -> None:
    _report(signum, frame)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.bench.baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="the stream, ws://127.0.0.1:PORT/v2/iex")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--symbols", type=int, default=100, help="S0000, S0001, ...")
    parser.add_argument("--mode", choices=MODES, default="batched")
    args = parser.parse_args(argv)
    if args.redis_port == 6379:
        parser.error("port 6379 is the machine's shared Redis: the benchmark never uses it")
    signal.signal(signal.SIGTERM, _report_and_exit)
    signal.signal(signal.SIGINT, _report_and_exit)
    signal.signal(signal.SIGUSR1, _report)
    stream = StockDataStream("bench-key", "bench-secret", url_override=args.url)
    symbols = [f"S{i:04d}" for i in range(args.symbols)]
    stream.subscribe_quotes(
        make_handler(args.mode, f"redis://127.0.0.1:{args.redis_port}/0"), *symbols
    )
    stream.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
