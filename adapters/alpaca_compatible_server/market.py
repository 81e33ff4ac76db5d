"""Synthetic market data: closed random walks in whole cents, laid out round-robin into a pool
of pre-encoded frames.

Each (kind, symbol) item gets every N-th message of the pool, N being the number of items, so
every symbol is updated at ``rate / N`` per second. Whenever it fits in
:data:`MAX_POOL_MESSAGES`, the pool spans whole round-robin cycles, so cycling through it keeps
the shares exactly equal; each item's walk returns to its start at the end of the pool, so
prices never jump when the pool wraps. Prices are whole cents (exact two-decimal values).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from adapters.alpaca_compatible_server.frames import Message, WireTime

MAX_POOL_MESSAGES: Final = 20_000
"""Above this the pool no longer spans whole cycles (building one takes ~4 ms per 1000
messages, on the event loop): shares may then differ by one message per pass through the pool."""

Kind = Literal["q", "t"]
Item = tuple[Kind, str]


@dataclass(frozen=True, slots=True)
class DataParams:
    batch: int
    pool_frames: int
    one_sided_probability: float
    crossed_probability: float
    exchanges: tuple[str, ...]


def base_price_cents(symbol: str) -> int:
    """A stable starting price per symbol, $20 to $500, the same in every session."""
    return 2_000 + zlib.crc32(symbol.encode()) % 48_000


def pool_frame_count(items: int, batch: int, pool_frames: int) -> int:
    """How many frames the pool for ``items`` round-robin items holds (see the module doc)."""
    cycle = items // math.gcd(items, batch)
    if cycle * batch <= MAX_POOL_MESSAGES:
        return cycle * math.ceil(pool_frames / cycle)
    return max(pool_frames, math.ceil(items / batch))


def closed_walk(rng: random.Random, length: int, max_step: int = 2) -> list[int]:
    """Offsets of a random walk of ``length`` points starting at 0 whose next step would
    return to 0 (the steps sum to zero), so cycling through it is seamless."""
    half = [rng.randint(-max_step, max_step) for _ in range(length // 2)]
    steps = half + [-s for s in half] + [0] * (length % 2)
    rng.shuffle(steps)
    offsets = [0] * length
    for i in range(1, length):
        offsets[i] = offsets[i - 1] + steps[i - 1]
    return offsets


class MarketData:
    """One session's data source: builds frame pools and bars. Not thread-safe."""

    def __init__(self, params: DataParams, rng: random.Random) -> None:
        self._params = params
        self._rng = rng
        self._trade_id = 0

    def pool_frames(self, items: Sequence[Item]) -> list[list[Message]]:
        """The frames of a pool cycling round-robin over ``items`` (non-empty); pre-encode
        them with ``Codec.pool``."""
        if not items:
            raise ValueError("no items to stream")
        p = self._params
        n = len(items)
        frames = pool_frame_count(n, p.batch, p.pool_frames)
        total = frames * p.batch
        walks = [closed_walk(self._rng, (total - j + n - 1) // n) for j in range(n)]
        messages = [self._message(items[m % n], walks[m % n][m // n]) for m in range(total)]
        return [messages[f * p.batch : (f + 1) * p.batch] for f in range(frames)]

    def bars(self, symbols: Sequence[str], start_ns: int) -> list[Message]:
        """One minute bar per symbol for the minute starting at ``start_ns``."""
        rng = self._rng
        bars: list[Message] = []
        for symbol in symbols:
            base = base_price_cents(symbol)
            o = base + rng.randint(-20, 20)
            c = o + rng.randint(-20, 20)
            h = max(o, c) + rng.randint(0, 10)
            low = min(o, c) - rng.randint(0, 10)
            bars.append(
                {
                    "T": "b",
                    "S": symbol,
                    "o": o / 100,
                    "h": h / 100,
                    "l": low / 100,
                    "c": c / 100,
                    "v": rng.randint(100, 50_000),
                    "t": WireTime(start_ns, whole_seconds=True),
                    "n": rng.randint(1, 500),
                    "vw": round((o + h + low + c) / 400, 4),
                }
            )
        return bars

    def _message(self, item: Item, offset: int) -> Message:
        kind, symbol = item
        rng = self._rng
        p = self._params
        bid = max(1, base_price_cents(symbol) + offset)
        spread = rng.randint(1, 5)
        ask = bid + spread
        if kind == "t":
            self._trade_id += 1
            return {
                "T": "t",
                "S": symbol,
                "i": self._trade_id,
                "x": rng.choice(p.exchanges),
                "p": (bid + rng.randint(0, spread)) / 100,
                "s": rng.randint(1, 500),
                "c": ["@"],
                "z": "C",
            }
        bp: float | int = bid / 100
        ap: float | int = ask / 100
        bs = rng.randint(1, 500)
        as_ = rng.randint(1, 500)
        if p.one_sided_probability and rng.random() < p.one_sided_probability:
            if rng.random() < 0.5:
                bp, bs = 0, 0
            else:
                ap, as_ = 0, 0
        elif p.crossed_probability and rng.random() < p.crossed_probability:
            bp = (ask + rng.randint(1, 3)) / 100
        return {
            "T": "q",
            "S": symbol,
            "bx": rng.choice(p.exchanges),
            "bp": bp,
            "bs": bs,
            "ax": rng.choice(p.exchanges),
            "ap": ap,
            "as": as_,
            "c": ["R"],
            "z": "C",
        }
