"""The HTTP concurrency bound (MDS_HTTP_MAX_CONCURRENCY), as ASGI middleware over a fake app,
in virtual time: requests past the limit wait (not runnable), a full queue or a long wait is
a quick 503, probes have their own slots, the live stream is not counted."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
import trio.testing

from entrypoints.http_limit import ConcurrencyLimit


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


class SlowApp:
    """Answers 200 after ``hold_s``; counts how many run at once."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.running = 0
        self.peak = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(self.hold_s)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.running -= 1


async def call(app: ConcurrencyLimit, path: str, statuses: list[tuple[int, float]]) -> None:
    start = anyio.current_time()
    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await app({"type": "http", "path": path}, receive, send)
    statuses.append((status, anyio.current_time() - start))


async def test_past_the_limit_requests_wait_then_a_full_queue_is_a_quick_503() -> None:
    inner = SlowApp(hold_s=0.01)
    counters: Counter[str] = Counter()
    app = ConcurrencyLimit(inner, 2, counters, max_wait_s=1.0)
    statuses: list[tuple[int, float]] = []
    async with anyio.create_task_group() as tg:
        for _ in range(2 + 32 + 5):  # 2 run, 32 wait (16 x 2), 5 turned away at once
            tg.start_soon(call, app, "/prices/AAPL", statuses)
    assert inner.peak == 2
    ok = [t for s, t in statuses if s == 200]
    busy = [t for s, t in statuses if s == 503]
    assert len(ok) == 34 and len(busy) == 5
    assert all(t == 0 for t in busy)  # quick: no waiting for the turned-away
    assert max(ok) == pytest.approx(0.17)  # 17 rounds of two, well within the 1 s wait
    assert counters["http_rejected"] == 5


async def test_a_wait_longer_than_max_wait_is_a_503() -> None:
    inner = SlowApp(hold_s=5.0)
    app = ConcurrencyLimit(inner, 1, max_wait_s=1.0)
    statuses: list[tuple[int, float]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/prices/AAPL", statuses)
        await anyio.sleep(0.01)
        tg.start_soon(call, app, "/prices/MSFT", statuses)
    (ok, ok_s), (busy, busy_s) = sorted(statuses)
    assert (ok, busy) == (200, 503)
    assert ok_s == pytest.approx(5.0) and busy_s == pytest.approx(1.0)
    assert app.in_flight == 0


async def test_probes_have_their_own_slots_and_the_stream_is_not_counted() -> None:
    inner = SlowApp(hold_s=1.0)
    app = ConcurrencyLimit(inner, 1, max_wait_s=0.1)
    statuses: list[tuple[int, float]] = []
    async with anyio.create_task_group() as tg:
        for _ in range(18):  # 1 runs, 16 wait and time out, 1 turned away
            tg.start_soon(call, app, "/prices/AAPL", statuses)
        await anyio.sleep(0.01)
        tg.start_soon(call, app, "/health", statuses)
        for _ in range(3):
            tg.start_soon(call, app, "/prices/stream", statuses)
    assert [s for s, _ in statuses].count(200) == 1 + 1 + 3
    assert inner.peak == 5
