"""RedisEventBus: price updates on ``price.updated.{SYMBOL}`` and control signals over Redis
pub/sub.

Publishing: one thread hop and one pipeline per batch (``PUBLISH``; ``SPUBLISH`` in a cluster,
so fan-out grows with the cluster instead of being broadcast to every node). A batch returned
by :meth:`RedisPriceCache.put_many` on the same connection is recognised: if the cache already
published it (``publish=True``) this does nothing, otherwise its encoded payloads are reused.

Subscribing (see :mod:`adapters.redis.pubsub` for threads, bounds and failure): standalone and
Sentinel use ``SUBSCRIBE`` for symbols and ``PSUBSCRIBE`` for a pattern. A cluster uses sharded
pub/sub (``SSUBSCRIBE``, one connection per primary that owns a subscribed channel), which has
no patterns: a pattern is resolved against the cache instead. The symbols whose
``price:{SYMBOL}`` keys match it are subscribed at entry, and every ``cluster_rescan_s``
each connection re-scans and subscribes newly appeared symbols. So in a cluster, the first
updates of a symbol that appears after entry can be missed until the next re-scan. A consumer
that needs every update of a symbol names it explicitly. One shard's trouble (its connection
lost, a channel's slot moved) re-subscribes only that shard's channels and raises
:class:`ports.event_bus.SubscriptionGap` for their symbols.

Control signals (``notify``/``listen``, e.g. ``positions.changed``) use plain
``PUBLISH``/``SUBSCRIBE`` in every mode: in a cluster a plain publish reaches subscribers on
every node, so other services can keep sending them with a plain ``PUBLISH``.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase

from redis.client import PubSub
from redis.cluster import RedisCluster

from adapters.inbox import SubscriptionStats
from adapters.redis import _redispy, sharded
from adapters.redis.connection import RedisConnection, RedisUnavailable, is_outage
from adapters.redis.price_cache import DEFAULT_KEY_PREFIX, AppliedPrices
from adapters.redis.pubsub import (
    Message,
    Opened,
    ShardRouter,
    pump_subscription,
    subscribe_and_confirm,
)
from domain.price import Price
from ports.event_bus import PRICE_CHANNEL_PREFIX, SubscriptionGap

log = logging.getLogger(__name__)


class RedisEventBus:
    """:class:`ports.event_bus.EventBus` on Redis pub/sub (standalone, Sentinel or Cluster).

    ``buffer`` bounds each price subscription (oldest dropped and counted beyond it);
    ``dropped`` and ``malformed`` total those of finished subscriptions."""

    def __init__(
        self,
        connection: RedisConnection,
        *,
        channel_prefix: str = PRICE_CHANNEL_PREFIX,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        buffer: int = 10_000,
        signal_buffer: int = 100,
        liveness_s: float = 5.0,
        cluster_rescan_s: float = 2.0,
    ) -> None:
        if buffer < 1 or signal_buffer < 1:
            raise ValueError("buffers must hold at least one message")
        self._conn = connection
        self.channel_prefix = channel_prefix
        self.key_prefix = key_prefix
        self._buffer = buffer
        self._signal_buffer = signal_buffer
        self._liveness_s = liveness_s
        self._rescan_s = cluster_rescan_s
        self._lock = threading.Lock()
        self.dropped = 0
        self.malformed = 0
        self.skipped_already_published = 0

    @property
    def connection(self) -> RedisConnection:
        return self._conn

    # -- publishing ------------------------------------------------------------------------------
    async def publish_many(self, prices: Sequence[Price]) -> None:
        """Publish each price on ``price.updated.{SYMBOL}`` in order, one pipeline; nothing for
        a batch a cache on the same Redis already published. Raises ``ConnectionError``."""
        payloads: list[bytes] | None = None
        if (
            isinstance(prices, AppliedPrices)
            and prices.origin.same_deployment(self._conn)
            and prices.channel_prefix == self.channel_prefix
        ):
            if prices.published:
                self.skipped_already_published += len(prices)
                return
            payloads = prices.payloads
        if not prices:
            return
        batch = list(prices)
        await self._conn.call("publish_many", lambda: self.publish_many_sync(batch, payloads))

    def publish_many_sync(
        self, prices: Sequence[Price], payloads: list[bytes] | None = None
    ) -> None:
        """Blocking :meth:`publish_many` (``payloads``: the prices' JSON, if already encoded)."""
        if payloads is None:
            payloads = [p.to_json() for p in prices]
        client = self._conn.client()
        prefix = self.channel_prefix
        if isinstance(client, RedisCluster):
            sent = sharded.spublish(
                self._conn,
                [(prefix + p.symbol, b) for p, b in zip(prices, payloads, strict=True)],
            )
            if not all(sent):
                raise RedisUnavailable(
                    f"SPUBLISH failed for {sent.count(False)} of {len(sent)} prices (a node "
                    "down or moving)"
                )
            return
        pipe = _redispy.pipeline(client)
        for price, payload in zip(prices, payloads, strict=True):
            _redispy.queue(pipe, "PUBLISH", prefix + price.symbol, payload)
        pipe.execute()

    async def notify(self, channel: str, payload: bytes = b"") -> None:
        """Publish a control signal with a plain ``PUBLISH``. Raises ``ConnectionError``."""
        await self._conn.call("notify", lambda: self._conn.client().publish(channel, payload))

    # -- subscribing -----------------------------------------------------------------------------
    def _convert_price(self, stats: SubscriptionStats) -> Callable[[Message], Price | None]:
        def convert(message: Message) -> Price | None:
            try:
                return Price.from_json(message["data"])
            except ValueError as e:
                with self._lock:
                    stats.malformed += 1
                    first = stats.malformed == 1
                if first or stats.malformed % 1000 == 0:
                    log.warning(
                        "skipping malformed price message on %r (%d so far): %s",
                        message.get("channel"),
                        stats.malformed,
                        e,
                    )
                return None

        return convert

    @asynccontextmanager
    async def subscribe(
        self, symbols: Collection[str] = (), pattern: str | None = None
    ) -> AsyncIterator[AsyncIterator[Price]]:
        """Receive price updates for ``symbols`` and/or the glob ``pattern`` over symbols.

        Subscribed (confirmed by the server) once entered; updates arrive in publish order per
        symbol; malformed messages are skipped and counted. The iterator raises
        ``ConnectionError`` when the connection is lost (updates may then have been missed:
        re-subscribe and re-read the cache). In a cluster, one shard's trouble raises
        :class:`ports.event_bus.SubscriptionGap` instead, once its symbols are subscribed
        again: re-read those symbols and keep iterating (the others were not interrupted);
        ``ConnectionError`` then means no shard is left. Raises ``ConnectionError`` on entry
        when Redis cannot be reached. Leaving stops the receiving thread(s) within about 0.2 s.
        A symbol that also matches ``pattern`` is delivered once. Cluster: see the module
        docstring for how a pattern is resolved.
        """
        wanted = sorted(set(symbols))
        stats = SubscriptionStats()
        router: ShardRouter | None = None
        if self._conn.is_cluster:
            # Sharded channels are a set: a named symbol matching the pattern is one channel.
            channels = [self.channel_prefix + s for s in wanted]
            shard_router = _Router(self, pattern)
            open_all = self._open_sharded(channels, pattern, shard_router)
            router = shard_router
        else:
            if pattern is not None:  # else SUBSCRIBE and PSUBSCRIBE would both deliver it
                wanted = [s for s in wanted if not fnmatchcase(s, pattern)]
            channels = [self.channel_prefix + s for s in wanted]
            patterns = [] if pattern is None else [self.channel_prefix + pattern]
            open_all = self._open_classic(channels, patterns)
        what = f"price subscription ({len(wanted)} symbols, pattern={pattern!r})"
        try:
            async with pump_subscription(
                self._conn,
                what,
                open_all,
                self._convert_price(stats),
                capacity=self._buffer,
                stats=stats,
                liveness_s=self._liveness_s,
                rescan_s=self._rescan_s,
                router=router,
            ) as inbox:
                yield inbox
        finally:
            self.dropped += stats.dropped
            self.malformed += stats.malformed

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Receive the payloads published on ``channel`` from entry on (plain ``SUBSCRIBE``).
        Raises ``ConnectionError`` on entry, and from the iterator when the connection is lost.
        """
        stats = SubscriptionStats()

        def open_all(opened: list[Opened]) -> None:
            node = None
            if self._conn.is_cluster:
                node = _redispy.node_for_key(self._conn.cluster(), channel)
            client = self._conn.pubsub_client(node)
            each = Opened(f"listen:{channel}", _redispy.pubsub(client), client)
            opened.append(each)
            each.prebuffer = subscribe_and_confirm(
                each.pubsub, channels=[channel], timeout_s=self._confirm_timeout_s()
            )

        def convert(message: Message) -> bytes:
            data = message["data"]
            return data if isinstance(data, bytes) else str(data).encode()

        async with pump_subscription(
            self._conn,
            f"listen {channel}",
            open_all,
            convert,
            capacity=self._signal_buffer,
            stats=stats,
            liveness_s=self._liveness_s,
        ) as inbox:
            yield inbox

    def _confirm_timeout_s(self) -> float:
        return 2 * self._conn.options.socket_timeout_s

    def _open_classic(
        self, channels: list[str], patterns: list[str]
    ) -> Callable[[list[Opened]], None]:
        def open_all(opened: list[Opened]) -> None:
            if not channels and not patterns:
                return
            client = self._conn.pubsub_client()
            each = Opened("prices", _redispy.pubsub(client), client)
            opened.append(each)
            each.prebuffer = subscribe_and_confirm(
                each.pubsub,
                channels=channels,
                patterns=patterns,
                timeout_s=self._confirm_timeout_s(),
            )

        return open_all

    def _open_sharded(
        self, channels: list[str], pattern: str | None, router: _Router
    ) -> Callable[[list[Opened]], None]:
        def open_all(opened: list[Opened]) -> None:
            rc = self._conn.cluster()
            wanted = set(channels)
            if pattern is not None:
                wanted.update(self._scan_channels(rc, pattern))
            by_node = router.owners(wanted)
            nodes = [n for n in _redispy.primaries(rc) if pattern is not None or n.name in by_node]
            for node in nodes:
                opened.append(router.open(node.name, by_node.get(node.name, [])))

        return open_all

    def _open_shard(self, node_name: str, channels: Collection[str], pattern: str | None) -> Opened:
        """A connection to the primary ``node_name`` with ``channels`` subscribed (confirmed;
        closed again if that fails); with a pattern, it re-scans for new symbols this node
        owns."""
        node = _redispy.get_node(self._conn.cluster(), node_name)
        if node is None:
            raise RedisUnavailable(f"cluster node {node_name} is no longer in the slot map")
        client = self._conn.pubsub_client(node)
        here = set(channels)
        rescan = None if pattern is None else self._rescanner(node_name, pattern, here)
        each = Opened(
            f"shard:{node_name}",
            _redispy.pubsub(client),
            client,
            rescan=rescan,
            node=node_name,
            channels=here,
        )
        try:
            each.prebuffer = subscribe_and_confirm(
                each.pubsub, shard_channels=sorted(here), timeout_s=self._confirm_timeout_s()
            )
        except BaseException:
            each.close()
            raise
        return each

    def _scan_channels(self, rc: RedisCluster, pattern: str) -> list[str]:
        skip = len(self.key_prefix.encode())
        out = []
        for key in rc.scan_iter(match=self.key_prefix + pattern, count=1000):
            raw = key if isinstance(key, bytes) else str(key).encode()
            out.append(self.channel_prefix + raw[skip:].decode(errors="replace"))
        return out

    def _rescanner(
        self, node_name: str, pattern: str, subscribed: set[str]
    ) -> Callable[[PubSub], None]:
        def rescan(pubsub: PubSub) -> None:
            # The scan reads every node through the shared client: another node being down
            # skips this round (this connection is fine). Only our own SSUBSCRIBE may fail
            # this connection.
            try:
                rc = self._conn.cluster()
                mine = [
                    channel
                    for channel in self._scan_channels(rc, pattern)
                    if channel not in subscribed
                    and _redispy.node_for_key(rc, channel).name == node_name
                ]
            except Exception as e:
                if not is_outage(e):
                    raise
                self._conn.mark_topology_stale()
                log.debug("cluster pattern %r: re-scan skipped (%s)", pattern, e)
                return
            for channel in mine:
                pubsub.ssubscribe(channel)  # confirmation arrives as a message, ignored
                subscribed.add(channel)
                log.info("cluster pattern %r: now also subscribed to %s", pattern, channel)

        return rescan


@dataclass(eq=False)
class _Router:
    """:class:`adapters.redis.pubsub.ShardRouter` for one cluster price subscription."""

    bus: RedisEventBus
    pattern: str | None

    @property
    def every_primary(self) -> bool:
        return self.pattern is not None

    def owners(self, channels: Collection[str]) -> dict[str, list[str]]:
        rc = self.bus.connection.cluster()
        by_node: dict[str, list[str]] = defaultdict(list)
        for channel in sorted(channels):
            by_node[_redispy.node_for_key(rc, channel).name].append(channel)
        return dict(by_node)

    def primaries(self) -> list[str]:
        return [n.name for n in _redispy.primaries(self.bus.connection.cluster())]

    def open(self, node: str, channels: Sequence[str]) -> Opened:
        return self.bus._open_shard(node, channels, self.pattern)

    def gap(self, channels: Collection[str], reason: str) -> BaseException:
        skip = len(self.bus.channel_prefix)
        return SubscriptionGap(frozenset(c[skip:] for c in channels), reason)
