"""Redis adapter tests: real redis-server processes on free ports (see tests/redis_servers.py).

Session-scoped servers are shared (tests use distinct symbols); tests that kill, pause or
restart a server get one of their own (``own_redis_server``).
"""

from __future__ import annotations

from tests.redis_servers import (  # noqa: F401  (fixtures)
    own_redis_cluster,
    own_redis_server,
    redis_cluster,
    redis_sentinel,
    redis_server,
)
