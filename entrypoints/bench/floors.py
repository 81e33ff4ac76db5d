"""The harness's floors: what the subscriber, Redis pub/sub, a worker-thread hop and the
stream server carry without the service, so a result can be read against them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

from entrypoints.bench.model import REPO, Options
from entrypoints.bench.processes import Children, LineReader, RedisProcess, Subscriber, wait_until
from entrypoints.bench.sampling import cpu_seconds


def publish_floor(opts: Options, children: Children, redis: RedisProcess, rate: int = 0,
                  pipeline: int = 200) -> dict[str, Any]:  # fmt: skip
    """The subscriber under PUBLISH load with no service and no server: ``rate`` 0 gives its
    capacity (prices/s), a fixed rate the latency floor of Redis pub/sub plus the subscriber."""
    redis.flushall()
    sub = Subscriber(children, redis.port, "floor-subscriber")
    publisher = children.spawn(
        "floor-publisher",
        [sys.executable, "-m", "entrypoints.bench.subscriber", "--port", str(redis.port),
         "--publish", "--seconds", str(opts.warmup_s + opts.duration_s + 1.0),
         "--rate", str(rate), "--pipeline", str(pipeline)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until("the first published price", lambda: sub.received() > 0, 10.0, publisher)
        time.sleep(opts.warmup_s)
        pids = {"subscriber": sub.proc.pid, "redis": redis.proc.pid, "publisher": publisher.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        sub.command("mark")
        t0 = time.monotonic()
        time.sleep(opts.duration_s)
        sub.command("mark")
        elapsed = time.monotonic() - t0
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        line = LineReader(publisher.stdout).read_line(30.0, "the publisher's count")
        published = json.loads(line)
        wait_until("the subscriber to catch up",
                   lambda: sub.received() >= published["published"], 30.0)  # fmt: skip
        report = sub.command("report", timeout_s=60.0)
    finally:
        Children.stop(publisher)
        Children.stop(sub.proc)
    return {
        "rate": rate,
        "throughput": report["throughput"],
        "latency_ms": report.get("latency_ms"),
        "cpu_share": {k: round((cpu1[k] - cpu0[k]) / elapsed, 3) for k in pids},
        "exact_violations": report["exact_violations"],
    }


def feed_floor(fmt: str, batch: int, symbols: int, seconds: float) -> dict[str, float | None]:
    """quotes/s the stream server pushes to one receive-only client, from the server's own
    check (``adapters.alpaca_compatible_server.bench``): ``raw`` (a raw socket, the server's
    ceiling) and ``ws`` (trio-websocket's ``get_message``, what a trio reader can take)."""
    found: dict[str, float | None] = {"raw": None, "ws": None}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "adapters.alpaca_compatible_server.bench", "--format", fmt,
             "--batch", str(batch), "--symbols", str(symbols), "--seconds", str(seconds),
             "--client", "raw", "ws"],
            cwd=REPO, capture_output=True, text=True, timeout=4 * seconds + 60, check=True,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return found
    for line in done.stdout.splitlines():
        quotes = re.search(r"([\d,]+) quotes/s", line)
        if quotes:
            found["raw" if "raw" in line else "ws"] = float(quotes.group(1).replace(",", ""))
    return found


def thread_hop_floor(frame_rate: float, seconds: float) -> dict[str, float] | None:
    """One ``anyio.to_thread`` round trip under trio, paced at ``frame_rate``
    (:mod:`entrypoints.bench.hop`, a fresh process): the writer pays it once per frame."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "entrypoints.bench.hop", "--rate", f"{frame_rate:g}",
             "--seconds", f"{seconds:g}"],
            cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return result
