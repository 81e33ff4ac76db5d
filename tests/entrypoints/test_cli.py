"""The mds command: help for every command, price from Redis, record from a stream server."""

from __future__ import annotations

import contextlib
import gzip
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis import RedisConnection, RedisPriceCache
from domain.price import Price
from tests.ports import refused_port
from tests.price_contract import check_http_price
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def mds(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MDS_", "ALPACA_", "APCA_"))}
    base.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *args],
        env=base | (env or {}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["run", "stream-server", "record", "replay", "price", "watch"])
def test_every_command_has_help(command: str) -> None:
    result = mds(command, "--help")
    assert result.returncode == 0 and "usage" in result.stdout.lower()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((), 128 + signal.SIGPIPE),
        (("--help",), 128 + signal.SIGPIPE),
        # argparse's own help ignores a write error on stdout and exits 0: quiet as well
        (("bench", "--help"), 0),
        (("stream-server", "--help"), 0),
    ],
)
def test_a_reader_that_goes_away_gets_no_traceback(args: tuple[str, ...], code: int) -> None:
    """`mds --help | head -1`: the pipe's reader is gone before mds writes. mds stops quietly
    (128 + SIGPIPE, as `yes | head` does) instead of a BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before mds starts: its first write meets EPIPE, every time
    try:
        result = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", *args],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == code


def test_unknown_command_is_refused() -> None:
    result = mds("frobnicate")
    assert result.returncode == 2 and "unknown command" in result.stderr


@pytest.mark.redis
async def test_price_reads_the_cache_with_age_and_staleness(own_redis_server: RedisServer) -> None:
    conn = RedisConnection(own_redis_server.url)
    try:
        old = Price("AAPL", 150.25, 150.27, 150.26, 1_600_000_000 * 10**9, "V")
        await RedisPriceCache(conn).put_many([old])
    finally:
        conn.close()
    env = {"REDIS_URL": own_redis_server.url}
    result = await anyio.to_thread.run_sync(lambda: mds("price", "aapl", "--json", env=env))
    assert result.returncode == 0, result.stderr
    line = orjson.loads(result.stdout)
    check_http_price(line)  # the message plus age_s and stale, as the HTTP API
    assert line["mid"] == 150.26 and line["stale"] is True and line["age_s"] > 300
    missing = await anyio.to_thread.run_sync(lambda: mds("price", "AAPL", "NOPE", env=env))
    assert missing.returncode == 1 and "NOPE: no price" in missing.stderr
    bad = await anyio.to_thread.run_sync(lambda: mds("price", "A$", env=env))
    assert bad.returncode == 2 and "'A$'" in bad.stderr


async def test_record_writes_frames_that_replay_reads(tmp_path: Path) -> None:
    server = AlpacaCompatibleServer(ServerConfig(rate=500, batch=5, bar_interval_s=None))
    out = tmp_path / "rec.jsonl.gz"
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        env = {
            "ALPACA_API_KEY": "k",
            "ALPACA_SECRET_KEY": "s",
            "ALPACA_STREAM_FORMAT": "json",
            "ALPACA_STREAM_URL": f"{server.url}/v2/iex",
        }
        result = await anyio.to_thread.run_sync(
            lambda: mds("record", str(out), "AAPL", "--seconds", "1", env=env)
        )
        tg.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    assert any('"T":"q"' in line.get("text", "") for line in lines)
    assert all(isinstance(line["t"], int) for line in lines)


def test_record_leaves_no_empty_file_after_a_failed_connect(tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    with refused_port() as port:
        env = {
            "ALPACA_API_KEY": "k",
            "ALPACA_SECRET_KEY": "s",
            "ALPACA_STREAM_URL": f"ws://127.0.0.1:{port}/v2/iex",  # refused
            "MDS_RECONNECT_MAX_ATTEMPTS": "1",
        }
        result = mds("record", str(out), "AAPL", "--seconds", "1", env=env)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "OSError(" not in result.stderr
    assert not out.exists()


def test_the_cli_help_is_plain_text_and_a_long_bad_symbol_is_cut() -> None:
    assert "``" not in mds("--help").stdout
    long = "A" * 500
    result = mds("price", long, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert long not in result.stderr and "(500 characters)" in result.stderr
    assert len(result.stderr) < 200


def test_stream_server_help_names_mds_and_shows_each_default_once() -> None:
    text = mds("stream-server", "--help").stdout
    assert text.startswith("usage: mds stream-server")
    assert "(default: None)" not in text and text.count("(default: random)") == 1
    from adapters.alpaca_compatible_server.__main__ import build_parser

    undocumented = [a.option_strings for a in build_parser()._actions if not a.help]
    assert undocumented == []


@pytest.mark.redis
def test_watch_shows_cached_and_live_prices_in_a_terminal(own_redis_server: RedisServer) -> None:
    """``mds watch`` under a real pseudo-terminal: the cached price at start, then live updates
    from pub/sub; Ctrl-C ends it with exit 0."""
    conn = RedisConnection(own_redis_server.url)
    cache = RedisPriceCache(conn, publish=True)
    now_ns = time.time_ns()
    cache.put_many_sync([Price("AAPL", 150.25, 150.27, 150.26, now_ns, "V")])
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDS_", "ALPACA_", "APCA_"))}
    env |= {"REDIS_URL": own_redis_server.url, "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "watch", "aapl", "MSFT"],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()

    def shows(text: bytes) -> bool:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            with contextlib.suppress(OSError):  # EIO once the child closed the terminal
                screen.extend(os.read(master, 65536))
        return text in screen

    def wait_for_screen(text: bytes, while_waiting: Callable[[], object] = lambda: None) -> None:
        deadline = time.monotonic() + 20
        while not shows(text):
            assert proc.poll() is None, f"mds watch exited early: {bytes(screen)[-500:]!r}"
            assert time.monotonic() < deadline, f"{text!r} never shown: {bytes(screen)[-500:]!r}"
            while_waiting()

    try:
        wait_for_screen(b"150.26")  # the cached price, before any update
        # The subscription starts after the first render: publish until an update shows.
        live = Price("MSFT", 300.25, 300.26, 300.255, time.time_ns(), "V")
        wait_for_screen(
            b"300.255", lambda: cache.put_many_sync([live._replace(ts_event_ns=time.time_ns())])
        )
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        shows(b"")
        assert code == 0, bytes(screen)[-1500:].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        conn.close()


def test_watch_without_redis_says_so_and_exits_3() -> None:
    with refused_port() as port:
        result = mds("watch", "AAPL", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 3
    assert "mds watch: Redis unavailable" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["price", "watch"])
def test_without_redis_url_it_says_where_the_prices_are_instead(command: str) -> None:
    result = mds(command, "AAPL")
    assert result.returncode == 2
    assert "set REDIS_URL" in result.stderr and "/prices?symbols=" in result.stderr


@pytest.mark.parametrize("command", ["price", "watch"])
def test_redis_refusing_our_password_is_a_setting_error_exit_2(
    command: str, tmp_path: Path
) -> None:
    """Redis wants a password REDIS_URL lacks (NOAUTH; on RESP3 "HELLO must be called with the
    client already authenticated"): one line ending "check REDIS_URL", exit 2, no traceback."""
    from tests.redis_servers import start_server

    server = start_server(tmp_path, extra_args=("--requirepass", "pw-not-in-the-url"))
    try:
        result = mds(command, "AAPL", env={"REDIS_URL": server.url})
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("check REDIS_URL"), lines


@pytest.mark.parametrize("command", ["price", "watch"])
def test_a_bad_redis_url_option_is_a_setting_error_exit_2(command: str) -> None:
    """``REDIS_URL=...?socket_timeout=abc``: refused as a setting (exit 2, names REDIS_URL)."""
    result = mds(command, "AAPL", env={"REDIS_URL": "redis://127.0.0.1:1/0?socket_timeout=abc"})
    assert result.returncode == 2, result.stderr
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def test_price_reads_from_a_redis_that_is_out_of_memory(own_redis_server: RedisServer) -> None:
    """Redis at maxmemory with noeviction still serves reads: ``mds price`` works (exit 1 for
    the missing symbol, no traceback)."""
    with own_redis_server.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")
    result = mds("price", "OOMSYM", env={"REDIS_URL": own_redis_server.url})
    assert result.returncode == 1, result.stderr
    assert "OOMSYM: no price" in result.stderr and "Traceback" not in result.stderr
