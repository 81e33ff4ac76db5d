"""The benchmark's Redis subscriber (and its load generator): one cheap process, no event loop.

``python -m entrypoints.bench.subscriber --port PORT`` PSUBSCRIBEs ``price.updated.*`` over a raw
socket, parses replies with ``hiredis.Reader`` and, for every price it receives:

- latency = receive time (``time.time_ns()``, taken once per socket read) minus the price's
  ``timestamp`` (the stream server's send time, RFC 3339 with up to 9 fraction digits);
- exactness: ``mid`` must be the exact decimal midpoint of ``bid`` and ``ask``, i.e.
  ``Decimal(repr(mid)) == (Decimal(repr(bid)) + Decimal(repr(ask))) / 2`` (verdicts cached per
  (bid, ask, mid), the stream repeats its prices);
- order: per symbol, a timestamp older than the last one received is a violation.

It is driven by one-line commands on stdin and answers one JSON line on stdout each:
``count`` -> ``{"received": n}``; ``mark`` -> ``{"mark": i, "ns": t, "received": n}`` (the
throughput and latency window is from mark 0 to mark 1); ``report`` -> the full results, then it
exits. It prints ``{"subscribed": true}`` once Redis confirmed the subscription. EOF on stdin ends
it quietly.

``--publish`` turns it into the load generator of the harness floors: pipelined PUBLISHes of
realistic price JSON for ``--seconds``, as fast as Redis takes them (the subscriber's capacity)
or at ``--rate`` prices/s freshly stamped (the latency floor of Redis pub/sub plus this
subscriber), then it prints ``{"published": n}``.
"""

from __future__ import annotations

import argparse
import array
import os
import re
import selectors
import socket
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

import hiredis
import orjson

from domain.timestamps import format_ns, parse_rfc3339_ns

PATTERN: Final = "price.updated.*"
_RECV_BYTES: Final = 1 << 20
_MAX_EXAMPLES: Final = 5
_MAX_VERDICTS: Final = 1_000_000
_BACKLOG_CHECK_EVERY: Final = 10  # pipelines between two looks at the subscriber's backlog
_MAX_BACKLOG_BYTES: Final = 16 << 20


def _pack(*parts: str | bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def percentile(sorted_values: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return float(sorted_values[min(len(sorted_values), int(rank)) - 1])


class Checker:
    """Counts, latencies and the exactness and order checks of every received price."""

    def __init__(self) -> None:
        self.received = 0
        self.latencies = array.array("q")
        self.exact_violations = 0
        self.order_violations = 0
        self.bad_messages = 0
        self.examples: list[str] = []
        self._verdicts: dict[tuple[float, float, float], bool] = {}
        self._last_ts: dict[str, int] = {}
        self._ts_text = ""
        self._ts_ns = 0

    def _example(self, text: str) -> None:
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(text)

    def _exact(self, bid: float, ask: float, mid: float) -> bool:
        key = (bid, ask, mid)
        verdict = self._verdicts.get(key)
        if verdict is None:
            exact = (Decimal(repr(bid)) + Decimal(repr(ask))) / 2
            verdict = Decimal(repr(mid)) == exact
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def on_price(self, payload: bytes, now_ns: int) -> None:
        self.received += 1
        try:
            obj = orjson.loads(payload)
            symbol = obj["symbol"]
            bid = obj["bid"]
            ask = obj["ask"]
            mid = obj["mid"]
            text = obj["timestamp"]
            if text == self._ts_text:
                ts = self._ts_ns
            else:
                ts = parse_rfc3339_ns(text)
                self._ts_text = text
                self._ts_ns = ts
            exact = self._exact(float(bid), float(ask), float(mid))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            self.bad_messages += 1
            self._example(f"bad message {payload[:200]!r}: {e}")
            return
        self.latencies.append(now_ns - ts)
        if not exact:
            self.exact_violations += 1
            self._example(f"inexact mid {symbol}: bid {bid!r} ask {ask!r} mid {mid!r}")
        last = self._last_ts.get(symbol)
        if last is not None and ts < last:
            self.order_violations += 1
            self._example(f"out of order {symbol}: {text} after {format_ns(last)}")
        self._last_ts[symbol] = ts

    def report(self, marks: list[tuple[int, int, int]]) -> dict[str, Any]:
        """Totals, and throughput and latency between the first two marks (if given)."""
        out: dict[str, Any] = {
            "received": self.received,
            "symbols": len(self._last_ts),
            "exact_violations": self.exact_violations,
            "order_violations": self.order_violations,
            "bad_messages": self.bad_messages,
            "examples": self.examples,
        }
        if len(marks) >= 2:
            (t0, n0, i0), (t1, n1, i1) = marks[0], marks[1]
            window = sorted(self.latencies[i0:i1])
            seconds = (t1 - t0) / 1e9
            out.update(
                window_s=seconds,
                window_received=n1 - n0,
                throughput=(n1 - n0) / seconds if seconds > 0 else 0.0,
                latency_ms={
                    name: None if (v := percentile(window, q)) is None else v / 1e6
                    for name, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9), ("max", 100))
                },
            )
        return out


def _emit(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def subscribe(host: str, port: int, pattern: str) -> int:
    """Run the subscriber until ``report`` or EOF on stdin (see the module docstring)."""
    sock = _connect(host, port)
    sock.sendall(_pack("PSUBSCRIBE", pattern))
    reader = hiredis.Reader()
    checker = Checker()
    marks: list[tuple[int, int, int]] = []
    selector = selectors.DefaultSelector()
    sock.setblocking(False)
    stdin_fd = sys.stdin.fileno()
    selector.register(sock, selectors.EVENT_READ, "redis")
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    pending = b""
    on_price = checker.on_price
    recv = sock.recv
    gets = reader.gets
    feed = reader.feed
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "redis":
                    try:
                        data = recv(_RECV_BYTES)
                    except BlockingIOError:
                        continue
                    now = time.time_ns()
                    if not data:
                        _emit({"error": "redis closed the subscriber connection"})
                        return 1
                    feed(data)
                    while (reply := gets()) is not False:
                        if reply[0] == b"pmessage":
                            on_price(reply[3], now)
                        elif reply[0] == b"psubscribe":
                            _emit({"subscribed": True})
                    continue
                chunk = os.read(stdin_fd, 4096)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    command = line.strip().decode()
                    if command == "count":
                        _emit({"received": checker.received})
                    elif command == "mark":
                        marks.append((time.time_ns(), checker.received, len(checker.latencies)))
                        t, n, _i = marks[-1]
                        _emit({"mark": len(marks) - 1, "ns": t, "received": n})
                    elif command == "report":
                        _emit(checker.report(marks))
                        return 0
                    elif command:
                        _emit({"error": f"unknown command {command!r}"})
    finally:
        selector.close()
        sock.close()


def _price_commands(count: int, symbols: int, ts: str) -> bytes:
    commands = []
    for i in range(count):
        symbol = f"S{i % symbols:04d}"
        bid = (10_000 + i % 997) / 100
        ask = (10_000 + i % 997 + 1 + i % 5) / 100
        mid = ((10_000 + i % 997) * 2 + 1 + i % 5) / 200
        payload = (
            f'{{"symbol":"{symbol}","bid":{bid!r},"ask":{ask!r},"mid":{mid!r},'
            f'"timestamp":"{ts}","exchange":"V"}}'
        )
        commands.append(_pack("PUBLISH", f"price.updated.{symbol}", payload))
    return b"".join(commands)


def _subscriber_backlog(sock: socket.socket, reader: hiredis.Reader) -> int:
    """Bytes Redis holds for pub/sub clients (``omem`` of ``CLIENT LIST TYPE pubsub``)."""
    sock.sendall(_pack("CLIENT", "LIST", "TYPE", "pubsub"))
    while (reply := reader.gets()) is False:
        reader.feed(sock.recv(_RECV_BYTES))
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return sum(int(m) for m in re.findall(r"\bomem=(\d+)", text))


def _wait_for_backlog(sock: socket.socket, reader: hiredis.Reader, deadline: float) -> None:
    """Max-rate publishing: pause while the subscriber is more than a few MB behind, so it is
    saturated without Redis buffering an unbounded backlog (it would cut it off at the
    output-buffer limit)."""
    while _subscriber_backlog(sock, reader) > _MAX_BACKLOG_BYTES and time.monotonic() < deadline:
        time.sleep(0.001)  # the subscriber is behind: let it catch up


def publish(host: str, port: int, seconds: float, symbols: int, pipeline: int, rate: float) -> int:
    """Publish realistic prices in pipelines of ``pipeline``: as fast as Redis takes them
    (``rate`` 0, the payloads built once), or ``rate`` prices/s with each pipeline stamped
    with the current time (a latency floor for Redis pub/sub plus the subscriber)."""
    batch = _price_commands(pipeline, symbols, format_ns(time.time_ns()))
    interval = pipeline / rate if rate else 0.0
    sock = _connect(host, port)
    reader = hiredis.Reader()
    published = 0
    start = time.monotonic()
    deadline = start + seconds
    next_send = start
    rounds = 0
    try:
        while time.monotonic() < deadline:
            rounds += 1
            if not interval and rounds % _BACKLOG_CHECK_EVERY == 0:
                _wait_for_backlog(sock, reader, deadline)
            if interval:
                delay = next_send - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the load generator
                next_send += interval
                batch = _price_commands(pipeline, symbols, format_ns(time.time_ns()))
            sock.sendall(batch)
            replies = 0
            while replies < pipeline:
                reader.feed(sock.recv(_RECV_BYTES))
                while reader.gets() is not False:
                    replies += 1
            published += pipeline
    finally:
        sock.close()
    _emit({"published": published})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.bench.subscriber",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pattern", default=PATTERN)
    parser.add_argument("--publish", action="store_true", help="be the load generator instead")
    parser.add_argument("--seconds", type=float, default=5.0, help="--publish: how long")
    parser.add_argument("--symbols", type=int, default=100, help="--publish: distinct symbols")
    parser.add_argument("--pipeline", type=int, default=200, help="--publish: commands per round")
    parser.add_argument("--rate", type=float, default=0.0, help="--publish: prices/s (0: max)")
    args = parser.parse_args(argv)
    if args.port == 6379:
        parser.error("port 6379 is the machine's shared Redis: the benchmark never uses it")
    if args.publish:
        return publish(args.host, args.port, args.seconds, args.symbols, args.pipeline, args.rate)
    return subscribe(args.host, args.port, args.pattern)


if __name__ == "__main__":
    sys.exit(main())
