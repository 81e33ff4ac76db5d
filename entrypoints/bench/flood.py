"""An HTTP flood for ``mds bench --http-flood N``: N keep-alive connections, each sending
``GET PATH`` as fast as the answers come back, for ``--duration`` seconds (bounded in count of
connections and in time, loopback only). Prints one JSON line when done: requests answered by
status, the rate, and connection errors.

Run: ``python -m entrypoints.bench.flood --port 8000 --path /prices/AAPL --connections 32
--duration 10``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

import trio

_MAX_CONNECTIONS = 1_000
_MAX_DURATION_S = 600.0


async def _one(port: int, request: bytes, counts: Counter[str], deadline: float) -> None:
    while trio.current_time() < deadline:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            counts["connect_errors"] += 1
            await trio.sleep(0.05)
            continue
        async with stream:
            buffer = b""
            try:
                while trio.current_time() < deadline:
                    await stream.send_all(request)
                    while b"\r\n\r\n" not in buffer:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            raise trio.BrokenResourceError("closed")
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    status = head.split(b" ", 2)[1].decode()
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buffer) < length:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            raise trio.BrokenResourceError("closed")
                        buffer += chunk
                    buffer = buffer[length:]
                    counts[status] += 1
                    if b"connection: close" in head.lower():
                        break
            except (trio.BrokenResourceError, OSError, ValueError, IndexError):
                counts["connection_errors"] += 1


async def flood(port: int, path: str, connections: int, duration_s: float) -> dict[str, object]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    counts: Counter[str] = Counter()
    start = trio.current_time()
    deadline = start + duration_s
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_one, port, request, counts, deadline)
    elapsed = trio.current_time() - start
    answered = sum(v for k, v in counts.items() if k.isdigit())
    return {
        "connections": connections,
        "seconds": round(elapsed, 3),
        "answered": answered,
        "rps": round(answered / elapsed, 1) if elapsed > 0 else 0.0,
        "by_status": {k: v for k, v in sorted(counts.items()) if k.isdigit()},
        "errors": {k: v for k, v in counts.items() if not k.isdigit()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.bench.flood", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/prices/AAPL")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= _MAX_CONNECTIONS or not 0 < args.duration <= _MAX_DURATION_S:
        parser.error(f"1 <= --connections <= {_MAX_CONNECTIONS}, 0 < --duration <= 600")
    summary = trio.run(flood, args.port, args.path, args.connections, args.duration)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
