"""Test charter for market-data-service.

Tiers (each a folder):
- ``tests/domain``: pure and synchronous; property tests (hypothesis) for the mid, the diff and
  the backoff bounds.
- ``tests/application``: the use cases on the in-memory adapters only (no sockets, no threads),
  under trio's MockClock with autojump: every backoff, sync interval and timeout runs in virtual
  time, and time is asserted through the clock. Each test sits under a ``fail_after`` guard.
- ``tests/adapters``: each adapter against the real thing on loopback (WebSocket servers,
  redis-server processes the session starts on free ports), plus one contract suite run against
  both the fake and the real adapter, so the fakes stay honest.
- ``tests/entrypoints`` and ``tests/e2e``: settings, the HTTP API, and the service as a real
  process against the local Alpaca-compatible server and a real Redis.

Every price a test reads from Redis or the HTTP API is validated against the shipped JSON
Schema (``domain/price.schema.json``): automatically for reads through the adapters (the autouse
fixture below), explicitly with ``tests/price_contract.py`` for raw reads and HTTP bodies.

Rules: no real-time sleep as synchronisation (wait on a condition, or use the MockClock); tests
that start processes stop them, also on failure; nothing touches the machine's shared Redis.
This root conftest runs async tests on trio with the real clock; ``tests/application`` and
``tests/domain`` switch to the MockClock.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from domain.price import Price
from tests.price_contract import validating_from_json

# scripts/mutation.sh runs the fast tiers once per mutant: fewer, reproducible examples there
# (the explicit @examples still run), so a verdict does not depend on what hypothesis drew.
settings.register_profile("mutation", max_examples=30, derandomize=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture(autouse=True)
def prices_fit_the_schema(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every price a test reads through the adapters (cache, bus, reader) is validated against
    the shipped JSON Schema (``tests/price_contract.py``). A test about records that break the
    schema on purpose opts out with ``@pytest.mark.off_contract_prices``."""
    if request.node.get_closest_marker("off_contract_prices") is None:
        checked = staticmethod(validating_from_json(Price.from_json))
        monkeypatch.setattr(Price, "from_json", checked)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshot",
        action="store",
        default=None,
        metavar="PATH",
        help="the live-page browser test saves a PNG of the page there (for a reviewer to look at)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The benchmark tier (``@pytest.mark.bench``: wall-clock rates and latencies, several
    processes) runs only when asked for (``pytest -m bench``): on a shared 2-core machine its
    numbers say more about the neighbours than about the code, so the ordinary tiers stay
    free of wall-clock thresholds."""
    if "bench" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="benchmark tier: run with -m bench")
    for item in items:
        if item.get_closest_marker("bench") is not None:
            item.add_marker(skip)
