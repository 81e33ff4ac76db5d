"""/health and /ready through the REAL view of a service (``entrypoints/view.py``), not a fake.

``tests/entrypoints/test_http_api.py`` drives the routes with a FakeView whose answers the test
sets, so the rules that turn a service's state into FAILED / STANDBY / DEGRADED and into
``ready`` only ran in the subprocess tiers. Here the state is set on a real MarketDataService
(in-memory adapters, not started) and read back through ``ServiceViewAdapter`` and the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.clock import SystemClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from application.service import MarketDataService, ServiceConfig
from application.status import Role, StoreState
from domain.connection import ConnectionState
from entrypoints.http_api import create_app
from entrypoints.view import ServiceViewAdapter


@pytest.fixture
async def service() -> MarketDataService:
    clock = SystemClock()
    return MarketDataService(
        ScriptedQuoteFeed(clock),
        InMemoryPriceCache(clock, ttl_s=300.0),
        InMemoryEventBus(),
        clock,
        ServiceConfig(static_symbols=frozenset({"AAPL"})),
    )


@pytest.fixture
async def client(service: MarketDataService) -> AsyncIterator[httpx.AsyncClient]:
    view = ServiceViewAdapter(service, store="redis", max_age_s=300.0)
    transport = httpx.ASGITransport(app=create_app(view))
    async with httpx.AsyncClient(transport=transport, base_url="http://mds.test") as c:
        yield c


async def probe(client: httpx.AsyncClient) -> tuple[dict[str, Any], int, dict[str, Any]]:
    health = await client.get("/health")
    ready = await client.get("/ready")
    assert health.status_code == 200  # /health always answers 200
    return health.json(), ready.status_code, ready.json()


async def test_a_fatal_feed_error_reads_failed_and_not_ready(
    service: MarketDataService, client: httpx.AsyncClient
) -> None:
    service.status.set_state(ConnectionState.FAILED)
    service.status.fatal_error = "authentication failed (code 402); check ALPACA_API_KEY"
    health, ready_code, ready = await probe(client)
    assert health["status"] == "failed"
    assert health["ready"] is False and ready_code == 503 and ready["ready"] is False
    assert ready["status"] == "failed"
    assert "check ALPACA_API_KEY" in health["detail"]
    assert health["websocket_connected"] is False


async def test_a_standby_reads_healthy_but_not_ready(
    service: MarketDataService, client: httpx.AsyncClient
) -> None:
    service.status.role = Role.STANDBY
    health, ready_code, ready = await probe(client)
    assert health["role"] == "standby"
    assert health["status"] == "healthy"  # standing by is its job, not a fault
    assert ready_code == 503 and ready["ready"] is False  # but it does not stream
    assert health["detail"].startswith("standby")


async def test_a_standby_whose_store_is_down_reads_degraded(
    service: MarketDataService, client: httpx.AsyncClient
) -> None:
    """The lease polls' error, as the election records it, is what the operator reads: not
    the plain "standby" line of a healthy standby."""
    service.status.role = Role.STANDBY
    service.status.store = StoreState.DEGRADED
    service.status.store_error = "Connection refused"
    health, ready_code, _ = await probe(client)
    assert health["status"] == "degraded" and ready_code == 503
    assert health["redis"] == "degraded"
    assert health["detail"] == "standby: redis degraded: Connection refused"


async def test_a_leader_with_the_store_down_reads_degraded_and_not_ready(
    service: MarketDataService, client: httpx.AsyncClient
) -> None:
    for state in (ConnectionState.CONNECTING, ConnectionState.AUTHENTICATING):
        service.status.set_state(state)
    service.status.set_state(ConnectionState.CONNECTED)  # the feed is fine: only the store is not
    service.status.store = StoreState.DEGRADED
    service.status.store_error = "Connection refused"
    health, ready_code, ready = await probe(client)
    assert health["websocket_connected"] is True
    assert health["status"] == "degraded"
    assert health["redis"] == "degraded"
    assert ready_code == 503 and ready["status"] == "degraded"
    assert health["detail"] == "price store unavailable: Connection refused"


async def test_a_leader_not_connected_reads_degraded_with_the_feed_state(
    service: MarketDataService, client: httpx.AsyncClient
) -> None:
    service.status.set_state(ConnectionState.CONNECTING)
    health, ready_code, _ = await probe(client)
    assert health["status"] == "degraded" and ready_code == 503
    assert health["connection_state"] == "connecting"
    assert health["detail"] == "feed connecting"
