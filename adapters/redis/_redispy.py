"""Typed doors into the parts of redis-py's sync API that carry no annotations.

mypy --strict refuses calls to untyped functions; rather than scattering ignores, every such
call goes through one small function here with the type we rely on.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline, PubSub
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.connection import parse_url as _parse_url
from redis.sentinel import Sentinel


def parse_url(url: str) -> dict[str, Any]:
    parsed: dict[str, Any] = _parse_url(url)  # type: ignore[no-untyped-call]
    return parsed


def sentinel(addresses: list[tuple[str, int]], sentinel_kwargs: dict[str, Any]) -> Sentinel:
    return Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]


def master_for(s: Sentinel, name: str, kwargs: dict[str, Any]) -> redis.Redis:
    client: redis.Redis = s.master_for(name, **kwargs)  # type: ignore[no-untyped-call]
    return client


def execute(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def pipeline(client: redis.Redis) -> Pipeline:
    return client.pipeline(transaction=False)


def cluster_pipeline(client: RedisCluster) -> ClusterPipeline:
    pipe: ClusterPipeline = client.pipeline()  # type: ignore[no-untyped-call]
    return pipe


def queue(pipe: Pipeline | ClusterPipeline, *args: Any) -> None:
    pipe.execute_command(*args)  # type: ignore[no-untyped-call]


def node_for_key(client: RedisCluster, key: str) -> ClusterNode:
    node: ClusterNode | None = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    if node is None:
        raise redis.exceptions.SlotNotCoveredError(f"no cluster node serves the slot of {key!r}")
    return node


def primaries(client: RedisCluster) -> list[ClusterNode]:
    nodes: list[ClusterNode] = client.get_primaries()  # type: ignore[no-untyped-call]
    return nodes


def pubsub(client: redis.Redis) -> PubSub:
    ps: PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    return ps


def keyslot(client: RedisCluster, key: str) -> int:
    slot: int = client.keyslot(key)  # type: ignore[no-untyped-call]
    return slot


def get_node(client: RedisCluster, name: str) -> ClusterNode | None:
    node: ClusterNode | None = client.get_node(node_name=name)  # type: ignore[no-untyped-call]
    return node
