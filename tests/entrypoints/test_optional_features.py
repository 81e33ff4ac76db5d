"""Optional features fail alone, in the running service (issue 11): the HTTP API's server dying
mid-run, and the metrics scrape failing (a port taken at start-up: test_service.py)."""

from __future__ import annotations

import os
import socket

import anyio
import httpx
import pytest

from domain.features import HTTP_API, METRICS
from entrypoints.metrics import MetricsSnapshot
from entrypoints.service import Running, run
from entrypoints.settings import load_settings
from tests.conditions import wait_for
from tests.entrypoints.test_service import EMBEDDED


def break_listener(port: int) -> int:
    """Shut down this process's listening socket on ``port`` (its accept then fails with
    EINVAL, which ends hypercorn's serve loop): the HTTP API's server task dies."""
    broken = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if listening and sock.getsockname()[1] == port:
                sock.shutdown(socket.SHUT_RDWR)
                broken += 1
        except OSError:
            pass
        finally:
            sock.close()
    return broken


async def test_the_http_api_dying_mid_run_is_restarted_and_prices_flow() -> None:
    """Before: the server task's OSError ended the service's task group (prices stopped)."""
    settings = load_settings(EMBEDDED)
    async with anyio.create_task_group() as tg:
        running: Running = await tg.start(run, settings)
        service = running.service
        features = service.status.features
        url = running.http_urls[0]
        assert break_listener(int(url.rsplit(":", 1)[1])) == 1
        await wait_for(lambda: features.failures[HTTP_API] == 1, timeout_s=5)
        written = service.status.counters["prices_written"]
        await wait_for(lambda: service.status.counters["prices_written"] >= written + 20)
        await wait_for(lambda: HTTP_API not in features.failing, timeout_s=10)
        async with httpx.AsyncClient(base_url=url) as client:  # the same address again
            health = (await client.get("/health")).json()
        assert health["status"] == "healthy" and health["websocket_connected"] is True
        tg.cancel_scope.cancel()


async def test_a_failing_metrics_scrape_serves_the_last_counters_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(EMBEDDED)
    async with anyio.create_task_group() as tg:
        running: Running = await tg.start(run, settings)
        status = running.service.status
        async with httpx.AsyncClient(base_url=running.http_urls[0]) as client:
            assert (await client.get("/metrics")).status_code == 200

            def broken(*args: object, **kwargs: object) -> MetricsSnapshot:
                raise RuntimeError("counter store corrupted")

            monkeypatch.setattr(MetricsSnapshot, "from_status", broken)
            answer = await client.get("/metrics")
            assert answer.status_code == 200
            assert 'mds_feature_failing{feature="metrics"} 1.0' in answer.text
            assert "mds_prices_written_total" in answer.text  # the last counters
            health = (await client.get("/health")).json()
            assert health["status"] == "degraded" and "metrics failing" in health["detail"]
            written = status.counters["prices_written"]
            await wait_for(lambda: status.counters["prices_written"] >= written + 20)
            monkeypatch.undo()
            answer = await client.get("/metrics")
            assert 'mds_feature_failing{feature="metrics"} 0.0' in answer.text
            assert METRICS not in status.features.failing
        tg.cancel_scope.cancel()
