"""Fault-injection suite (issue 7): the service as a real process, against the in-process
Alpaca-compatible server (live fault switches) and redis-server processes of its own.

Charter: every test is marked ``fault``, says in its docstring what it checks, waits on
conditions under deadlines (``/health``, ``/metrics``, ``server.wait_until``, Redis state),
never on blind sleeps, and stops every process, server and thread it starts, also on failure.
Run: ``.venv/bin/python -m pytest tests/fault -q -m fault``.
"""

from __future__ import annotations

from tests.redis_servers import (  # noqa: F401  (fixtures)
    own_redis_cluster,
    own_redis_cluster_with_replicas,
    own_redis_server,
    redis_server,
)
