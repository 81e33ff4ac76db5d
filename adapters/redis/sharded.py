"""Cluster helpers: routing by slot owner without redis-py's ClusterPipeline on the hot path."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import redis.exceptions as rex
from redis.cluster import ClusterNode

from adapters.redis import _redispy
from adapters.redis.connection import RedisConnection, is_outage

log = logging.getLogger(__name__)


def is_topology_error(error: rex.ResponseError) -> bool:
    """A reply that means "this slot is (now) elsewhere" or "the cluster is re-forming"."""
    if isinstance(error, rex.AskError | rex.ClusterDownError | rex.TryAgainError):
        return True
    text = str(error)
    return "non local key" in text or text.startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"))


def spublish(conn: RedisConnection, messages: Sequence[tuple[str, bytes]]) -> list[bool]:
    """``SPUBLISH`` each (channel, payload), in order per channel: one plain pipeline per node
    that owns a channel's slot (ClusterPipeline costs several times more per command). A node
    whose slot moved is retried once through ClusterPipeline (which follows redirections)
    after a slot-map refresh. Returns, per message, whether it was sent: a node that is down
    or still moving fails only its own messages (an outage), never the others'. A subscriber
    may see a retried message twice, never out of order within what it receives first."""
    rc = conn.cluster()
    by_node: dict[str, list[int]] = defaultdict(list)
    nodes: dict[str, ClusterNode] = {}
    for i, (channel, _payload) in enumerate(messages):
        node = _redispy.node_for_key(rc, channel)
        by_node[node.name].append(i)
        nodes[node.name] = node
    sent = [True] * len(messages)
    moved: list[int] = []
    for name, indexes in by_node.items():
        try:
            pipe = _redispy.pipeline(rc.get_redis_connection(nodes[name]))
            for i in indexes:
                _redispy.queue(pipe, "SPUBLISH", *messages[i])
            pipe.execute()
        except Exception as e:
            if not is_outage(e):
                raise
            for i in indexes:
                sent[i] = False
            if isinstance(e, rex.ResponseError) and is_topology_error(e):
                moved.extend(indexes)
            else:
                log.info("SPUBLISH to %s failed (%s); its messages are retried later", name, e)
    if moved:
        log.info("SPUBLISH hit a moved slot: refreshing the slot map, resending")
        conn.refresh_topology()
        try:
            cpipe = _redispy.cluster_pipeline(conn.cluster())
            for i in sorted(moved):
                _redispy.queue(cpipe, "SPUBLISH", *messages[i])
            cpipe.execute()
        except Exception as e:
            if not is_outage(e):
                raise
        else:
            for i in moved:
                sent[i] = True
    return sent
