"""pytest fixtures for real redis-server processes: standalone, a three-master cluster (also
with one replica per master), and Sentinel. The processes themselves are started by
:mod:`entrypoints.testbed.redis_servers` (shared with the benchmarks and the chaos soak); this
module re-exports its names.

Use the fixtures from a ``conftest.py``::

    from tests.redis_servers import redis_server, redis_cluster  # noqa: F401  (fixtures)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.testbed.redis_servers import (
    CLUSTER_BUS_OFFSET,
    SHARED_REDIS_PORT,
    START_TIMEOUT_S,
    RedisClusterHandle,
    RedisSentinelHandle,
    RedisServer,
    RedisServerError,
    RedisServerExited,
    cleanup_dir,
    free_port,
    start_cluster,
    start_sentinel,
    start_server,
)

# -- pytest fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone server for the session. Tests share it: use distinct symbols (or flush)."""
    server = start_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, for tests that kill or restart it."""
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    """A three-master cluster for the session."""
    cluster = start_cluster(3, tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterHandle]:
    """A three-master cluster of the test's own, for tests that kill or restart nodes."""
    cluster = start_cluster(3, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster_with_replicas(tmp_path: Path) -> Iterator[RedisClusterHandle]:
    """Three masters with one replica each and a 1 s node timeout: a killed master is failed
    over to its replica in about 2 s."""
    cluster = start_cluster(3, tmp_path, replicas=1, node_timeout_ms=1000)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelHandle]:
    """A master with one sentinel for the session."""
    handle = start_sentinel(directory=tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield handle
    finally:
        handle.stop()


__all__ = [
    "CLUSTER_BUS_OFFSET",
    "SHARED_REDIS_PORT",
    "START_TIMEOUT_S",
    "RedisClusterHandle",
    "RedisSentinelHandle",
    "RedisServer",
    "RedisServerError",
    "RedisServerExited",
    "cleanup_dir",
    "free_port",
    "own_redis_cluster",
    "own_redis_cluster_with_replicas",
    "own_redis_server",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
    "start_cluster",
    "start_sentinel",
    "start_server",
]
