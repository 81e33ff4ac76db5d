"""``open_redis_store``: the service's Redis, built from settings, as one async context manager.

The entrypoint passes already-parsed settings (URL, mode, sentinels, master name); nothing here
reads the environment. The store's ``cache`` and ``bus`` share one connection, so the bus
recognises batches the cache already published (see :mod:`adapters.redis.price_cache`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from adapters.redis.connection import RedisConnection, RedisMode, RedisOptions
from adapters.redis.event_bus import RedisEventBus
from adapters.redis.price_cache import DEFAULT_KEY_PREFIX, DEFAULT_TTL_S, RedisPriceCache
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S
from ports.event_bus import PRICE_CHANNEL_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class RedisPriceStore:
    """The Redis side of the service: ``cache`` (PriceCache) and ``bus`` (EventBus) on one
    ``connection``. With ``cache.publish`` true (the default of :func:`open_redis_store`),
    ``cache.put_many`` writes and publishes in one server call and ``bus.publish_many`` of its
    result is a no-op; the application code is the same either way."""

    connection: RedisConnection
    cache: RedisPriceCache
    bus: RedisEventBus


@asynccontextmanager
async def open_redis_store(
    url: str | None,
    *,
    mode: RedisMode | str = RedisMode.STANDALONE,
    sentinels: Sequence[str | tuple[str, int]] = (),
    master_name: str | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    channel_prefix: str = PRICE_CHANNEL_PREFIX,
    publish_in_cache: bool = True,
    require_connection: bool = False,
    options: RedisOptions | None = None,
    subscriber_buffer: int = 10_000,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> AsyncIterator[RedisPriceStore]:
    """Build the client, check connectivity, yield the store, close every connection on exit.

    When Redis does not answer at start-up this logs a warning and yields anyway (the service
    starts degraded; each call raises ``ConnectionError`` until Redis is back), unless
    ``require_connection`` is true: then it raises ``ConnectionError``. Raises ``ValueError``
    for a malformed URL or incomplete Sentinel settings.
    """
    connection = RedisConnection(
        url, mode=RedisMode(mode), sentinels=sentinels, master_name=master_name, options=options
    )
    try:
        try:
            await connection.ping()
        except ConnectionError as e:
            if require_connection:
                raise
            log.warning(
                "redis at %s (%s) is not reachable at start-up, starting degraded: %s",
                connection.redacted_url,
                connection.mode.value,
                e,
            )
        cache = RedisPriceCache(
            connection,
            ttl_s=ttl_s,
            key_prefix=key_prefix,
            channel_prefix=channel_prefix,
            publish=publish_in_cache,
            max_future_skew_s=max_future_skew_s,
        )
        bus = RedisEventBus(
            connection,
            channel_prefix=channel_prefix,
            key_prefix=key_prefix,
            buffer=subscriber_buffer,
        )
        yield RedisPriceStore(connection, cache, bus)
    finally:
        connection.close()
