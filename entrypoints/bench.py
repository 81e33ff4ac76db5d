"""``mds bench``: end-to-end benchmark of the service against the hand-written alternative.

One run starts its own redis-server (free loopback port, never 6379), and for every measured
phase a fresh local Alpaca-compatible stream server, a fast Redis pattern subscriber
(:mod:`entrypoints.bench_subscriber`) and the system under test as a separate process:

- ``mds``: the service itself (``entrypoints/service.py``, MDS_FEED=alpaca, REDIS_URL set);
- ``alpaca-py/naive``, ``alpaca-py/batched`` (and optionally ``alpaca-py/pipeline``):
  alpaca-py's StockDataStream with a redis.asyncio handler (:mod:`entrypoints.bench_baseline`).

Per configuration (format x batch x symbols) it measures three phases: ``max`` (the server
unthrottled: sustained prices/s the subscriber receives over a steady window after a warm-up)
and fixed rates (default 1,000 and 10,000 quotes/s: latency p50/p99/p99.9 from the server's send
time to the subscriber's receipt). For each phase: the process's CPU seconds per quote
(psutil user+sys over the window), its peak RSS (sampled every 100 ms) and its RSS at the start
and at the end of the window (medians of the first and last second: ``--duration 60`` shows
whether memory stays flat under sustained load), the CPU share of the
server, Redis and the subscriber (on a small machine they all compete), conflated prices,
published-but-not-received prices, and the subscriber's checks: inexact mids and per-symbol
order violations (must be 0 for ``mds``). Numbers are medians over ``--runs``.

It also measures the harness's floors, so a result can be read against what the harness itself
can carry: the subscriber's capacity (pipelined PUBLISH load, no service), the latency of Redis
pub/sub plus the subscriber at the fixed rates, and the stream server's throughput to a
receive-only client. Every window also records the CPU used by everything else on the machine
("other load"): on a shared machine that is what disturbs the numbers.

``--profile DIR`` adds, per service configuration, an unmeasured unthrottled phase and one at the
highest fixed rate under ``py-spy record --gil`` (raw files in DIR) and prints the hot spots by
function and by component. ``--render FILE`` prints the tables of a saved result again.

Prints a table (rich), then a Markdown version (with the machine and the git commit) for the
README, and writes all raw and median results as JSON (``--out``). Ctrl-C or SIGTERM stops every
child process and still writes what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
SHARED_REDIS_PORT: Final = 6379
START_TIMEOUT_S: Final = 30.0
SAMPLE_EVERY_S: Final = 0.1
MDS: Final = "mds"
BASELINE_MODES: Final = ("naive", "pipeline", "batched")
SUSTAINED_SHARE: Final = 0.95
_ENV_PREFIXES: Final = ("MDS_", "ALPACA_", "APCA_", "REDIS_")


class BenchError(RuntimeError):
    """A benchmark process could not be started or misbehaved."""


# --- options and results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    formats: tuple[str, ...] = ("json", "msgpack")
    batches: tuple[int, ...] = (10, 100)
    symbols: tuple[int, ...] = (100, 1000)
    rates: tuple[int, ...] = (1_000, 10_000)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    runs: int = 3
    baseline_modes: tuple[str, ...] = ("naive", "batched")
    floors: bool = True
    profile_dir: Path | None = None
    keep_logs: bool = False
    log: Callable[[str], None] = field(default=lambda _msg: None, compare=False)


@dataclass(frozen=True, slots=True)
class Target:
    """A system under test in one configuration."""

    impl: str  # "mds" or "alpaca-py/<mode>"
    fmt: str
    batch: int
    symbols: int

    @property
    def label(self) -> str:
        return f"{self.impl} {self.fmt} batch {self.batch} symbols {self.symbols}"


@dataclass(slots=True)
class PhaseResult:
    """One measured phase of one run. Rates are per second; latencies in ms."""

    impl: str
    fmt: str
    batch: int
    symbols: int
    phase: str  # "max" or the fixed rate as text
    rate: int  # 0 = unthrottled
    run: int
    window_s: float = 0.0
    throughput: float = 0.0  # prices/s received by the subscriber
    quotes_in: float = 0.0  # quotes/s handled by the process under test
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    cpu_us_per_quote: float | None = None
    # Cores used over the window: process (under test; process-sys: its kernel part), server,
    # redis, subscriber, machine (everything), others (machine minus ours: outside load).
    cpu_share: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    # RSS at the start and at the end of the window (MB): flat memory shows as equal numbers.
    rss_window_mb: tuple[float, float] | None = None
    conflated: int = 0
    dropped: int = 0
    refused_older: int = 0
    published: int = 0
    received: int = 0
    missing: int = 0
    exact_violations: int = 0
    order_violations: int = 0
    bad_messages: int = 0
    examples: list[str] = field(default_factory=list)
    sustained: bool | None = None
    error: str | None = None


@dataclass(slots=True)
class Machine:
    nproc: int
    cpu_model: str
    python: str
    redis: str
    kernel: str
    load_before: tuple[float, float, float]

    def describe(self) -> str:
        load = ", ".join(f"{x:.2f}" for x in self.load_before)
        return (
            f"{self.nproc} vCPU {self.cpu_model}, Linux {self.kernel}, Python {self.python}, "
            f"Redis {self.redis} on loopback (load average before the run: {load})"
        )


# --- processes -----------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Best effort: the child gets SIGKILL if the benchmark dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A free loopback TCP port (never the shared Redis's 6379)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port
    raise BenchError("no free port")


def wait_until(what: str, check: Callable[[], bool], timeout_s: float,
               proc: subprocess.Popen[Any] | None = None) -> None:  # fmt: skip
    """Poll ``check`` until true; raise :class:`BenchError` at the deadline or if ``proc``
    exits first."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not check():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(delay)  # polling another process's state, bounded by the deadline
        delay = min(delay * 2, 0.05)


class LineReader:
    """Lines from a child's unbuffered pipe, each read under a deadline (no stdio buffering
    that ``select`` could not see)."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self._fd = pipe.fileno()
        self._buffer = b""

    def read_line(self, timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise BenchError(f"{what}: the process closed its output")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")


class Children:
    """Every process the benchmark starts; :meth:`stop_all` ends them (children first)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._procs: list[tuple[str, subprocess.Popen[Any]]] = []
        self._spawned = 0
        self._latest_log: dict[str, Path] = {}

    def spawn(self, name: str, argv: Sequence[str], *, stdin: int | None = subprocess.DEVNULL,
              stdout: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> subprocess.Popen[bytes]:  # fmt: skip
        self._spawned += 1  # one log file per process: a failure shows its own phase's log
        path = self.logs / f"{self._spawned:04d}-{name}.log"
        self._latest_log[name] = path
        log = path.open("w")
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=log,
                env=env,
                cwd=cwd,
                bufsize=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        self._procs.append((name, proc))
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused process would ignore SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stop_all(self) -> None:
        while self._procs:
            _name, proc = self._procs.pop()
            with contextlib.suppress(Exception):
                self.stop(proc)

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The end of the log of the latest process started under ``name``."""
        path = self._latest_log.get(name)
        try:
            text = "" if path is None else path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _redis_command(port: int, *parts: str) -> bytes:
    """Send one command, return the raw reply (enough for PING, FLUSHALL, INFO)."""
    payload = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p.encode()), p.encode()) for p in parts
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or (data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n")):
                return data
            if data.startswith(b"$"):
                header, _, body = data.partition(b"\r\n")
                if len(body) >= int(header[1:]) + 2:
                    return data


class RedisProcess:
    """The benchmark's own redis-server (no persistence; pub/sub buffers generous, so a
    momentarily slow subscriber is measured as latency, not disconnected)."""

    def __init__(self, children: Children) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server not found on PATH (apt-get install redis-server)")
        self.port = free_port()
        data_dir = children.logs / "redis"
        data_dir.mkdir(exist_ok=True)
        self.proc = children.spawn(
            "redis",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(data_dir),
             "--client-output-buffer-limit", "pubsub 1gb 0 0"],
        )  # fmt: skip
        wait_until(f"redis-server PING on {self.port}", self._pings, 10.0, self.proc)

    def _pings(self) -> bool:
        try:
            return _redis_command(self.port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        _redis_command(self.port, "FLUSHALL")

    def version(self) -> str:
        info = _redis_command(self.port, "INFO", "server").decode(errors="replace")
        found = re.search(r"redis_version:(\S+)", info)
        return found.group(1) if found else "?"


class Subscriber:
    """Drives :mod:`entrypoints.bench_subscriber` over its stdin/stdout."""

    def __init__(self, children: Children, redis_port: int, name: str = "subscriber") -> None:
        self.proc = children.spawn(
            name,
            [sys.executable, "-m", "entrypoints.bench_subscriber", "--port", str(redis_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lines = LineReader(self.proc.stdout)
        answer = self._read("the subscriber's PSUBSCRIBE")
        if not answer.get("subscribed"):
            raise BenchError(f"subscriber: {answer}")

    def _read(self, what: str, timeout_s: float = 10.0) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self._lines.read_line(timeout_s, what))
        if "error" in answer:
            raise BenchError(f"subscriber: {answer['error']}")
        return answer

    def command(self, command: str, timeout_s: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        return self._read(f"the subscriber's answer to {command!r}", timeout_s)

    def received(self) -> int:
        return int(self.command("count")["received"])


class RssSampler:
    """Samples a process's RSS every 100 ms on a thread; ``peak`` in bytes, ``samples`` as
    (monotonic time, bytes) for :meth:`growth`."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rss = int(self._proc.memory_info().rss)
            except Exception:  # the process is gone
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(SAMPLE_EVERY_S)

    def growth(self, start: float, end: float) -> tuple[float, float] | None:
        """RSS (MB) at the start and at the end of the window [start, end]: the median of the
        samples of its first and of its last second (one sample alone is noise)."""
        return rss_growth(self.samples, start, end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def rss_growth(
    samples: Sequence[tuple[float, int]], start: float, end: float, edge_s: float = 1.0
) -> tuple[float, float] | None:
    """Median RSS in MB over ``[start, start + edge_s]`` and over ``[end - edge_s, end]``, or
    None when either edge has no sample (a window shorter than the edges is one edge)."""
    first = [rss for t, rss in samples if start <= t <= start + edge_s]
    last = [rss for t, rss in samples if end - edge_s <= t <= end]
    if not first or not last:
        return None
    return statistics.median(first) / 2**20, statistics.median(last) / 2**20


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, since boot)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def process_sys_seconds(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).cpu_times().system)
    except Exception:
        return 0.0


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except Exception:
        return 0.0
    return float(t.user + t.system)


def scrape(port: int) -> dict[str, float]:
    """The service's /metrics as {name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1.0) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def start_stream_server(
    children: Children, rate: int, batch: int
) -> tuple[str, subprocess.Popen[bytes]]:
    proc = children.spawn(
        "stream-server",
        [sys.executable, "-m", "adapters.alpaca_compatible_server", "--port", "0",
         "--rate", str(rate), "--batch", str(batch), "--bar-interval", "0", "--seed", "1",
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    url = LineReader(proc.stdout).read_line(START_TIMEOUT_S, "the stream server's URL").strip()
    if not url.startswith("ws://"):
        raise BenchError(f"stream server printed {url!r} instead of its URL")
    return url, proc


def symbol_names(count: int) -> list[str]:
    return [f"S{i:04d}" for i in range(count)]


def service_env(url: str, target: Target, redis_port: int, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.update(
        ALPACA_STREAM_URL=f"{url}/v2/iex",
        ALPACA_API_KEY="bench-key",
        ALPACA_SECRET_KEY="bench-secret",
        ALPACA_STREAM_FORMAT=target.fmt,
        MDS_FEED="alpaca",
        MDS_SYMBOL_LIMIT="0",
        MDS_SYMBOLS=",".join(symbol_names(target.symbols)),
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        MDS_HTTP_PORT=str(http_port),
        MDS_LOG_LEVEL="WARNING",
        MDS_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


# --- one phase -----------------------------------------------------------------------------------


class UnderTest:
    """The process under test: start, readiness, counters at a mark, and the final tally."""

    def __init__(self, children: Children, target: Target, url: str, redis_port: int) -> None:
        self.target = target
        self.http_port = 0
        if target.impl == MDS:
            self.http_port = free_port()
            env = service_env(url, target, redis_port, self.http_port)
            # Its own working directory: no stray .env can change what is measured.
            self.proc = children.spawn(
                "service",
                [sys.executable, str(REPO / "entrypoints" / "service.py")],
                env=env,
                cwd=children.logs,
            )
        else:
            mode = target.impl.partition("/")[2]
            self.proc = children.spawn(
                f"baseline-{mode}",
                [sys.executable, "-W", "ignore::DeprecationWarning", "-m",
                 "entrypoints.bench_baseline", "--url", f"{url}/v2/iex",
                 "--redis-port", str(redis_port), "--symbols", str(target.symbols),
                 "--mode", mode],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            self._lines = LineReader(self.proc.stdout)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def wait_ready(self) -> None:
        if self.target.impl == MDS:
            wait_until("the service's /ready", lambda: _http_ok(self.http_port, "/ready"),
                       START_TIMEOUT_S, self.proc)  # fmt: skip

    def counters(self) -> dict[str, float]:
        """quotes handled, published, conflated... as the process reports them now."""
        if self.target.impl == MDS:
            m = scrape(self.http_port)
            return {
                "quotes": m.get('mds_messages_total{type="quote"}', 0.0),
                "published": m.get("mds_prices_published_total", 0.0),
                "conflated": m.get("mds_conflated_total", 0.0),
                "dropped": m.get("mds_dropped_total", 0.0),
                "refused_older": m.get("mds_refused_older_total", 0.0),
                "pending": m.get("mds_pending_writes", 0.0),
            }
        self.proc.send_signal(signal.SIGUSR1)
        answer = json.loads(self._lines.read_line(5.0, "the baseline's counters"))
        return {"quotes": float(answer["quotes"]), "published": float(answer["published"]),
                "pending": float(answer["quotes"] - answer["published"])}  # fmt: skip


def run_phase(opts: Options, children: Children, redis: RedisProcess, target: Target,
              rate: int, run: int, profile: Path | None = None) -> PhaseResult:  # fmt: skip
    """Measure one phase; every process it starts is stopped before it returns."""
    phase = "max" if rate == 0 else f"{rate:,}/s"
    result = PhaseResult(target.impl, target.fmt, target.batch, target.symbols, phase, rate, run)
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
        time.sleep(opts.warmup_s)  # warm-up: not measured

        pids = {"process": under.pid, "server": server.pid, "redis": redis.proc.pid,
                "subscriber": sub.proc.pid}  # fmt: skip
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu0["machine"] = machine_busy_seconds()
        cpu0["process-sys"] = process_sys_seconds(under.pid)
        sub.command("mark")
        c0 = under.counters()
        t0 = time.monotonic()
        spy = _start_profiler(children, under.pid, opts.duration_s, profile) if profile else None
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


# --- profiling -----------------------------------------------------------------------------------


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy is not installed (pip install py-spy)")
    return found


def _start_profiler(children: Children, pid: int, seconds: float,
                    out: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    return children.spawn(
        "py-spy",
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", "200", "--gil", "--format", "raw", "--output", str(out)],
    )  # fmt: skip


def _frame_key(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``path/file.py:function``."""
    found = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not found:
        return frame
    function, path = found.groups()
    return f"{path}:{function}"


_OURS: Final = ("domain/", "ports/", "application/", "adapters/", "entrypoints/")
_AREAS: Final = (
    ("adapters/alpaca/", "alpaca adapter (decode)"),
    ("adapters/redis/", "redis adapter"),
    ("adapters/", "other adapters"),
    ("application/", "application"),
    ("domain/", "domain (mid, JSON, timestamps)"),
    ("entrypoints/", "entrypoints (metrics, HTTP)"),
    ("trio_websocket/", "trio-websocket + wsproto"),
    ("wsproto/", "trio-websocket + wsproto"),
    ("h11/", "trio-websocket + wsproto"),
    ("redis/", "redis-py client"),
    ("trio/_core/_thread_cache", "thread hop (trio/anyio to_thread)"),
    ("trio/_threads", "thread hop (trio/anyio to_thread)"),
    ("anyio/_backends", "thread hop (trio/anyio to_thread)"),
    ("outcome/", "thread hop (trio/anyio to_thread)"),
    ("trio/", "trio scheduler and sockets"),
    ("anyio/", "anyio"),
    ("hypercorn/", "HTTP server"),
    ("prometheus_client/", "metrics"),
    ("threading.py", "thread hop (trio/anyio to_thread)"),
)


def _area(key: str) -> str:
    for prefix, area in _AREAS:
        if key.startswith(prefix):
            return area
    return "other (stdlib, C extensions)"


def hot_spots(raw: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """From py-spy raw (collapsed) output, in percent of samples: ``self`` (leaf frames by
    file:function), ``ours`` (inclusive, the project's own functions) and ``areas`` (leaf
    frames grouped by component)."""
    self_counts: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")]
        samples += count
        self_counts[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for key in set(frames):
            if key.startswith(_OURS) and not key.startswith("entrypoints/service.py"):
                ours[key] += count
    if not samples:
        return {"self": [], "ours": [], "areas": []}

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in counter.most_common(n)]

    return {"self": share(self_counts, top), "ours": share(ours, top), "areas": share(areas, 20)}


# --- floors --------------------------------------------------------------------------------------


def publish_floor(opts: Options, children: Children, redis: RedisProcess, rate: int = 0,
                  pipeline: int = 200) -> dict[str, Any]:  # fmt: skip
    """The subscriber under PUBLISH load with no service and no server: ``rate`` 0 gives its
    capacity (prices/s), a fixed rate the latency floor of Redis pub/sub plus the subscriber."""
    redis.flushall()
    sub = Subscriber(children, redis.port, "floor-subscriber")
    publisher = children.spawn(
        "floor-publisher",
        [sys.executable, "-m", "entrypoints.bench_subscriber", "--port", str(redis.port),
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
    (:mod:`entrypoints.bench_hop`, a fresh process): the writer pays it once per frame."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "entrypoints.bench_hop", "--rate", f"{frame_rate:g}",
             "--seconds", f"{seconds:g}"],
            cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return result


# --- the whole run -------------------------------------------------------------------------------


def code_version() -> str:
    """The measured code: git commit, ``+dirty`` with uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True, timeout=10,
                                check=True)  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def machine_info(redis_version: str) -> Machine:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return Machine(
        nproc=os.cpu_count() or 0,
        cpu_model=model,
        python=platform.python_version(),
        redis=redis_version,
        kernel=platform.release(),
        load_before=os.getloadavg(),
    )


def targets(opts: Options) -> list[Target]:
    out = [
        Target(MDS, fmt, batch, symbols)
        for symbols in opts.symbols
        for batch in opts.batches
        for fmt in opts.formats
    ]
    out += [
        Target(f"alpaca-py/{mode}", "msgpack", batch, symbols)
        for symbols in opts.symbols
        for batch in opts.batches
        for mode in opts.baseline_modes
    ]
    return out


_NUMERIC: Final = ("window_s", "throughput", "quotes_in", "p50_ms", "p99_ms", "p999_ms", "max_ms",
                   "cpu_us_per_quote", "peak_rss_mb")  # fmt: skip
_SUMMED: Final = ("conflated", "dropped", "refused_older", "missing", "exact_violations",
                  "order_violations", "bad_messages")  # fmt: skip


def medians(results: Sequence[PhaseResult]) -> list[dict[str, Any]]:
    """One row per (target, phase): medians of the measures, sums of the violations."""
    groups: dict[tuple[str, str, int, int, str], list[PhaseResult]] = {}
    for r in results:
        groups.setdefault((r.impl, r.fmt, r.batch, r.symbols, r.phase), []).append(r)
    rows = []
    for (impl, fmt, batch, symbols, phase), group in groups.items():
        ok = [r for r in group if r.error is None]
        row: dict[str, Any] = {"impl": impl, "fmt": fmt, "batch": batch, "symbols": symbols,
                               "phase": phase, "rate": group[0].rate, "runs": len(ok),
                               "errors": [r.error for r in group if r.error]}  # fmt: skip
        for name in _NUMERIC:
            values = [v for r in ok if (v := getattr(r, name)) is not None]
            row[name] = statistics.median(values) if values else None
        for name in _SUMMED:
            row[name] = sum(getattr(r, name) for r in ok)
        shares: dict[str, float] = {}
        for key in ("process", "process-sys", "server", "redis", "subscriber", "machine", "others"):
            values = [r.cpu_share[key] for r in ok if key in r.cpu_share]
            if values:
                shares[key] = statistics.median(values)
        row["cpu_share"] = shares
        windows = [r.rss_window_mb for r in ok if r.rss_window_mb is not None]
        row["rss_window_mb"] = (
            [statistics.median(w[0] for w in windows), statistics.median(w[1] for w in windows)]
            if windows
            else None
        )
        sustained = [r.sustained for r in ok if r.sustained is not None]
        row["sustained"] = all(sustained) if sustained else None
        rows.append(row)
    return rows


def run_bench(opts: Options) -> dict[str, Any]:
    """Run the configured benchmark; returns everything measured (the JSON document). On
    Ctrl-C or SIGTERM it stops every child and returns what was measured (``interrupted``)."""
    logs = Path(tempfile.mkdtemp(prefix="mds-bench-"))
    children = Children(logs)
    results: list[PhaseResult] = []
    out: dict[str, Any] = {"options": _options_json(opts), "logs": str(logs)}
    failed = False
    try:
        redis = RedisProcess(children)
        machine = machine_info(redis.version())
        out["machine"] = asdict(machine)
        out["code"] = code_version()
        opts.log(f"machine: {machine.describe()}; code {out['code']}")
        if opts.floors:
            out["floors"] = _floors(opts, children, redis)
        phases = [0, *opts.rates]
        plan = targets(opts)
        total = len(plan) * len(phases) * opts.runs
        done = 0
        for run in range(1, opts.runs + 1):
            for target in plan:
                for rate in phases:
                    done += 1
                    r = run_phase(opts, children, redis, target, rate, run)
                    results.append(r)
                    failed |= r.error is not None
                    opts.log(f"[{done}/{total}] run {run} {target.label} {r.phase}: {_brief(r)}")
        if opts.profile_dir is not None:
            out["profiles"] = _profiles(opts, children, redis, plan)
    except KeyboardInterrupt:
        out["interrupted"] = True  # Ctrl-C or SIGTERM: keep what was measured
    finally:
        children.stop_all()
        out["results"] = [asdict(r) for r in results]
        out["medians"] = medians(results)
        out["ratios"] = ratios(out["medians"])
        if failed or opts.keep_logs:
            opts.log(f"process logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    return out


def _floors(opts: Options, children: Children, redis: RedisProcess) -> dict[str, Any]:
    floors: dict[str, Any] = {}
    opts.log("floor: subscriber capacity (pipelined PUBLISH, no service)...")
    try:
        floors["subscriber"] = publish_floor(opts, children, redis)
        opts.log(f"  subscriber takes {floors['subscriber']['throughput']:,.0f} prices/s")
        for rate in opts.rates:
            for batch in opts.batches:
                key = f"latency@{rate}/{batch}"
                floors[key] = publish_floor(opts, children, redis, rate, pipeline=batch)
                floors[key]["pipeline"] = batch
                lat = floors[key]["latency_ms"] or {}
                opts.log(
                    f"floor: Redis pub/sub + subscriber at {rate:,}/s (pipelines of {batch}): "
                    f"p50 {_f(lat.get('p50'), 2)} p99 {_f(lat.get('p99'), 2)} "
                    f"p99.9 {_f(lat.get('p99.9'), 2)} ms"
                )
    except BenchError as e:
        floors.setdefault("subscriber", {"error": str(e)})
        opts.log(f"  ERROR {e}")
    hops: dict[str, dict[str, float]] = {}
    for frame_rate in sorted({rate / batch for rate in opts.rates for batch in opts.batches}):
        hop = thread_hop_floor(frame_rate, max(3.0, opts.duration_s))
        if hop is not None:
            hops[f"{frame_rate:g}"] = hop
            opts.log(
                f"floor: one worker-thread round trip at {frame_rate:g} frames/s: p50 "
                f"{_f(hop['p50_us'])} p99 {_f(hop['p99_us'])} us (back to back: "
                f"{_f(hop['hot_p50_us'])} us)"
            )
    floors["thread_hop"] = hops
    feed: dict[str, dict[str, float | None]] = {}
    for fmt in opts.formats:
        for batch in opts.batches:
            q = feed_floor(fmt, batch, opts.symbols[0], max(2.0, opts.duration_s / 2))
            feed[f"{fmt}/{batch}"] = q
            shown = ", ".join(f"{k} {_f(v)}" for k, v in q.items())
            opts.log(f"floor: stream server -> receive-only client, {fmt} batch {batch}: {shown}")
    floors["feed"] = feed
    return floors


def _profiles(opts: Options, children: Children, redis: RedisProcess,
              plan: Sequence[Target]) -> dict[str, Any]:  # fmt: skip
    assert opts.profile_dir is not None
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, Any] = {}
    rates = [0, *opts.rates[-1:]]  # unthrottled, and the highest fixed rate
    for target in plan:
        if target.impl != MDS:
            continue
        for rate in rates:
            phase = "max" if rate == 0 else str(rate)
            name = f"mds-{target.fmt}-b{target.batch}-s{target.symbols}-{phase}"
            raw = opts.profile_dir / f"{name}.txt"
            opts.log(f"profiling {target.label} at {phase} (py-spy) -> {raw}")
            r = run_phase(opts, children, redis, target, rate, 0, profile=raw)
            spots = hot_spots(raw) if raw.exists() else {}
            profiles[name] = {"throughput_while_profiled": r.throughput, "raw": str(raw),
                              "error": r.error, **spots}  # fmt: skip
    return profiles


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """mds (msgpack, as alpaca-py) against each baseline mode, per batch, symbols and phase."""
    index = {(r["impl"], r["fmt"], r["batch"], r["symbols"], r["phase"]): r for r in rows}
    out = []
    for r in rows:
        if not r["impl"].startswith("alpaca-py/"):
            continue
        ours = index.get((MDS, "msgpack", r["batch"], r["symbols"], r["phase"]))
        if ours is None:
            continue
        row: dict[str, Any] = {"baseline": r["impl"], "batch": r["batch"],
                               "symbols": r["symbols"], "phase": r["phase"]}  # fmt: skip
        if r["rate"] == 0:
            row["throughput"] = _ratio(ours["throughput"], r["throughput"])
            row["cpu_per_quote"] = _ratio(r["cpu_us_per_quote"], ours["cpu_us_per_quote"])
        elif ours["sustained"] and r["sustained"]:
            for key in ("p50_ms", "p99_ms", "p999_ms"):
                row[key] = _ratio(r[key], ours[key])  # >1: ours is faster
        elif not r["runs"] or not ours["runs"]:
            row["note"] = "no result (error)"
        else:
            row["note"] = "baseline did not sustain the rate" if ours["sustained"] else "n/a"
        out.append(row)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _brief(r: PhaseResult) -> str:
    if r.error:
        return f"ERROR {r.error}"
    lat = "" if r.p50_ms is None else f" p50 {r.p50_ms:.2f} p99 {r.p99_ms or 0:.2f} ms"
    cpu = "" if r.cpu_us_per_quote is None else f" {r.cpu_us_per_quote:.1f} us/q"
    return (
        f"{r.throughput:,.0f}/s out ({r.quotes_in:,.0f}/s in){lat}{cpu}"
        f" rss {r.peak_rss_mb:.0f} MB{_window(r.rss_window_mb)} conflated {r.conflated}"
        f" missing {r.missing}"
        f" inexact {r.exact_violations} disorder {r.order_violations}"
    )


def _options_json(opts: Options) -> dict[str, Any]:
    return {
        "formats": list(opts.formats), "batches": list(opts.batches),
        "symbols": list(opts.symbols), "rates": list(opts.rates),
        "duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "runs": opts.runs,
        "baseline_modes": list(opts.baseline_modes), "floors": opts.floors,
    }  # fmt: skip


# --- output --------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _other_load(row: dict[str, Any]) -> float | None:
    """Cores used by processes outside the benchmark (clock skew can make it dip below 0)."""
    value = (row.get("cpu_share") or {}).get("others")
    return None if value is None else max(0.0, value)


def _cpu_shares(row: dict[str, Any]) -> str:
    s = row.get("cpu_share") or {}
    keys = ("process", "server", "redis", "subscriber")
    return "/".join([*(_f(s.get(k), 2) for k in keys), _f(_other_load(row), 2)])


def _window(rss: Sequence[float] | None) -> str:
    return "" if rss is None else f" (window {rss[0]:.1f} -> {rss[1]:.1f})"


def _rss_window(row: dict[str, Any]) -> str:
    rss = row.get("rss_window_mb")
    return "-" if rss is None else f"{rss[0]:.1f} → {rss[1]:.1f}"


def _violations(row: dict[str, Any]) -> str:
    return f"{row['exact_violations']}/{row['order_violations']}"


THROUGHPUT_COLUMNS: Final = ("impl", "format", "batch", "symbols", "prices/s out", "quotes/s in",
                             "CPU us/quote", "peak RSS MB", "RSS MB window start → end",
                             "conflated", "missing", "inexact/disorder",
                             "cores: svc/srv/redis/sub/other")  # fmt: skip
LATENCY_COLUMNS: Final = ("impl", "format", "batch", "symbols", "rate", "prices/s out",
                          "p50 ms", "p99 ms", "p99.9 ms", "CPU us/quote", "peak RSS MB",
                          "inexact/disorder", "sustained", "other load")  # fmt: skip


_SUSTAINED: Final = {True: "yes", False: "NO", None: "-"}


def table_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    throughput: list[list[str]] = []
    latency: list[list[str]] = []
    for r in rows:
        head = [r["impl"], r["fmt"], str(r["batch"]), str(r["symbols"])]
        if r["errors"] and not r["runs"]:
            err = "ERROR: " + r["errors"][0][:60]
            if r["rate"] == 0:
                throughput.append([*head, err])
            else:
                latency.append([*head, f"{r['rate']:,}", err])
            continue
        if r["rate"] == 0:
            throughput.append([
                *head, _f(r["throughput"]), _f(r["quotes_in"]), _f(r["cpu_us_per_quote"], 1),
                _f(r["peak_rss_mb"]), _rss_window(r), str(r["conflated"]), str(r["missing"]),
                _violations(r), _cpu_shares(r),
            ])  # fmt: skip
        else:
            latency.append([
                *head, f"{r['rate']:,}", _f(r["throughput"]), _f(r["p50_ms"], 2),
                _f(r["p99_ms"], 2), _f(r["p999_ms"], 2), _f(r["cpu_us_per_quote"], 1),
                _f(r["peak_rss_mb"]), _violations(r), _SUSTAINED[r["sustained"]],
                _f(_other_load(r), 2),
            ])  # fmt: skip
    return throughput, latency


def ratio_rows(ratio_list: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in ratio_list:
        if "throughput" in r:
            what = (f"throughput {_f(r['throughput'], 1)}x, "
                    f"CPU per quote {_f(r['cpu_per_quote'], 1)}x lower")  # fmt: skip
        elif "p50_ms" in r:
            what = (f"latency baseline/mds: p50 {_f(r['p50_ms'], 2)}, p99 {_f(r['p99_ms'], 2)}, "
                    f"p99.9 {_f(r['p999_ms'], 2)} (>1: mds is faster)")  # fmt: skip
        else:
            what = r.get("note", "-")
        out.append([r["baseline"], str(r["batch"]), str(r["symbols"]), r["phase"], what])
    return out


RATIO_COLUMNS: Final = ("mds (msgpack) vs", "batch", "symbols", "phase", "mds against it")


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown block for the README: the machine, the tables, the floors."""
    machine = Machine(**{**doc["machine"], "load_before": tuple(doc["machine"]["load_before"])})
    opts = doc["options"]
    thr, lat = table_rows(doc["medians"])
    lines = [
        f"Machine: {machine.describe()}.",
        f"`mds bench` (code {doc.get('code', 'unknown')}): medians of {opts['runs']} run(s), "
        f"{opts['duration_s']:g} s windows after {opts['warmup_s']:g} s warm-up; server "
        f"`--rate 0` for throughput.",
        "",
    ]

    def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
        lines.append("")

    if thr:
        table(THROUGHPUT_COLUMNS, thr)
    if lat:
        table(LATENCY_COLUMNS, lat)
    if doc["ratios"]:
        table(RATIO_COLUMNS, ratio_rows(doc["ratios"]))
    lines += [
        "Prices/s out: received by a Redis pattern subscriber; quotes/s in: handled by the "
        "process. CPU per quote: the process's user+sys CPU over the window / quotes handled. "
        "Latency: the stream server's send time (the quote's `t`) to the subscriber's receipt. "
        "Cores: CPU used over the window by the process under test, the stream server, Redis, "
        "the subscriber, and everything else on the machine (other load: anything above ~0.2 "
        "means the numbers were disturbed). inexact: published mids that are not the exact "
        "decimal midpoint; disorder: a price older than the previous one of its symbol.",
        "",
    ]
    floors = doc.get("floors")
    if floors:
        sub = floors.get("subscriber", {})
        feed = "; ".join(
            f"{k}: raw socket {_f(v.get('raw'))}, trio-websocket {_f(v.get('ws'))}"
            for k, v in floors.get("feed", {}).items()
        )
        lines.append(
            f"Harness floors: the subscriber takes {_f(sub.get('throughput'))} prices/s "
            f"(pipelined PUBLISH, cores sub/redis/pub "
            f"{'/'.join(_f(v, 2) for v in (sub.get('cpu_share') or {}).values())}); "
            f"stream server to a receive-only client (quotes/s): {feed}."
        )
        for key, floor in floors.items():
            if key.startswith("latency@") and floor.get("latency_ms"):
                lat = floor["latency_ms"]
                pipeline = floor.get("pipeline")
                lines.append(
                    f"Latency floor, PUBLISH -> subscriber at {floor['rate']:,}/s without the "
                    + (f"service (pipelines of {pipeline}): " if pipeline else "service: ")
                    + f"p50 {_f(lat.get('p50'), 2)}, p99 {_f(lat.get('p99'), 2)}, "
                    f"p99.9 {_f(lat.get('p99.9'), 2)} ms."
                )
        for frame_rate, hop in (floors.get("thread_hop") or {}).items():
            lines.append(
                f"One worker-thread round trip (anyio.to_thread under trio, paced) at "
                f"{frame_rate} frames/s: p50 {_f(hop['p50_us'])}, p99 {_f(hop['p99_us'])} us "
                f"(back to back {_f(hop['hot_p50_us'])} us)."
            )
    return "\n".join(lines) + "\n"


def print_tables(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    thr, lat = table_rows(doc["medians"])
    for title, columns, rows in (
        ("Sustained throughput (server unthrottled)", THROUGHPUT_COLUMNS, thr),
        ("Latency at fixed rates (server send -> subscriber receipt)", LATENCY_COLUMNS, lat),
        ("mds against the hand-written baseline", RATIO_COLUMNS, ratio_rows(doc["ratios"])),
    ):
        if not rows:
            continue
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, justify="left" if col in ("impl", "format") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for name, spots in (doc.get("profiles") or {}).items():
        t = Table(title=f"py-spy --gil hot spots: {name} (% of samples)", title_justify="left")
        for col in ("self %", "leaf function", "incl. %", "our function (inclusive)", "%", "area"):
            t.add_column(col, justify="right" if "%" in col else "left")
        lists = [spots.get(k) or [] for k in ("self", "ours", "areas")]
        for i in range(max(map(len, lists), default=0)):
            cells: list[str] = []
            for column in lists:
                name_pct = column[i] if i < len(column) else None
                cells += ["", ""] if name_pct is None else [f"{name_pct[1]:.1f}", name_pct[0]]
            t.add_row(*cells)
        console.print(t)


# --- command line --------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(v.strip().replace("_", "")) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return values

    return parse


def _format(text: str) -> str:
    if text not in ("json", "msgpack"):
        raise ValueError(f"format must be json or msgpack, not {text!r}")
    return text


def _mode(text: str) -> str:
    if text not in BASELINE_MODES:
        raise ValueError(f"baseline mode must be one of {', '.join(BASELINE_MODES)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mds bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--formats", type=_csv(_format), help="json,msgpack (default both)")
    parser.add_argument("--batches", type=_csv(int), help="messages per frame (default 10,100)")
    parser.add_argument("--symbols", type=_csv(int), help="symbol counts (default 100,1000)")
    parser.add_argument("--rates", type=_csv(int),
                        help="fixed rates for latency, quotes/s (default 1000,10000)")  # fmt: skip
    parser.add_argument("--duration", type=float, help="seconds per measured window (10)")
    parser.add_argument("--warmup", type=float, help="seconds discarded before a window (2)")
    parser.add_argument(
        "--runs", type=int, help="runs per configuration, medians (3; 0 with --profile)"
    )
    parser.add_argument(
        "--baseline-modes",
        type=_csv(_mode),
        help="alpaca-py handler modes: naive,pipeline,batched (naive,batched)",
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="measure the service only")  # fmt: skip
    parser.add_argument(
        "--baseline",
        dest="baseline",
        action="store_true",
        default=True,
        help="also measure the hand-written alpaca-py baseline (default)",
    )
    parser.add_argument("--no-floors", dest="floors", action="store_false", default=True,
                        help="skip the subscriber-capacity and feed floors")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~1 minute smoke: msgpack, batch 10, 100 symbols, 1 run of 3 s",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile the service under max load with py-spy into DIR",
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench-results/<time>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the tables of a saved result"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    quick = args.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    modes = pick(args.baseline_modes, ("naive", "batched"), ("naive", "batched"))
    return Options(
        formats=pick(args.formats, ("json", "msgpack"), ("msgpack",)),
        batches=pick(args.batches, (10, 100), (10,)),
        symbols=pick(args.symbols, (100, 1000), (100,)),
        rates=pick(args.rates, (1_000, 10_000), (1_000, 10_000)),
        duration_s=pick(args.duration, 10.0, 3.0),
        warmup_s=pick(args.warmup, 2.0, 1.0),
        runs=pick(args.runs, 3, 1),
        baseline_modes=modes if args.baseline else (),
        floors=args.floors,
        profile_dir=args.profile,
        keep_logs=args.keep_logs,
        log=_stderr_log,
    )


def _stderr_log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = options_from_args(args)
    if opts.runs < (0 if opts.profile_dir else 1) or opts.duration_s <= 0 or opts.warmup_s < 0:
        parser.error("--runs must be >= 1 (0 with --profile), --duration > 0, --warmup >= 0")
    if any(r <= 0 for r in opts.rates):
        parser.error("--rates must be positive (the unthrottled phase always runs)")
    if args.render is not None:
        doc = render(json.loads(args.render.read_text()))
        print_tables(doc)
        sys.stdout.write("\n" + markdown(doc))
        return 0
    out_path = args.out or Path("bench-results") / time.strftime("bench-%Y%m%d-%H%M%S.json")
    try:
        with _sigterm_as_interrupt():
            doc = run_bench(opts)
    except BenchError as e:
        _stderr_log(f"mds bench: {e}")
        return 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if doc.get("machine"):
        print_tables(doc)
        sys.stdout.write("\n" + markdown(doc))
    _stderr_log(f"results written to {out_path}")
    if doc.get("interrupted"):
        _stderr_log("mds bench: interrupted; every child process was stopped")
        return 130
    errors = sum(1 for r in doc["results"] if r["error"])
    return 1 if errors else 0


def render(doc: dict[str, Any]) -> dict[str, Any]:
    """A saved result document with its medians and ratios recomputed from the raw results."""
    fields = set(PhaseResult.__dataclass_fields__)
    results = [PhaseResult(**{k: v for k, v in r.items() if k in fields}) for r in doc["results"]]
    for r in results:
        r.missing = max(0, r.missing)
    doc = {**doc, "results": [asdict(r) for r in results], "medians": medians(results)}
    doc["ratios"] = ratios(doc["medians"])
    return doc


if __name__ == "__main__":
    sys.exit(main())
