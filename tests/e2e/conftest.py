"""End-to-end tests: the service as a real process against the local Alpaca-compatible server
and real redis-server processes started by the tests."""

from __future__ import annotations

from tests.redis_servers import own_redis_server, redis_server  # noqa: F401  (fixtures)
