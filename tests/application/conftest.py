"""Use-case tests: in-memory adapters and trio's MockClock with autojump (virtual time)."""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from adapters.clock import VirtualClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def feed(clock: VirtualClock) -> ScriptedQuoteFeed:
    return ScriptedQuoteFeed(clock)


@pytest.fixture
def cache(clock: VirtualClock) -> InMemoryPriceCache:
    return InMemoryPriceCache(clock, ttl_s=300.0)


@pytest.fixture
def bus() -> InMemoryEventBus:
    return InMemoryEventBus()
