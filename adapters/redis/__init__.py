"""Redis adapters: PriceCache and EventBus on redis-py's sync client (worker threads, one hop per
batch), the service's store factory, and PriceReader for consumer services.

Standalone, Sentinel and Cluster; see each module's docstring for the design."""

from adapters.redis.connection import RedisConnection, RedisMode, RedisOptions, RedisUnavailable
from adapters.redis.event_bus import RedisEventBus
from adapters.redis.price_cache import AppliedPrices, RedisPriceCache
from adapters.redis.reader import PriceReader, SubscriptionGap
from adapters.redis.store import RedisPriceStore, open_redis_store

__all__ = [
    "AppliedPrices",
    "PriceReader",
    "RedisConnection",
    "RedisEventBus",
    "RedisMode",
    "RedisOptions",
    "RedisPriceCache",
    "RedisPriceStore",
    "RedisUnavailable",
    "SubscriptionGap",
    "open_redis_store",
]
