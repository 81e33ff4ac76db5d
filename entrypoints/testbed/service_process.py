"""Start the service as a real process and talk to it (shared by the e2e and fault tests, and
the chaos soak: ``tests/e2e/service_process.py`` re-exports it)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVICE = Path(__file__).resolve().parents[1] / "service.py"
KEY, SECRET = "PKE2ETESTKEY", "e2e-secret-value-never-logged"
_LISTENING = re.compile(r"HTTP API listening on http://(\[[^\]]+\]|[^\s,:\"]+):(\d+)")
_service_numbers = itertools.count(1)


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    requested_http: str  # ends in ":0" when the service picks its own port (the default here)
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    _bound_http: str | None = None

    @property
    def http(self) -> str:
        """The API's base URL. With port 0 (no race between finding a free port and binding
        it), the address the service bound, read from its start-up line once written; until
        then the requested URL, whose port 0 refuses connections, so health polls keep waiting.
        """
        if self._bound_http is None:
            if not self.requested_http.endswith(":0"):
                self._bound_http = self.requested_http
            else:
                found = _LISTENING.search(self.log())
                if found is not None:
                    host, port = found.group(1), found.group(2)
                    host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
                    self._bound_http = f"http://{host}:{port}"
        return self._bound_http or self.requested_http

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr share the file)."""
        return self.log_path.read_text(errors="replace")

    async def health(self) -> dict[str, object] | None:
        try:
            async with httpx.AsyncClient(base_url=self.http, timeout=2) as client:
                answer = await client.get("/health")
                result: dict[str, object] = answer.json()
                return result
        except httpx.HTTPError:
            return None

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http, timeout=5) as client:
            return await client.get(path)

    async def wait_health(
        self, check: Callable[[dict[str, object]], bool], timeout_s: float = 20
    ) -> dict[str, object]:
        with anyio.fail_after(timeout_s):
            while True:
                assert self.proc.poll() is None, f"service exited:\n{self.log()[-3000:]}"
                health = await self.health()
                if health is not None and check(health):
                    return health
                await anyio.sleep(0.05)  # poll interval; fail_after bounds the wait

    async def metrics(self) -> dict[str, float]:
        """The current ``/metrics`` as ``{'name{labels}': value}`` (see :func:`parse_metrics`)."""
        answer = await self.get("/metrics")
        answer.raise_for_status()
        return parse_metrics(answer.text)

    async def wait_exit(self, timeout_s: float = 10) -> int:
        """Wait for the process to exit by itself; its exit code (``TimeoutError`` after
        ``timeout_s``). Waits on the process in a worker thread: no polling."""
        try:
            return await anyio.to_thread.run_sync(lambda: self.proc.wait(timeout_s))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the service did not exit within {timeout_s} s") from None

    def terminate(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10) -> float:
        """Send ``sig`` and wait; the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout_s)
        return time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_service(
    tmp_path: Path, stream_url: str, redis_url: str | None, **extra: str
) -> ServiceProcess:
    """Start the service; its HTTP API binds port 0 (the OS picks a free one, read back from
    the start-up line: see :attr:`ServiceProcess.http`) unless ``MDS_HTTP_PORT`` is given."""
    port = int(extra.get("MDS_HTTP_PORT", "0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDS_", "ALPACA_", "APCA_"))}
    env.pop("REDIS_URL", None)
    scheme = "https" if stream_url.startswith("wss:") else "http"
    stream_host = urlsplit(stream_url).hostname or ""
    # The local server's REST side, when the stream is the local server (a loopback address);
    # otherwise the default, so a test of a remote ws:// URL meets only that URL's own error.
    local = stream_host in ("127.0.0.1", "localhost", "::1")
    data_url = urlunsplit((scheme, urlsplit(stream_url).netloc, "", "", "")) if local else None
    env.update(
        MDS_FEED="alpaca",
        ALPACA_STREAM_URL=stream_url,
        ALPACA_API_KEY=KEY,
        ALPACA_SECRET_KEY=SECRET,
        ALPACA_STREAM_FORMAT="json",
        MDS_SYMBOLS="AAPL,MSFT",
        MDS_HTTP_PORT=str(port),
        MDS_RECONNECT_BASE_DELAY="0.2",
        MDS_RECONNECT_MAX_DELAY="1",
        MDS_LOG_FORMAT="json",
        MDS_LOG_LEVEL="INFO",
        # The local server answers the latest-quotes REST API on its stream port; the initial
        # image stays off unless a test turns it on (most assert what the streams alone do).
        MDS_INITIAL_IMAGE="false",
    )
    if data_url is not None:
        env["ALPACA_DATA_URL"] = data_url
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    log_path = tmp_path / f"service-{port or next(_service_numbers)}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SERVICE)], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    return ServiceProcess(proc, f"http://127.0.0.1:{port}", log_path, env)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> ``{'name{labels}': value}`` (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def metric_total(metrics: Mapping[str, float], name: str) -> float:
    """The sum of ``name`` over all its label sets (0 when absent)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def without(mapping: Mapping[str, str], *keys: str) -> dict[str, str]:
    return {k: v for k, v in mapping.items() if k not in keys}
