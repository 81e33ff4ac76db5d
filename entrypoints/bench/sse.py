"""What live-stream clients cost the service: ``python -m entrypoints.bench.sse``.

One service (the local stream server at a fixed quote rate, its own redis-server, the service
with Redis), measured in three windows:

1. no ``/prices/stream`` client: price age at a Redis subscriber (p50/p99/p99.9, as ``mds
   bench`` measures it: receive time minus the quote's send time) and the service's CPU;
2. ``--readers`` clients (every symbol, all reading, in a separate process): the same figures,
   plus the events those clients received per second;
3. ``--idle`` clients each asking for a symbol nobody quotes: the service's RSS before and after
   they connected, so the memory one idle client costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entrypoints.bench.model import Target
from entrypoints.bench.processes import (
    Children,
    LineReader,
    RedisProcess,
    Subscriber,
    UnderTest,
    start_stream_server,
)
from entrypoints.bench.sampling import RssSampler, cpu_seconds


class Clients:
    """A :mod:`entrypoints.bench.sse_clients` process."""

    def __init__(self, children: Children, port: int, count: int, *, idle: bool) -> None:
        argv = [sys.executable, "-m", "entrypoints.bench.sse_clients", "--port", str(port),
                "--clients", str(count)] + (["--distinct"] if idle else [])  # fmt: skip
        self.proc = children.spawn(
            "sse-clients", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._lines = LineReader(self.proc.stdout)
        answer = json.loads(self._lines.read_line(120.0, "the SSE clients to connect"))
        if answer.get("connected") != count:
            raise RuntimeError(f"sse clients: {answer}")

    def count(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"count\n")
        self.proc.stdin.flush()
        result: dict[str, int] = json.loads(self._lines.read_line(10.0, "the clients' count"))
        return result


def _window(
    under: UnderTest, redis: RedisProcess, children: Children, seconds: float
) -> dict[str, Any]:
    sub = Subscriber(children, redis.port, name="subscriber")
    try:
        time.sleep(1.0)  # the subscriber sees a steady stream before the window opens
        sub.command("mark")
        cpu0, t0 = cpu_seconds(under.pid), time.monotonic()
        time.sleep(seconds)
        sub.command("mark")
        cpu1, t1 = cpu_seconds(under.pid), time.monotonic()
        report = sub.command("report", timeout_s=60.0)
    finally:
        Children.stop(sub.proc)
    latency = report.get("latency_ms") or {}
    return {
        "prices_per_s": round(float(report.get("throughput", 0.0))),
        "age_p50_ms": latency.get("p50"),
        "age_p99_ms": latency.get("p99"),
        "age_p999_ms": latency.get("p99.9"),
        "service_cpu": round((cpu1 - cpu0) / (t1 - t0), 3),
        "order_violations": report.get("order_violations"),
    }


def _rss_mb(sampler: RssSampler, since: float) -> float:
    recent = [rss for t, rss in sampler.samples if t >= since]
    return round(statistics.median(recent) / 2**20, 1) if recent else float("nan")


def run(rate: int, symbols: int, readers: int, idle: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mds-bench-sse-") as logs:
        children = Children(Path(logs))
        try:
            redis = RedisProcess(children)
            url, _server = start_stream_server(children, rate, 10)
            under = UnderTest(children, Target("mds", "json", 10, symbols), url, redis.port)
            sampler = RssSampler(under.pid)
            under.wait_ready()
            result: dict[str, Any] = {"rate": rate, "symbols": symbols}
            result["no_clients"] = _window(under, redis, children, seconds)

            readers_proc = Clients(children, under.http_port, readers, idle=False)
            before = readers_proc.count()
            t0 = time.monotonic()
            result[f"{readers}_readers"] = _window(under, redis, children, seconds)
            after = readers_proc.count()
            result[f"{readers}_readers"]["client_events_per_s"] = round(
                (after["events"] - before["events"]) / (time.monotonic() - t0)
            )
            result[f"{readers}_readers"]["clients_open"] = after["open"]
            Children.stop(readers_proc.proc)

            time.sleep(2.0)
            mark = time.monotonic()
            time.sleep(2.0)
            rss_before = _rss_mb(sampler, mark)
            idle_proc = Clients(children, under.http_port, idle, idle=True)
            time.sleep(1.0)
            mark = time.monotonic()
            time.sleep(2.0)
            rss_after = _rss_mb(sampler, mark)
            result[f"{idle}_idle"] = {
                "rss_before_mb": rss_before,
                "rss_after_mb": rss_after,
                "kb_per_client": round((rss_after - rss_before) * 1024 / idle, 1),
                "clients_open": idle_proc.count()["open"],
            }
            result["peak_rss_mb"] = round(sampler.peak / 2**20, 1)
            sampler.close()
            return result
        finally:
            children.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.bench.sse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=int, default=10_000, help="quotes/s (10000)")
    parser.add_argument("--symbols", type=int, default=100, help="symbols (100)")
    parser.add_argument("--readers", type=int, default=200, help="reading clients (200)")
    parser.add_argument("--idle", type=int, default=1000, help="idle clients (1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window (10)")
    args = parser.parse_args(argv)
    result = run(args.rate, args.symbols, args.readers, args.idle, args.duration)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
