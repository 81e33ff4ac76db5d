"""A floor of ``mds bench``: what one worker-thread round trip costs at a given frame rate.

The service's writer hands every batch to redis-py in a worker thread
(``anyio.to_thread.run_sync`` under trio, one hop per batch); at a fixed quote rate it does so
once per frame. ``python -m entrypoints.bench.hop --rate 100 --seconds 5`` times that round trip
with nothing else in it (the thread runs ``time.perf_counter_ns``), paced at ``--rate`` hops/s
like the frames, and prints one JSON line: ``{"rate": r, "n": n, "p50_us": ..., "p99_us": ...,
"p99_9_us": ..., "hot_p50_us": ...}`` (``hot``: back to back, no pause). Between frames the
machine idles, so a paced hop pays for cold caches and woken CPUs: on a small VM it costs several
times the hot figure, and that cost sits on every frame's path to Redis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread


def _quantile(sorted_ns: Sequence[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1_000


async def measure(rate: float, seconds: float, hot_samples: int = 500) -> dict[str, float]:
    clock = time.perf_counter_ns
    hot: list[int] = []
    for _ in range(hot_samples):
        t0 = clock()
        await anyio.to_thread.run_sync(clock)
        hot.append(clock() - t0)
    paced: list[int] = []
    interval = 1.0 / rate
    deadline = anyio.current_time() + seconds
    next_at = anyio.current_time()
    while next_at < deadline:
        next_at += interval
        await anyio.sleep(max(0.0, next_at - anyio.current_time()))
        t0 = clock()
        await anyio.to_thread.run_sync(clock)
        paced.append(clock() - t0)
    hot.sort()
    paced.sort()
    return {
        "rate": rate,
        "n": len(paced),
        "p50_us": _quantile(paced, 0.5),
        "p99_us": _quantile(paced, 0.99),
        "p99_9_us": _quantile(paced, 0.999),
        "hot_p50_us": _quantile(hot, 0.5),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.bench.hop", description=__doc__)
    parser.add_argument("--rate", type=float, required=True, help="hops per second (> 0)")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced window")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be > 0")
    result = anyio.run(measure, args.rate, args.seconds, backend="trio")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
