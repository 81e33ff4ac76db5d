"""Many ``/prices/stream`` clients in one process (for ``python -m entrypoints.bench.sse``).

``--clients N --path /prices/stream?... --port P``: opens N connections, sends the request on
each and reads everything that arrives (non-blocking sockets, one selector), counting events.
Prints ``{"connected": N}`` once every client has its 200 response, then on each line of stdin
(``count``) ``{"events": E, "bytes": B, "open": K}``; exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import threading
from collections.abc import Sequence


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.bench.sse_clients")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--path", default="/prices/stream")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="client i asks for ?symbols=IDLE{i} (a symbol nobody quotes)",
    )
    args = parser.parse_args(argv)

    sel = selectors.DefaultSelector()
    state = {"events": 0, "bytes": 0, "open": 0, "ok": 0}
    lock = threading.Lock()
    for i in range(args.clients):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        path = f"/prices/stream?symbols=IDLE{i}" if args.distinct else args.path
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        sock.sendall(request.encode())
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, data={"head": b"", "ok": False})
        state["open"] += 1

    def answer_commands() -> None:
        for line in sys.stdin:
            if line.strip() == "count":
                with lock:
                    _emit({k: state[k] for k in ("events", "bytes", "open")})
        os._exit(0)

    threading.Thread(target=answer_commands, daemon=True).start()
    announced = False
    while True:
        for key, _ in sel.select(timeout=1.0):
            conn = key.fileobj
            if not isinstance(conn, socket.socket):
                continue
            try:
                data = conn.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            with lock:
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    state["open"] -= 1
                    continue
                state["bytes"] += len(data)
                state["events"] += data.count(b"\ndata: ")
                if not key.data["ok"]:
                    key.data["head"] += data
                    if b"\r\n\r\n" in key.data["head"]:
                        key.data["ok"] = True
                        if key.data["head"].startswith(b"HTTP/1.1 200"):
                            state["ok"] += 1
        if not announced and state["ok"] == args.clients:
            announced = True
            _emit({"connected": state["ok"]})


if __name__ == "__main__":
    sys.exit(main())
