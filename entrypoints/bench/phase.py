"""One measured phase: start the processes, warm up, measure a window, drain, tally."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from entrypoints.bench.model import (
    MDS,
    START_TIMEOUT_S,
    SUSTAINED_SHARE,
    BenchError,
    Options,
    PhaseResult,
    Target,
)
from entrypoints.bench.processes import (
    Children,
    LineReader,
    RedisProcess,
    Subscriber,
    UnderTest,
    start_stream_server,
    symbol_names,
    wait_until,
)
from entrypoints.bench.profiling import start_profiler
from entrypoints.bench.sampling import (
    RssSampler,
    cpu_seconds,
    machine_busy_seconds,
    process_sys_seconds,
)


def run_phase(opts: Options, children: Children, redis: RedisProcess, target: Target,
              rate: int, run: int, profile: Path | None = None,
              flood: int = 0) -> PhaseResult:  # fmt: skip
    """Measure one phase; every process it starts is stopped before it returns. With
    ``flood`` connections, an HTTP flood hammers ``/prices/<first symbol>`` from before the
    warm-up to past the window (the service only)."""
    phase = "max" if rate == 0 else f"{rate:,}/s"
    if flood:
        phase += f" + HTTP flood {flood}"
    result = PhaseResult(target.impl, target.fmt, target.batch, target.symbols, phase, rate, run)
    result.http_flood = flood
    flooding: subprocess.Popen[bytes] | None = None
    redis.flushall()
    started: list[subprocess.Popen[Any]] = []
    sampler: RssSampler | None = None
    try:
        url, server = start_stream_server(children, rate, target.batch)
        started.append(server)
        sub = Subscriber(children, redis.port)
        started.append(sub.proc)
        under = UnderTest(children, target, url, redis.port)
        started.append(under.proc)
        sampler = RssSampler(under.pid)
        under.wait_ready()
        wait_until("the first price at the subscriber", lambda: sub.received() > 0,
                   START_TIMEOUT_S, under.proc)  # fmt: skip
        if flood and under.http_port:
            flooding = children.spawn(
                "http-flood",
                [sys.executable, "-m", "entrypoints.bench.flood", "--port", str(under.http_port),
                 "--path", f"/prices/{symbol_names(target.symbols)[0]}",
                 "--connections", str(flood),
                 "--duration", str(opts.warmup_s + opts.duration_s + 1.0)],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            started.append(flooding)
        time.sleep(opts.warmup_s)  # warm-up: not measured

        pids = {"process": under.pid, "server": server.pid, "redis": redis.proc.pid,
                "subscriber": sub.proc.pid}  # fmt: skip
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu0["machine"] = machine_busy_seconds()
        cpu0["process-sys"] = process_sys_seconds(under.pid)
        sub.command("mark")
        c0 = under.counters()
        t0 = time.monotonic()
        spy = start_profiler(children, under.pid, opts.duration_s, profile) if profile else None
        time.sleep(opts.duration_s)  # the measurement window
        c1 = under.counters()
        sub.command("mark")
        t1 = time.monotonic()
        elapsed = t1 - t0
        growth = sampler.growth(t0, t1)
        if growth is not None:
            result.rss_window_mb = (round(growth[0], 1), round(growth[1], 1))
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu1["machine"] = machine_busy_seconds()
        cpu1["process-sys"] = process_sys_seconds(under.pid)
        if spy is not None:
            spy.wait(timeout=opts.duration_s + 30)

        if flooding is not None:
            line = LineReader(flooding.stdout).read_line(30.0, "the HTTP flood's summary")
            summary = json.loads(line)
            answered = int(summary["answered"])
            result.http_rps = float(summary["rps"])
            busy = int(summary["by_status"].get("503", 0))
            result.http_503_share = busy / answered if answered else None

        # Stop the source, let the pipeline drain, then take the totals.
        Children.stop(server)
        final = _drain(under, sub)
        report = sub.command("report", timeout_s=60.0)

        result.window_s = float(report.get("window_s", elapsed))
        result.throughput = float(report.get("throughput", 0.0))
        latency = report.get("latency_ms") or {}
        result.p50_ms, result.p99_ms = latency.get("p50"), latency.get("p99")
        result.p999_ms, result.max_ms = latency.get("p99.9"), latency.get("max")
        quotes = c1["quotes"] - c0["quotes"]
        result.quotes_in = quotes / elapsed
        cpu = {name: (cpu1[name] - cpu0[name]) / elapsed for name in cpu0}
        cpu["others"] = cpu["machine"] - sum(cpu[name] for name in pids)
        result.cpu_share = {k: round(v, 3) for k, v in cpu.items()}
        if quotes > 0:
            result.cpu_us_per_quote = (cpu1["process"] - cpu0["process"]) / quotes * 1e6
        result.conflated = int(final.get("conflated", 0))
        result.dropped = int(final.get("dropped", 0))
        result.refused_older = int(final.get("refused_older", 0))
        result.published = int(final["published"])
        result.received = int(report["received"])
        # A counter read can race the publish it counts by one: never report a negative.
        result.missing = max(0, result.published - result.received)
        result.exact_violations = int(report["exact_violations"])
        result.order_violations = int(report["order_violations"])
        result.bad_messages = int(report["bad_messages"])
        result.examples = list(report.get("examples", []))
        if rate:
            result.sustained = result.throughput >= SUSTAINED_SHARE * rate
    except (BenchError, OSError, ValueError, KeyError) as e:  # OSError: URLError, sockets
        result.error = f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)
        process = "service" if target.impl == MDS else f"baseline-{target.impl.partition('/')[2]}"
        names = (process, "stream-server", "subscriber")
        tails = "\n".join(
            f"--- {name}.log\n{tail}" for name in names if (tail := children.log_tail(name, 8))
        )
        opts.log(f"  ERROR {target.label} {phase}: {e}\n{tails}")
    finally:
        if sampler is not None:
            sampler.close()
            result.peak_rss_mb = round(sampler.peak / 2**20, 1)
        for proc in reversed(started):
            Children.stop(proc)
    return result


def _drain(under: UnderTest, sub: Subscriber, timeout_s: float = 10.0) -> dict[str, float]:
    """After the source stopped: wait until everything handled was published and received."""
    final: dict[str, float] = {}

    def settled() -> bool:
        nonlocal final
        final = under.counters()
        return final["pending"] == 0 and sub.received() >= final["published"]

    with contextlib.suppress(BenchError):
        wait_until("the pipeline to drain", settled, timeout_s, under.proc)
    if not final:
        final = under.counters()
    return final
