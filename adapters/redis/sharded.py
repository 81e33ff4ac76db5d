"""Cluster helpers: routing by slot owner without redis-py's ClusterPipeline on the hot path."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import redis.exceptions as rex
from redis.cluster import ClusterNode

from adapters.redis import _redispy
from adapters.redis.connection import RedisConnection

log = logging.getLogger(__name__)


def is_topology_error(error: rex.ResponseError) -> bool:
    """A reply that means "this slot is (now) elsewhere" or "the cluster is re-forming"."""
    if isinstance(error, rex.AskError | rex.ClusterDownError | rex.TryAgainError):
        return True
    text = str(error)
    return "non local key" in text or text.startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"))


def spublish(conn: RedisConnection, messages: Sequence[tuple[str, bytes]]) -> None:
    """``SPUBLISH`` each (channel, payload), in order per channel: one plain pipeline per node
    that owns a channel's slot (ClusterPipeline costs several times more per command). If a
    slot moved, refresh the slot map and send the batch once more through ClusterPipeline,
    which follows redirections (a subscriber may then see a message twice, never out of order
    within what it receives first)."""
    rc = conn.cluster()
    by_node: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    nodes: dict[str, ClusterNode] = {}
    for channel, payload in messages:
        node = _redispy.node_for_key(rc, channel)
        by_node[node.name].append((channel, payload))
        nodes[node.name] = node
    try:
        for name, items in by_node.items():
            pipe = _redispy.pipeline(rc.get_redis_connection(nodes[name]))
            for channel, payload in items:
                _redispy.queue(pipe, "SPUBLISH", channel, payload)
            pipe.execute()
    except rex.ResponseError as e:
        if not is_topology_error(e):
            raise
        log.info("SPUBLISH hit a moved slot (%s): refreshing the slot map, resending", e)
        conn.refresh_topology()
        cpipe = _redispy.cluster_pipeline(conn.cluster())
        for channel, payload in messages:
            _redispy.queue(cpipe, "SPUBLISH", channel, payload)
        cpipe.execute()
