"""Record a live session with AlpacaQuoteFeed, replay it with ReplayQuoteFeed: the same prices
come out (real sockets on loopback, real clock)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from adapters.alpaca import AlpacaFeedConfig, AlpacaQuoteFeed, Secret, read_recording
from adapters.alpaca_compatible_server import AlpacaCompatibleServer, ServerConfig
from adapters.replay import ReplayQuoteFeed
from domain.errors import FeedDisconnected
from domain.market import MarketEvent, Quote, Subscriptions
from domain.price import NoMid, Price, price_from_quote
from tests.adapters.alpaca.fake_server import fake_alpaca

GUARD_S = 10.0
SYMBOLS = ("AAPL", "MSFT", "SPY", "BRK.B")


def random_walk_frames(fmt: str, frames: int, seed: int = 7) -> list[list[dict[str, Any]]]:
    r = random.Random(seed)
    mids = {s: r.randint(5_000, 50_000) for s in SYMBOLS}
    second = 1_721_807_813
    out = []
    for i in range(frames):
        frame = []
        for symbol in r.sample(SYMBOLS, r.randint(1, 4)):
            mids[symbol] += r.randint(-3, 3)
            half = r.randint(0, 4)
            bid, ask = (mids[symbol] - half) / 100, (mids[symbol] + half) / 100
            if r.random() < 0.05:
                bid = 0  # an empty side now and then
            nanos = i * 1_000_000 + r.randint(0, 999_999)
            t: Any = (
                msgpack.Timestamp(second, nanos)
                if fmt == "msgpack"
                else f"2024-07-24T07:56:53.{nanos:09d}".rstrip("0") + "Z"
            )
            frame.append({"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": r.randint(1, 9),
                          "ax": "V", "ap": ask, "as": r.randint(1, 9), "c": ["R"], "z": "C",
                          "t": t})  # fmt: skip
        out.append(frame)
    return out


def prices(events: list[MarketEvent]) -> list[Price | NoMid]:
    return [price_from_quote(e, "REPLAY") for e in events if isinstance(e, Quote)]


async def replay_all(path: Path) -> list[MarketEvent]:
    out: list[MarketEvent] = []
    async with ReplayQuoteFeed(path, speed=0).connect() as session:
        await session.subscribe(Subscriptions.quotes(set(SYMBOLS)))
        with pytest.raises(FeedDisconnected, match="end of recording"):
            async for batch in session.events():
                out.extend(batch)
    return out


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_scripted_session_recorded_and_replayed(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"session-{fmt}.jsonl.gz"
    frames = random_walk_frames(fmt, 120)
    expected = sum(len(f) for f in frames)
    live: list[MarketEvent] = []
    with trio.fail_after(GUARD_S):
        async with fake_alpaca() as server:
            config = AlpacaFeedConfig(
                Secret("k"), Secret("s"), url=server.url, fmt=fmt,  # type: ignore[arg-type]
                record_path=path,
            )  # fmt: skip
            async with AlpacaQuoteFeed(config).connect() as session:
                await session.subscribe(Subscriptions.quotes(set(SYMBOLS)))
                for frame in frames:
                    await server.last.send(frame)
                async for batch in session.events():
                    live.extend(batch)
                    if len(live) == expected:
                        break
        replayed = await replay_all(path)
    assert len(live) == expected
    assert prices(replayed) == prices(live)
    assert any(isinstance(p, NoMid) for p in prices(live))
    recorded = list(read_recording(path))
    assert len(recorded) == 3 + len(frames)  # connected, authenticated, the ack, the data
    assert all(isinstance(f.data, bytes if fmt == "msgpack" else str) for f in recorded)


async def test_local_server_session_recorded_and_replayed(tmp_path: Path) -> None:
    path = tmp_path / "local.jsonl"
    server = AlpacaCompatibleServer(ServerConfig(rate=2000.0, batch=5, seed=3, bar_interval_s=None))
    live: list[MarketEvent] = []
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            config = AlpacaFeedConfig(
                Secret("k"), Secret("s"), url=f"{server.url}/v2/iex", record_path=path
            )
            async with AlpacaQuoteFeed(config).connect() as session:
                await session.subscribe(Subscriptions.quotes(set(SYMBOLS)))
                async for batch in session.events():
                    live.extend(batch)
                    if len(live) >= 500:
                        break
            nursery.cancel_scope.cancel()
        replayed = await replay_all(path)
    # Frames received after the last one we read are recorded too: the replay is a superset.
    assert prices(replayed)[: len(live)] == prices(live)
    assert {e.symbol for e in live} == set(SYMBOLS)
