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
from collections.abc import Mapping, Sequence
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


#: The tape (``z``) of well-known symbols by listing: A NYSE, B NYSE Arca and regional
#: exchanges (ETFs such as SPY), C Nasdaq. FAKEPACA is on tape A as in the docs' test stream.
KNOWN_TAPES: Final = {
    "AAPL": "C", "AMD": "C", "AMZN": "C", "GOOGL": "C", "META": "C", "MSFT": "C", "NVDA": "C",
    "TSLA": "C", "QQQ": "C", "INTC": "C", "NFLX": "C", "SPY": "B", "IWM": "B", "GLD": "B",
    "VOO": "B", "BRK.B": "A", "BRK.A": "A", "JPM": "A", "IBM": "A", "KO": "A", "XOM": "A",
    "FAKEPACA": "A",
}  # fmt: skip


def tape_for(symbol: str) -> str:
    """The symbol's tape: its listing's (A, B or C); unknown symbols get a stable one."""
    return KNOWN_TAPES.get(symbol) or "ABC"[zlib.crc32(symbol.encode()) % 3]


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
        self._trades: dict[str, list[tuple[int, float, int, str]]] = {}
        """The pool's trades per symbol (id, price, size, exchange): bars are made of them,
        corrections and cancels refer to them."""
        self._halted: set[str] = set()
        self._ticks = 0

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
        trades: dict[str, list[tuple[int, float, int, str]]] = {}
        for m in messages:
            if m["T"] == "t":
                trade = (m["i"], m["p"], m["s"], m["x"])
                trades.setdefault(str(m["S"]), []).append(trade)  # type: ignore[arg-type]
        self._trades = trades
        return [messages[f * p.batch : (f + 1) * p.batch] for f in range(frames)]

    def bars(self, symbols: Sequence[str], start_ns: int, kind: str = "b") -> list[Message]:
        """One bar per symbol starting at ``start_ns`` (``b`` minute, ``u`` updated minute,
        ``d`` daily). A symbol whose trades are streamed gets the bar OF THOSE TRADES (open,
        high, low, close, volume, count and VWAP of the trades in the pool, the ones the client
        saw); others a bar around the symbol's price."""
        rng = self._rng
        bars: list[Message] = []
        for symbol in symbols:
            trades = self._trades.get(symbol)
            if trades:
                prices = [t[1] for t in trades]
                volume = sum(t[2] for t in trades)
                o, h, low, c = prices[0], max(prices), min(prices), prices[-1]
                vw = round(sum(t[1] * t[2] for t in trades) / volume, 4)
                n = len(trades)
                if kind == "u":  # a late trade at the close: one more, same price
                    volume += 100
                    n += 1
            else:
                base = base_price_cents(symbol)
                oc = base + rng.randint(-20, 20)
                cc = oc + rng.randint(-20, 20)
                hc, lc = max(oc, cc) + rng.randint(0, 10), min(oc, cc) - rng.randint(0, 10)
                o, h, low, c = oc / 100, hc / 100, lc / 100, cc / 100
                volume, n = rng.randint(100, 50_000), rng.randint(1, 500)
                vw = round((oc + hc + lc + cc) / 400, 4)
            if kind == "d":
                volume *= 390  # a day's worth of minutes
                n *= 390
            bars.append(
                {
                    "T": kind,
                    "S": symbol,
                    "o": o,
                    "h": h,
                    "l": low,
                    "c": c,
                    "v": volume,
                    "t": WireTime(start_ns, whole_seconds=True),
                    "n": n,
                    "vw": vw,
                }
            )
        return bars

    def events(self, channels: Mapping[str, Sequence[str]], ts_ns: int) -> list[Message]:
        """One message per subscribed symbol of each event channel, at ``ts_ns``: trading
        statuses (halts and resumptions taking turns), LULD bands, imbalances, and for trades
        symbols a correction and a cancel of one of their streamed trades. Codes per tape
        (CTA tapes A/B: ``2`` halt, ``3`` resume; UTP tape C: ``H`` halt, ``T`` resume)."""
        rng = self._rng
        t = WireTime(ts_ns)
        out: list[Message] = []
        self._ticks += 1
        for symbol in channels.get("statuses", ()):
            z = tape_for(symbol)
            halt = symbol not in self._halted
            (self._halted.add if halt else self._halted.discard)(symbol)
            code = ("2" if z in "AB" else "H") if halt else ("3" if z in "AB" else "T")
            out.append(
                {
                    "T": "s",
                    "S": symbol,
                    "sc": code,
                    "sm": "Trading Halt" if halt else "Trading Resumption",
                    "rc": "LUDP" if halt else "",
                    "rm": "Volatility Trading Pause" if halt else "",
                    "t": t,
                    "z": z,
                }
            )
        for symbol in channels.get("lulds", ()):
            ref = base_price_cents(symbol)
            out.append(
                {
                    "T": "l",
                    "S": symbol,
                    "u": round(ref * 1.05) / 100,
                    "d": round(ref * 0.95) / 100,
                    "i": "B",
                    "t": t,
                    "z": tape_for(symbol),
                }
            )
        for symbol in channels.get("imbalances", ()):
            price = (base_price_cents(symbol) + rng.randint(-10, 10)) / 100
            out.append({"T": "i", "S": symbol, "p": price, "z": tape_for(symbol), "t": t})
        for symbol in channels.get("trades", ()):
            trades = self._trades.get(symbol)
            if not trades:
                continue
            i, p, size, x = trades[self._ticks % len(trades)]
            self._trade_id += 1
            z = tape_for(symbol)
            out.append(
                {
                    "T": "c",
                    "S": symbol,
                    "x": x,
                    "oi": i,
                    "op": p,
                    "os": size,
                    "oc": ["@"],
                    "ci": self._trade_id,
                    "cp": round(p + 0.01, 2),
                    "cs": size,
                    "cc": ["@"],
                    "z": z,
                    "t": t,
                }
            )
            j, q, qsize, qx = trades[(self._ticks + 1) % len(trades)]
            out.append(
                {"T": "x", "S": symbol, "i": j, "x": qx, "p": q, "s": qsize, "a": "C", "z": z,
                 "t": t}
            )  # fmt: skip
        return out

    def latest_quote(self, symbol: str) -> Message:
        """One quote of ``symbol`` at its base price (the REST latest quote)."""
        return self._message(("q", symbol), 0)

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
                "z": tape_for(symbol),
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
            "z": tape_for(symbol),
        }


def crypto_decimals(symbol: str) -> int:
    """Price decimals of a pair, stable per symbol: 2 to 10 (``SHIB/USD``-like prices have
    many), so clients see prices that need exact decimal arithmetic."""
    return 2 + zlib.crc32(symbol.encode()) % 9


class CryptoMarketData(MarketData):
    """Crypto messages as Alpaca's crypto stream sends them: no venue or tape fields, fractional
    sizes, prices with up to 10 decimals (a random walk in units of the last decimal)."""

    def _message(self, item: Item, offset: int) -> Message:
        kind, symbol = item
        rng = self._rng
        decimals = crypto_decimals(symbol)
        scale = 10**decimals
        # $20 to $500 with up to 6 decimals; below a cent with more (SHIB/USD-like).
        cents = base_price_cents(symbol)
        base = cents * 10 ** (decimals - 2) if decimals <= 6 else cents
        bid = max(1, base + offset)
        ask = bid + rng.randint(1, 5)
        if kind == "t":
            self._trade_id += 1
            return {
                "T": "t",
                "S": symbol,
                "i": self._trade_id,
                "p": (bid + rng.randint(0, ask - bid)) / scale,
                "s": rng.randint(1, 10_000_000) / 10_000,
                "tks": rng.choice(("B", "S")),
            }
        return {
            "T": "q",
            "S": symbol,
            "bp": bid / scale,
            "bs": rng.randint(1, 10_000_000) / 10_000,
            "ap": ask / scale,
            "as": rng.randint(1, 10_000_000) / 10_000,
        }


class OptionMarketData(MarketData):
    """Option messages as Alpaca's option stream sends them: OPRA venue codes, one condition as
    a string, no tape; prices in cents from $0.05."""

    def _message(self, item: Item, offset: int) -> Message:
        kind, symbol = item
        rng = self._rng
        p = self._params
        bid = max(5, 5 + zlib.crc32(symbol.encode()) % 2_000 + offset)
        ask = bid + rng.randint(1, 10)
        if kind == "t":
            return {
                "T": "t",
                "S": symbol,
                "x": rng.choice(p.exchanges),
                "p": (bid + rng.randint(0, ask - bid)) / 100,
                "s": rng.randint(1, 50),
                "c": "I",
            }
        return {
            "T": "q",
            "S": symbol,
            "bx": rng.choice(p.exchanges),
            "bp": bid / 100,
            "bs": rng.randint(1, 500),
            "ax": rng.choice(p.exchanges),
            "ap": ask / 100,
            "as": rng.randint(1, 500),
            "c": "A",
        }
