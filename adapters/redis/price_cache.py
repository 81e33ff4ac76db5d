"""RedisPriceCache: the latest price per symbol in Redis, latest-wins on the server.

Contract (other services read it): ``price:{SYMBOL}`` holds exactly ``Price.to_json()``, with a
TTL of ``ttl_s``; each price is encoded once and the same bytes go to the cache and the channel.

**Checked write, one round trip.** ``put_many`` runs one Lua script per batch (standalone and
Sentinel; per node in a cluster) that, for every price in order, writes ``SET key json PX ttl``
only when the cached value is absent, unreadable, not newer (fixed-width ISO timestamps
compare as text), or stamped more than ``max_future_skew_s`` ahead of our clock (untrusted: it
must not freeze the symbol), and returns which were applied. With ``publish=True`` the script also
``PUBLISH``es every applied price on ``price.updated.{SYMBOL}`` in the same call, so write and
publish are one atomic server-side step and one network round trip.

**Double publishing is avoided explicitly.** ``put_many`` returns an :class:`AppliedPrices`
(a ``list[Price]``) that carries the encoded payloads and whether they were already published.
:meth:`adapters.redis.event_bus.RedisEventBus.publish_many` on the same Redis does nothing
for a batch marked published and reuses the payloads otherwise, so the application's
``applied = await cache.put_many(batch); await bus.publish_many(applied)`` publishes each
applied price exactly once either way. Any other sequence is published normally.

**Cluster.** A Lua script may not declare keys of different slots, and keys must spread over
slots (no hash tags). So the batch is grouped by the node that owns each key's slot and the
script runs once per node with the keys passed as arguments, under the Redis 7 script flag
``allow-cross-slot-keys`` (the server still refuses a key the node does not own). Applied
prices are then published with ``SPUBLISH`` (sharded pub/sub, so fan-out scales with the
cluster), one pipeline per node.

**Partial success is success for what succeeded (cluster).** Each node's script call stands
on its own: a node that is down, or owns a slot that is migrating ("Script attempted to access
a non local key", MOVED, ASK, TRYAGAIN, CLUSTERDOWN), fails only its own prices. A moving slot
is retried once after a slot-map refresh, one call per slot (so only the moving slot's keys
wait). A price whose publish failed (its channel's node down) counts as not written. If
anything is left, ``put_many`` raises :class:`RedisPartialWrite` (a ``ConnectionError`` and a
``ports.price_cache.PartialWrite``) carrying the applied, published part and the unwritten
rest; the writer counts the first and retries only the rest, with backoff, until the topology
settles. A retry re-applies a price at the same timestamp (applied, never "refused as older").
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from functools import cache
from importlib import resources

import redis
import redis.exceptions as rex
from redis.cluster import RedisCluster

from adapters.redis import _redispy, sharded
from adapters.redis.connection import RedisConnection, RedisUnavailable, as_bytes_list, is_outage
from adapters.redis.sharded import is_topology_error
from domain.price import Price
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, future_limit_ns, skew_ns
from domain.timestamps import format_ns
from ports.event_bus import PRICE_CHANNEL_PREFIX
from ports.price_cache import PartialWrite

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "price:"
DEFAULT_TTL_S = 300.0
_CLUSTER_SCRIPT_FLAGS = "#!lua flags=allow-cross-slot-keys\n"
_APPLIED = ord("1")
_FAILED = ord("F")  # cluster: not written now (its node is down or moving); retried


@cache
def put_prices_script() -> str:
    """The Lua source of the checked write (a package resource, read once on first use)."""
    return resources.files("adapters.redis").joinpath("put_prices.lua").read_text("utf-8")


class RedisPartialWrite(RedisUnavailable, PartialWrite):
    """Cluster: some nodes applied (and published) their part of the batch, others could not
    (see :class:`ports.price_cache.PartialWrite`)."""

    def __init__(self, reason: str, applied: AppliedPrices, unwritten: list[Price]) -> None:
        PartialWrite.__init__(self, reason, applied, unwritten)


class AppliedPrices(list[Price]):
    """The prices ``put_many`` applied, in order, with their encoded JSON (``payloads``, same
    order) and whether the cache already published them (``published``) on channels
    ``channel_prefix + symbol`` over ``origin``."""

    __slots__ = ("channel_prefix", "origin", "payloads", "published")

    def __init__(
        self,
        prices: list[Price],
        payloads: list[bytes],
        *,
        published: bool,
        origin: RedisConnection,
        channel_prefix: str,
    ) -> None:
        super().__init__(prices)
        self.payloads = payloads
        self.published = published
        self.origin = origin
        self.channel_prefix = channel_prefix


def parse_cached(symbol: str, raw: bytes | None, counter: list[int] | None = None) -> Price | None:
    """The cached record for ``symbol``, or None when absent or malformed (logged, counted)."""
    if raw is None:
        return None
    try:
        price = Price.from_json(raw)
    except ValueError as e:
        if counter is not None:
            counter[0] += 1
        log.warning("ignoring malformed cached price for %s: %s", symbol, e)
        return None
    if price.symbol != symbol:
        if counter is not None:
            counter[0] += 1
        log.warning("ignoring cached price for %s that names %s", symbol, price.symbol)
        return None
    return price


class RedisPriceCache:
    """:class:`ports.price_cache.PriceCache` on Redis (standalone, Sentinel or Cluster).

    ``publish=True`` makes ``put_many`` also publish every applied price, atomically with the
    write (see the module docstring for how the bus then avoids publishing twice).
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        channel_prefix: str = PRICE_CHANNEL_PREFIX,
        publish: bool = False,
        max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if ttl_s < 0.001:
            raise ValueError(f"ttl_s must be at least 1 ms, got {ttl_s}")
        # A cached value stamped beyond now + this skew is overwritten (see put_prices.lua).
        self._max_future_skew_ns = skew_ns(max_future_skew_s)
        self._now_ns = now_ns
        self._conn = connection
        self._ttl_s = ttl_s
        self._ttl_ms = str(round(ttl_s * 1000))
        self.key_prefix = key_prefix
        self.channel_prefix = channel_prefix
        self.publish = publish
        self._prefix_len = str(len(key_prefix.encode()))
        source = put_prices_script()
        self._sha = connection.register_script(source)
        self._cluster_sha = connection.register_script(_CLUSTER_SCRIPT_FLAGS + source)
        self._malformed = [0]
        self.batches = 0
        self.last_node_error: BaseException | None = None

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def malformed(self) -> int:
        """Cached values that could not be parsed (treated as absent)."""
        return self._malformed[0]

    @property
    def connection(self) -> RedisConnection:
        return self._conn

    def key(self, symbol: str) -> str:
        return self.key_prefix + symbol

    # -- writes ----------------------------------------------------------------------------------
    async def put_many(self, prices: Sequence[Price]) -> AppliedPrices:
        """Write the batch latest-wins (see the module docstring) in one thread hop and one
        server call (per node in a cluster); return the applied prices in order. Prices of one
        symbol in the batch are applied in order. Raises ``ConnectionError``
        (:class:`RedisUnavailable`) on an outage: then nothing is known to be written, and a
        retry of the same batch re-applies (and re-publishes) what did get through."""
        if not prices:
            return AppliedPrices(
                [],
                [],
                published=self.publish,
                origin=self._conn,
                channel_prefix=self.channel_prefix,
            )
        batch = list(prices)
        return await self._conn.call("put_many", lambda: self.put_many_sync(batch))

    def put_many_sync(self, prices: Sequence[Price]) -> AppliedPrices:
        """Blocking :meth:`put_many` (for worker threads and scripts)."""
        stamps = [format_ns(p.ts_event_ns) for p in prices]
        payloads = [p.to_json(ts) for p, ts in zip(prices, stamps, strict=True)]
        if self._conn.is_cluster:
            flags = self._write_cluster(prices, payloads, stamps)
        else:
            flags = self._write_standalone(prices, payloads, stamps)
        applied = [p for p, f in zip(prices, flags, strict=True) if f == _APPLIED]
        applied_payloads = [b for b, f in zip(payloads, flags, strict=True) if f == _APPLIED]
        self.batches += 1
        result = AppliedPrices(
            applied,
            applied_payloads,
            published=self.publish,
            origin=self._conn,
            channel_prefix=self.channel_prefix,
        )
        if _FAILED in flags:  # cluster only: some nodes failed, the others' part stands
            unwritten = [p for p, f in zip(prices, flags, strict=True) if f == _FAILED]
            raise RedisPartialWrite(
                f"redis unavailable for {len(unwritten)} of {len(prices)} prices (a cluster "
                f"node down or moving): {self.last_node_error}",
                result,
                unwritten,
            )
        return result

    def _args(
        self, prices: Sequence[Price], payloads: list[bytes], stamps: list[str], publish: bool
    ) -> list[object]:
        pairs: list[object] = [b""] * (2 * len(prices))
        pairs[0::2] = payloads
        pairs[1::2] = stamps
        return [
            self._ttl_ms,
            "1" if publish else "0",
            self._prefix_len,
            self.channel_prefix,
            format_ns(future_limit_ns(self._now_ns(), self._max_future_skew_ns)),
            *pairs,
        ]

    def _write_standalone(
        self, prices: Sequence[Price], payloads: list[bytes], stamps: list[str]
    ) -> bytes:
        client = self._conn.standalone()
        keys = [self.key_prefix + p.symbol for p in prices]
        args = self._args(prices, payloads, stamps, self.publish)
        reply = self._conn.evalsha(client, self._sha, len(keys), [*keys, *args])
        return _flags(reply, len(prices))

    def _write_cluster(
        self, prices: Sequence[Price], payloads: list[bytes], stamps: list[str]
    ) -> bytes:
        """One script call per node; a node that fails (down, or a slot moving: "non local
        key", MOVED, TRYAGAIN, CLUSTERDOWN) marks only its own prices ``_FAILED``. Prices of a
        moving slot are retried once after a slot-map refresh; the writer retries the rest
        later (with backoff, until the topology settles). Applied prices are published per
        node; one whose publish failed is ``_FAILED`` too (cached, so the retry re-applies it
        at the same timestamp and publishes it: never "refused")."""
        flags, moved = self._write_cluster_once(prices, payloads, stamps, range(len(prices)))
        if moved:
            log.info("cluster write met a moving slot; refreshing the slot map, retrying once")
            self._conn.refresh_topology()
            # One call per slot this time: a slot still migrating fails only its own keys.
            again, _ = self._write_cluster_once(prices, payloads, stamps, moved, by_slot=True)
            for i in moved:
                flags[i] = again[i]
        if self.publish:
            self._spublish(prices, payloads, flags)
        return bytes(flags)

    def _write_cluster_once(
        self,
        prices: Sequence[Price],
        payloads: list[bytes],
        stamps: list[str],
        which: Sequence[int],
        *,
        by_slot: bool = False,
    ) -> tuple[bytearray, list[int]]:
        rc = self._conn.cluster()
        by_node: dict[tuple[str, int], list[int]] = defaultdict(list)
        nodes = {}
        flags = bytearray(_FAILED for _ in prices)
        for i in which:
            key = self.key_prefix + prices[i].symbol
            node = _redispy.node_for_key(rc, key)
            group_key = (node.name, _redispy.keyslot(rc, key) if by_slot else 0)
            by_node[group_key].append(i)
            nodes[group_key] = node
        moved: list[int] = []
        for name, indexes in by_node.items():
            keys = [self.key_prefix + prices[i].symbol for i in indexes]
            group = [prices[i] for i in indexes]
            args = self._args(
                group, [payloads[i] for i in indexes], [stamps[i] for i in indexes], False
            )
            # No declared keys: the key count and keys ride in ARGV (see put_prices.lua).
            argv = [*args[:5], len(keys), *keys, *args[5:]]
            try:
                node_client = rc.get_redis_connection(nodes[name])
                reply = self._conn.evalsha(node_client, self._cluster_sha, 0, argv)
            except Exception as e:
                if not is_outage(e):
                    raise
                if isinstance(e, rex.ResponseError) and is_topology_error(e):
                    moved.extend(indexes)
                else:
                    log.info("cluster node %s failed (%s): %d prices wait", name[0], e, len(keys))
                self._conn.mark_topology_stale()
                self.last_node_error = e
                continue
            for i, flag in zip(indexes, _flags(reply, len(indexes)), strict=True):
                flags[i] = flag
        return flags, moved

    def _spublish(self, prices: Sequence[Price], payloads: list[bytes], flags: bytearray) -> None:
        applied = [i for i, flag in enumerate(flags) if flag == _APPLIED]
        if not applied:
            return
        messages = [(self.channel_prefix + prices[i].symbol, payloads[i]) for i in applied]
        sent = sharded.spublish(self._conn, messages)
        for i, ok in zip(applied, sent, strict=True):
            if not ok:
                flags[i] = _FAILED

    # -- reads -----------------------------------------------------------------------------------
    async def get(self, symbol: str) -> Price | None:
        """The cached price, or None when absent, expired or malformed (logged, counted)."""
        return (await self.get_many((symbol,))).get(symbol)

    async def get_many(self, symbols: Collection[str]) -> dict[str, Price]:
        """The cached prices of those symbols that have a readable one; one thread hop, one
        ``MGET`` (per slot in a cluster). Raises ``ConnectionError`` on an outage."""
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return {}
        return await self._conn.call("get_many", lambda: self.get_many_sync(wanted))

    def get_many_sync(self, symbols: Collection[str]) -> dict[str, Price]:
        """Blocking :meth:`get_many`."""
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return {}
        keys = [self.key_prefix + s for s in wanted]
        client = self._conn.client()
        if isinstance(client, RedisCluster):
            raw = as_bytes_list(client.mget_nonatomic(keys))
        else:
            assert isinstance(client, redis.Redis)
            raw = as_bytes_list(client.mget(keys))
        out: dict[str, Price] = {}
        for symbol, value in zip(wanted, raw, strict=True):
            price = parse_cached(symbol, value, self._malformed)
            if price is not None:
                out[symbol] = price
        return out


def _flags(reply: object, expected: int) -> bytes:
    if isinstance(reply, str):
        reply = reply.encode()
    if not isinstance(reply, bytes) or len(reply) != expected:
        raise RuntimeError(f"unexpected reply from the price script: {reply!r:.80}")
    return reply
