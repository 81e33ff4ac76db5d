"""The benchmark's processes: its own redis-server, the stream server, the subscriber and
the system under test, each started under a deadline and stopped by :class:`Children`."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

from entrypoints.bench.model import (
    MDS,
    REPO,
    SHARED_REDIS_PORT,
    START_TIMEOUT_S,
    BenchError,
    Target,
)

_ENV_PREFIXES: Final = ("MDS_", "ALPACA_", "APCA_", "REDIS_")


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
    """Drives :mod:`entrypoints.bench.subscriber` over its stdin/stdout."""

    def __init__(self, children: Children, redis_port: int, name: str = "subscriber") -> None:
        self.proc = children.spawn(
            name,
            [sys.executable, "-m", "entrypoints.bench.subscriber", "--port", str(redis_port)],
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
         "--one-sided", "0", "--crossed", "0",  # every quote a price: comparable runs
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
        MDS_INITIAL_IMAGE="false",  # the benchmark measures the stream alone
        MDS_SYMBOL_LIMIT="0",
        MDS_SYMBOLS=",".join(symbol_names(target.symbols)),
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        MDS_HTTP_PORT=str(http_port),
        MDS_SSE_MAX_CLIENTS="5000",  # python -m entrypoints.bench.sse connects up to thousands
        MDS_LOG_LEVEL="WARNING",
        MDS_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env


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
                 "entrypoints.bench.baseline", "--url", f"{url}/v2/iex",
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
