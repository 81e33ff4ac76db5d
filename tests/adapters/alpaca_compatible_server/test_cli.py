"""``python -m adapters.alpaca_compatible_server`` as a real process: URL on stdout, serves,
stops cleanly on SIGINT and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from anyio.abc import Process
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[3]
SERVER = [sys.executable, "-m", "adapters.alpaca_compatible_server"]


async def read_line(process: Process) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive(1)
        line += chunk
    return line.decode().strip()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_cli_prints_the_url_serves_and_stops_cleanly(signum: signal.Signals) -> None:
    args = ["--port", "0", "--rate", "500", "--batch", "5", "--key", "PKCLI:s3cret"]
    process = await anyio.open_process([*SERVER, *args], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        with anyio.fail_after(10):
            url = await read_line(process)
            assert url.startswith("ws://127.0.0.1:")
            async with open_websocket_url(url + "/v2/iex") as ws:
                assert orjson.loads(await ws.get_message())[0]["msg"] == "connected"
                auth = {"action": "auth", "key": "PKCLI", "secret": "s3cret"}
                await ws.send_message(orjson.dumps(auth).decode())
                assert orjson.loads(await ws.get_message())[0]["msg"] == "authenticated"
                sub = {"action": "subscribe", "quotes": ["AAPL"]}
                await ws.send_message(orjson.dumps(sub).decode())
                assert orjson.loads(await ws.get_message())[0]["T"] == "subscription"
                frame = orjson.loads(await ws.get_message())
                assert len(frame) == 5 and frame[0]["S"] == "AAPL"
                process.send_signal(signum)
                assert await process.wait() == 0
        assert process.stderr is not None
        logged = (await process.stderr.receive(65536)).decode()
        assert "s3cret" not in logged  # secrets never reach the log
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await process.aclose()


def test_help_lists_the_options() -> None:
    done = subprocess.run(
        [*SERVER, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    for option in ("--port", "--rate", "--batch", "--drop-after-messages", "--http-429"):
        assert option in done.stdout


def test_bad_arguments_exit_with_usage() -> None:
    done = subprocess.run(
        [*SERVER, "--batch", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "batch must be at least 1" in done.stderr
