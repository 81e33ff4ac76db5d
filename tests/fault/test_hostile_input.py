"""Hostile input not covered elsewhere: frames at the size limit (memory), a frame over it,
secrets in everything the process emits, an insecure stream URL, and where the API binds.

Already covered elsewhere (not repeated here): hypothesis fuzzing of the decoder
(tests/adapters/alpaca/test_wire.py), odd HTTP inputs (tests/entrypoints/test_http_api.py),
settings validation (tests/entrypoints/test_settings.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import msgpack
import orjson
import psutil
import pytest

from adapters.alpaca.config import AlpacaFeedConfig, Secret
from adapters.alpaca.feed import AlpacaQuoteFeed
from adapters.alpaca_compatible_server.config import Faults, ServerConfig
from domain.errors import FeedDisconnected
from domain.market import Subscriptions
from tests.adapters.alpaca.fake_server import fake_alpaca
from tests.e2e.service_process import KEY, ROOT, SECRET, start_service
from tests.fault.helpers import alpaca_server, service_process
from tests.redis_servers import RedisServer

pytestmark = [pytest.mark.fault]

MAX_MESSAGE = AlpacaFeedConfig(Secret("k"), Secret("s")).max_message_size
# What decoding one frame at the size limit may add to the process's peak RSS, whatever it
# holds: measured worst case ~72 x the frame for a msgpack array of empty maps.
DECODE_PEAK_LIMIT = 200 * 2**20
DECODE_TIME_LIMIT_S = 5.0


# --- frames just under the limit ------------------------------------------------------------

QUOTE = {"T": "q", "S": "AAPL", "bx": "V", "bp": 150.25, "bs": 1, "ax": "V", "ap": 150.27,
         "as": 2, "c": ["R"], "z": "C"}  # fmt: skip


def json_quotes(size: int) -> bytes:
    one = orjson.dumps({**QUOTE, "t": "2024-01-02T15:04:05.123456789Z"})
    return b"[" + b",".join([one] * ((size - 2) // (len(one) + 1))) + b"]"


def msgpack_quotes(size: int) -> bytes:
    quote = {**QUOTE, "t": msgpack.Timestamp(1_704_207_845, 123_456_789)}
    one = msgpack.packb(quote)
    return bytes(msgpack.packb([quote] * ((size - 5) // len(one))))


def json_empty_objects(size: int) -> bytes:
    return b"[" + b",".join([b"{}"] * ((size - 2) // 3)) + b"]"


def json_zeros(size: int) -> bytes:
    return b"[" + b",".join([b"0"] * ((size - 2) // 2)) + b"]"


def json_giant_symbol(size: int) -> bytes:
    head = b'[{"T":"q","S":"'
    return head + b"A" * (size - len(head) - 3) + b'"}]'


def msgpack_empty_maps(size: int) -> bytes:
    n = size - 5
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n  # array32 of n empty maps


def msgpack_deep_nesting(size: int) -> bytes:
    return b"\x91" * size  # arrays of one array of one array ...


FRAMES: dict[str, tuple[Callable[[int], bytes], bool]] = {
    "json quotes": (json_quotes, True),
    "msgpack quotes": (msgpack_quotes, False),
    "json empty objects": (json_empty_objects, True),
    "json zeros": (json_zeros, True),
    "json giant symbol": (json_giant_symbol, True),
    "msgpack empty maps": (msgpack_empty_maps, False),
    "msgpack deep nesting": (msgpack_deep_nesting, False),
}

# Runs in a fresh interpreter; a thread samples the RSS (/proc/self/statm) while the frame is
# decoded, so the peak is this decode's (ru_maxrss is updated too lazily to be trusted here).
_PROBE = """
import json, os, sys, threading, time
from adapters.alpaca.wire import decode_frame
from domain.stats import FeedStats
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
data = open(sys.argv[1], "rb").read()
if sys.argv[2] == "text":
    data = data.decode()
sys.setswitchinterval(0.0005)
baseline = rss()
peak = [baseline]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)  # RSS sampling cadence, not synchronisation
sampler = threading.Thread(target=sample)
sampler.start()
started = time.perf_counter()
stats = FeedStats()
events, controls = decode_frame(data, 0, stats)
took = time.perf_counter() - started
peak[0] = max(peak[0], rss())
done.set()
sampler.join()
print(json.dumps({"growth": peak[0] - baseline, "took": took, "events": len(events),
                  "errors": sum(stats.decode_errors.values()), "size": len(data)}))
"""


@pytest.mark.parametrize("shape", list(FRAMES))
def test_a_frame_at_the_size_limit_decodes_with_bounded_memory_and_time(
    tmp_path: Path, shape: str
) -> None:
    """A frame just under the WebSocket max message size (AlpacaFeedConfig.max_message_size),
    valid or built to maximise objects per byte, decodes without raising, within 5 s, adding
    less than 200 MiB to the process's peak RSS; hostile shapes are counted as decode errors.
    (Without the decoder's message-count guard, a 10 MiB msgpack array of empty maps took
    +723 MiB and ~9 s; a valid 10 MiB frame of quotes takes +113-125 MiB.)"""
    build, is_text = FRAMES[shape]
    frame = build(MAX_MESSAGE - 64)
    assert MAX_MESSAGE - 1024 < len(frame) <= MAX_MESSAGE
    path = tmp_path / "frame.bin"
    path.write_bytes(frame)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), "text" if is_text else "binary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    print(
        f"\n{shape}: {result['size'] / 2**20:.2f} MiB frame, peak RSS "
        f"+{result['growth'] / 2**20:.1f} MiB, {result['took'] * 1000:.0f} ms, "
        f"{result['events']} events, {result['errors']} errors"
    )
    assert result["growth"] < DECODE_PEAK_LIMIT
    assert result["took"] < DECODE_TIME_LIMIT_S
    if "quotes" in shape:
        assert result["events"] > 1_000 and result["errors"] == 0
    else:
        assert result["events"] == 0 and result["errors"] >= 1


async def test_a_frame_over_the_size_limit_ends_the_session_and_the_next_one_works() -> None:
    """A frame larger than max_message_size is refused by the WebSocket layer before any
    decoding: the session ends with FeedDisconnected (close code 1009, message too big),
    nothing is buffered, and the next connection streams normally."""
    async with fake_alpaca() as server:
        feed = AlpacaQuoteFeed(
            AlpacaFeedConfig(Secret("PKHOSTILE"), Secret("hostile-secret"), url=server.url)
        )
        with anyio.fail_after(20):
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.last.send(json_giant_symbol(MAX_MESSAGE + 1024).decode())
                with pytest.raises(FeedDisconnected, match=r"1009|MESSAGE_TOO_BIG"):
                    async for _ in session.events():
                        pass
            async with feed.connect() as session:
                await session.subscribe(Subscriptions.quotes({"AAPL"}))
                await server.last.send([{**QUOTE, "t": "2024-01-02T15:04:05Z"}])
                async for batch in session.events():
                    assert batch[0].symbol == "AAPL"
                    break
    assert feed.stats.decode_errors_total == 0


# --- secrets ------------------------------------------------------------------------------------


async def test_secrets_appear_in_no_output_log_or_endpoint(
    tmp_path: Path, own_redis_server: RedisServer
) -> None:
    """The API key id and the secret never appear in anything the process emits, across three
    runs: a normal streaming run (its whole stdout/stderr log, /health, /metrics,
    /subscriptions, /prices, /ready), a run with credentials the venue refuses (exit 3), and a
    run whose settings are invalid while the keys are set (exit 2)."""
    emitted: list[str] = []
    config = ServerConfig(rate=200, batch=10, bar_interval_s=None)
    async with (
        alpaca_server(config) as server,
        service_process(tmp_path, server, own_redis_server.url, MDS_LOG_LEVEL="DEBUG") as run,
    ):
        await run.wait_health(lambda h: h["status"] == "healthy")
        for path in ("/health", "/ready", "/metrics", "/subscriptions", "/prices/AAPL",
                     "/prices?symbols=AAPL,MSFT", "/nope"):  # fmt: skip
            emitted.append((await run.get(path)).text)
        await server.drop_connections()  # reconnect paths log too
        with anyio.fail_after(10):
            await server.wait_until(lambda: server.stats.auth_successes >= 2)
        run.proc.send_signal(signal.SIGTERM)
        assert await run.wait_exit(10) == 0
        emitted.append(run.log())

    refused = ServerConfig(rate=200, bar_interval_s=None, faults=Faults(refuse_auth=True))
    async with (
        alpaca_server(refused) as server,
        service_process(tmp_path, server, own_redis_server.url, MDS_LOG_LEVEL="DEBUG") as run,
    ):
        assert await run.wait_exit(20) == 3
        emitted.append(run.log())

    bad_settings = start_service(
        tmp_path, "ws://127.0.0.1:1/v2/iex", own_redis_server.url, MDS_PRICE_TTL="-1"
    )
    try:
        assert await bad_settings.wait_exit(20) == 2
        emitted.append(bad_settings.log())
    finally:
        bad_settings.kill()

    everything = "\n".join(emitted)
    assert "MDS_PRICE_TTL" in everything  # the runs really produced their output
    assert SECRET not in everything
    assert KEY not in everything


# --- transport and binding --------------------------------------------------------------------


async def test_plain_ws_to_a_remote_host_is_refused_at_start(tmp_path: Path) -> None:
    """ALPACA_STREAM_URL=ws://<non-loopback host> stops the process at start (exit 2, before any
    connection) with one message naming ALPACA_STREAM_URL; the keys are not shown."""
    service = start_service(tmp_path, "ws://stream.example.com/v2/iex", None)
    try:
        code = await service.wait_exit(20)
    finally:
        service.kill()
    output = service.log()
    assert code == 2
    assert "ALPACA_STREAM_URL" in output and "wss://" in output
    assert SECRET not in output and KEY not in output


async def test_the_http_api_binds_loopback_by_default(tmp_path: Path) -> None:
    """Without MDS_HTTP_HOST the API listens on 127.0.0.1 only: the process's one listening
    TCP socket is 127.0.0.1:<port>, the start-up line says so, and /health answers there."""
    async with alpaca_server(ServerConfig(rate=50, bar_interval_s=None)) as server:
        service = start_service(tmp_path, f"{server.url}/v2/iex", None)
        try:
            await service.wait_health(lambda h: h["status"] in ("healthy", "degraded"))
            listening = [
                c.laddr
                for c in psutil.Process(service.pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
            log = service.log()
        finally:
            service.kill()
    port = int(service.http.rsplit(":", 1)[1])
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
    assert f"HTTP API listening on http://127.0.0.1:{port}" in log
