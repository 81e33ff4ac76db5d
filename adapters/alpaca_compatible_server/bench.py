"""Throughput of the server: how many quotes/s it pushes to one receive-only client.

``python -m adapters.alpaca_compatible_server.bench [--batch 10 100] [--format json msgpack]``

Starts the server as a separate process (by default ``--rate 0``: as fast as the socket takes
frames; ``--rate N`` checks that the pacing holds N messages/s), connects one client that
authenticates, subscribes to ``--symbols`` quote symbols and then only receives, and reports
frames/s and quotes/s per combination, plus the server process's CPU share when ``psutil`` is
installed. Two clients:

- ``ws``: trio-websocket's ``get_message`` (no decoding), with its default 4 KiB reads and with
  trio's default; what a trio-websocket consumer can take.
- ``raw``: a blocking socket that only walks the WebSocket frame headers in 1 MiB reads: far
  cheaper than the server, so this measures the server's own ceiling.

Client and server share the machine's cores; other load on it shows in the numbers.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import orjson
import trio
from trio_websocket import open_websocket_url


async def _measure(
    url: str, fmt: str, batch: int, symbols: int, seconds: float, receive_buffer: int | None
) -> tuple[float, float]:
    headers = [(b"Content-Type", b"application/msgpack")] if fmt == "msgpack" else []

    def encode(message: dict[str, Any]) -> str | bytes:
        if fmt == "msgpack":
            packed: bytes = msgpack.packb(message)
            return packed
        return orjson.dumps(message).decode()

    names = [f"S{i:04d}" for i in range(symbols)]
    async with open_websocket_url(
        url + "/v2/iex", extra_headers=headers, receive_buffer_size=receive_buffer
    ) as ws:
        await ws.get_message()  # connected
        await ws.send_message(encode({"action": "auth", "key": "bench", "secret": "bench"}))
        await ws.get_message()  # authenticated
        await ws.send_message(encode({"action": "subscribe", "quotes": names}))
        await ws.get_message()  # ack
        for _ in range(2000 // batch + 10):  # warm up
            await ws.get_message()
        frames = 0
        get = ws.get_message
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(50):
                await get()
            frames += 50
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - started
    return frames / elapsed, frames * batch / elapsed


def _measure_raw(
    url: str, fmt: str, batch: int, symbols: int, seconds: float
) -> tuple[float, float]:
    host, _, port = url.removeprefix("ws://").rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port))) as sock:
        content = b"Content-Type: application/msgpack\r\n" if fmt == "msgpack" else b""
        sock.sendall(
            b"GET /v2/iex HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + content + b"\r\n"
        )
        buf = bytearray()
        while b"connected" not in buf:  # the 101 response, then [{"T":"success",...}]
            buf += sock.recv(65536)
        buf.clear()  # nothing else comes before auth
        names = [f"S{i:04d}" for i in range(symbols)]
        for action in (
            {"action": "auth", "key": "bench", "secret": "bench"},
            {"action": "subscribe", "quotes": names},
        ):
            sock.sendall(_client_text_frame(orjson.dumps(action)))
        first_byte = 0x82 if fmt == "msgpack" else 0x81  # final frame, binary or text
        frames = skip = 0
        warm_until = time.perf_counter() + 0.5
        started = 0.0
        frames_at_start = 0
        while True:
            now = time.perf_counter()
            if not started and now >= warm_until:
                started, frames_at_start = now, frames
            elif started and now - started >= seconds:
                break
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            if skip >= len(data):
                skip -= len(data)
                continue
            buf += memoryview(data)[skip:]
            skip = pos = 0
            size = len(buf)
            while pos + 2 <= size:  # walk the frame headers (servers do not mask)
                if buf[pos] != first_byte:
                    raise ValueError(f"lost track of the frames at {bytes(buf[pos : pos + 8])!r}")
                length, header = buf[pos + 1] & 0x7F, 2
                if length >= 126:
                    header = 4 if length == 126 else 10
                    if pos + header > size:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + header], "big")
                frames += 1
                pos += header + length
            if pos > size:
                skip, pos = pos - size, size
            del buf[:pos]
        elapsed = time.perf_counter() - started
    counted = frames - frames_at_start
    return counted / elapsed, counted * batch / elapsed


def _client_text_frame(payload: bytes) -> bytes:
    # Clients must mask; a zero mask key leaves the payload as it is.
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


def _cpu_seconds(pid: int) -> float | None:
    try:
        import psutil  # optional: the "bench" extra
    except ImportError:
        return None
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_one(
    fmt: str,
    batch: int,
    symbols: int,
    seconds: float,
    client: str,
    receive_buffer: int | None = None,
    rate: float = 0.0,
) -> str:
    cmd = [
        sys.executable,
        "-m",
        "adapters.alpaca_compatible_server",
        "--port",
        "0",
        "--rate",
        str(rate),
        "--batch",
        str(batch),
        "--bar-interval",
        "0",
        "--log-level",
        "WARNING",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        cpu0 = _cpu_seconds(server.pid)
        wall0 = time.perf_counter()
        if client == "raw":
            frames_s, quotes_s = _measure_raw(url, fmt, batch, symbols, seconds)
        else:
            frames_s, quotes_s = trio.run(
                _measure, url, fmt, batch, symbols, seconds, receive_buffer
            )
        cpu1 = _cpu_seconds(server.pid)
        wall = time.perf_counter() - wall0
    finally:
        server.terminate()
        server.wait(timeout=10)
    cpu = "" if cpu0 is None or cpu1 is None else f"  server CPU {100 * (cpu1 - cpu0) / wall:.0f}%"
    if client == "raw":
        label = "raw socket"
    else:
        label = f"trio-websocket, {'4 KiB' if receive_buffer == 4096 else 'trio'} reads"
    return (
        f"{fmt:7} batch {batch:3}  {label:29}  "
        f"{frames_s:10,.0f} frames/s  {quotes_s:12,.0f} quotes/s{cpu}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.alpaca_compatible_server.bench", description=__doc__
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--format", nargs="+", choices=["json", "msgpack"], default=["json", "msgpack"]
    )
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="server --rate (0: as fast as possible)"
    )
    parser.add_argument(
        "--client",
        nargs="+",
        choices=["ws-4k", "ws", "raw"],
        default=["ws-4k", "ws", "raw"],
        help="trio-websocket with 4 KiB reads (its default) or trio's default reads; raw socket",
    )
    args = parser.parse_args(argv)
    for fmt in args.format:
        for batch in args.batch:
            for client in args.client:
                buffer = 4096 if client == "ws-4k" else None
                kind = "raw" if client == "raw" else "ws"
                line = run_one(fmt, batch, args.symbols, args.seconds, kind, buffer, args.rate)
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
