"""Decode throughput of :func:`adapters.alpaca.wire.decode_frame` (the hot path), with timeit.

    python -m adapters.alpaca.bench [--quotes-per-frame 100] [--frames 2000]

Prints quotes/s for one JSON frame and one msgpack frame of random quotes (9-digit timestamps,
cent prices), decode only (no socket): parse + validate + build ``Quote`` values + count.
"""

from __future__ import annotations

import argparse
import random
import timeit
from functools import partial

import msgpack
import orjson

from adapters.alpaca.wire import decode_frame
from domain.stats import FeedStats


def _frames(quotes: int, seed: int = 1) -> tuple[str, bytes]:
    r = random.Random(seed)
    base = 1_721_807_813
    json_quotes, msgpack_quotes = [], []
    for i in range(quotes):
        nanos = r.randint(0, 999_999_999)
        q = {"T": "q", "S": f"SYM{i % 50}", "bx": "V", "bp": round(100 + r.random(), 2),
             "bs": r.randint(1, 9) * 100, "ax": "V", "ap": round(101 + r.random(), 2),
             "as": r.randint(1, 9) * 100, "c": ["R"], "z": "C"}  # fmt: skip
        json_quotes.append({**q, "t": f"2024-07-24T07:56:53.{nanos:09d}Z"})
        msgpack_quotes.append({**q, "t": msgpack.Timestamp(base, nanos)})
    return orjson.dumps(json_quotes).decode(), msgpack.packb(msgpack_quotes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes-per-frame", type=int, default=100)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    text, binary = _frames(args.quotes_per_frame)
    for name, data in (("json", text), ("msgpack", binary)):
        stats = FeedStats()
        run = partial(decode_frame, data, 0, stats)
        best = min(timeit.repeat(run, number=args.frames, repeat=5))
        per_frame_us = best / args.frames * 1e6
        rate = args.quotes_per_frame * args.frames / best
        print(
            f"{name:8} {len(data):7} bytes/frame  {per_frame_us:8.1f} us/frame  "
            f"{rate:12,.0f} quotes/s"
        )
        assert stats.decode_errors_total == 0


if __name__ == "__main__":
    main()
