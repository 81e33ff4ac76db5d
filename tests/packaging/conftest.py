"""Packaging tests may use real redis-server processes (see tests/redis_servers.py)."""

from __future__ import annotations

from tests.redis_servers import own_redis_server, redis_server  # noqa: F401  (fixtures)
