"""In-memory adapters for every port: complete enough to run the whole service with no network,
and the fakes the use-case tests assert on (their state, not their calls)."""

from adapters.memory.event_bus import InMemoryEventBus, RecordingEventBus
from adapters.memory.feed import ScriptedQuoteFeed
from adapters.memory.position_source import StaticPositionSource
from adapters.memory.price_cache import InMemoryPriceCache

__all__ = [
    "InMemoryEventBus",
    "InMemoryPriceCache",
    "RecordingEventBus",
    "ScriptedQuoteFeed",
    "StaticPositionSource",
]
