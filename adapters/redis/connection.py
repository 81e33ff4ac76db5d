"""One Redis deployment (standalone, Sentinel or Cluster) behind redis-py's SYNC client.

redis-py's asyncio client does not run under trio, so every call here is a plain blocking
function that the adapters run in a worker thread (``anyio.to_thread.run_sync``), one hop per
batch. This module owns what all adapters share: building the client for a mode, fail-fast
timeouts, translating redis-py's errors into the builtin :class:`ConnectionError` at the
boundary, and loading Lua scripts (reloading transparently after ``NOSCRIPT``).

Failure model: a dead server is detected within ``connect_timeout_s`` (refused connections
immediately), a hung one within ``socket_timeout_s``; every call then raises
:class:`RedisUnavailable` (a ``ConnectionError``). Nothing is retried beyond one immediate
reconnect (which turns the first call after a server restart, made on a pooled connection the
restart killed, into a success instead of an error). Recovery needs no action: the connection
pool reconnects on the next call once the server is back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from adapters.redis import _redispy
from domain.errors import FatalStoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisMode(StrEnum):
    """How the service reaches Redis. ``RedisMode("single")`` is STANDALONE too (the word the
    settings use)."""

    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"

    @classmethod
    def _missing_(cls, value: object) -> RedisMode | None:
        return cls.STANDALONE if value == "single" else None


class RedisUnavailable(ConnectionError):
    """Redis cannot serve the call now: down, timing out, loading, read-only, cluster down,
    topology moving, out of memory. The redis-py error is the ``__cause__``. Callers keep their
    data and retry; the connection pool reconnects by itself once the server is back."""


class RedisMisconfigured(FatalStoreError):
    """Redis refuses us for a reason no retry can fix (password, user, permissions): the
    message says what and ends with "check REDIS_URL". The redis-py error is the ``__cause__``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, setting="REDIS_URL")


class Fault(StrEnum):
    """What an error from redis-py means for the caller."""

    OUTAGE = "outage"  # degrade, keep data, retry; recovers by itself
    SETTING = "setting"  # the configuration is wrong: one line naming REDIS_URL, exit 2


# THE classification of everything redis-py can raise, in one place.
#
# 1. A server error reply is classified by its code (the reply's first word; redis-py 8 keeps it
#    in ``status_code`` and drops it from the text for the codes it knows, e.g. OOM).
REPLY_CODES: dict[str, tuple[Fault, str]] = {
    "OOM": (Fault.OUTAGE, "out of memory (maxmemory reached, writes refused)"),
    "READONLY": (Fault.OUTAGE, "read-only replica (a failover demoted the master)"),
    "LOADING": (Fault.OUTAGE, "loading its dataset"),
    "BUSY": (Fault.OUTAGE, "busy running a long script"),
    "MISCONF": (Fault.OUTAGE, "background save failing (writes refused)"),
    "NOSCRIPT": (Fault.OUTAGE, "script cache flushed"),
    "MASTERDOWN": (Fault.OUTAGE, "replica lost its master"),
    "NOREPLICAS": (Fault.OUTAGE, "not enough replicas"),
    "CLUSTERDOWN": (Fault.OUTAGE, "cluster down"),
    "TRYAGAIN": (Fault.OUTAGE, "cluster slot migrating"),
    "MOVED": (Fault.OUTAGE, "cluster slot moved"),
    "ASK": (Fault.OUTAGE, "cluster slot migrating"),
    "NOAUTH": (Fault.SETTING, "Redis requires a password"),
    "WRONGPASS": (Fault.SETTING, "Redis refused the user name or password"),
    "NOPERM": (Fault.SETTING, "the Redis user lacks a permission the service needs"),
}
# 2. Texts that identify a condition whatever the code (script errors carry them after "ERR").
REPLY_TEXTS: tuple[tuple[str, Fault, str], ...] = (
    ("non local key", Fault.OUTAGE, "cluster slot migrating"),
    ("cluster is down", Fault.OUTAGE, "cluster down"),
    (
        "called without any password configured",
        Fault.SETTING,
        "REDIS_URL has a password, Redis has none",
    ),
    ("no password is set", Fault.SETTING, "REDIS_URL has a password, Redis has none"),
)
# 3. Then by redis-py class, most specific first (transport and client-side errors).
ERROR_CLASSES: tuple[tuple[type[BaseException], Fault, str], ...] = (
    (rex.AuthenticationWrongNumberOfArgsError, Fault.SETTING, "authentication refused"),
    (rex.AuthenticationError, Fault.SETTING, "authentication refused"),
    (rex.AuthorizationError, Fault.SETTING, "authorization refused"),
    (rex.NoPermissionError, Fault.SETTING, "permission denied"),
    (rex.BusyLoadingError, Fault.OUTAGE, "loading its dataset"),
    (rex.TimeoutError, Fault.OUTAGE, "timed out"),
    (rex.ConnectionError, Fault.OUTAGE, "connection failed"),
    (rex.RedisClusterException, Fault.OUTAGE, "cluster unreachable"),
    (OSError, Fault.OUTAGE, "connection failed"),
    # Anything else redis-py raises (an unknown reply code, a protocol error) is an outage:
    # logged with its text, retried; never the end of the process.
    (rex.RedisError, Fault.OUTAGE, "unexpected reply"),
)


def classify(error: BaseException) -> tuple[Fault, str] | None:
    """``(fault, meaning)`` for an error raised by redis-py, or None for anything else (a bug
    in our code is not an outage)."""
    if isinstance(error, rex.ResponseError):
        code = getattr(error, "status_code", None) or str(error).split(" ", 1)[0]
        known = REPLY_CODES.get(code)
        if known is not None:
            return known
        text = str(error)
        for needle, fault, meaning in REPLY_TEXTS:
            if needle in text:
                return fault, meaning
    for cls, fault, meaning in ERROR_CLASSES:
        if isinstance(error, cls):
            return fault, meaning
    return None


def is_outage(error: BaseException) -> bool:
    """True when ``error`` (from redis-py) means the store is unavailable, not a bug."""
    found = classify(error)
    return found is not None and found[0] is Fault.OUTAGE


def translate(error: BaseException, what: str) -> BaseException:
    """The error to raise at the adapter boundary for a redis-py ``error`` during ``what``:
    :class:`RedisUnavailable` for an outage, :class:`RedisMisconfigured` for a setting, the
    error itself when it is not redis-py's."""
    if isinstance(error, RedisUnavailable | RedisMisconfigured):
        return error
    found = classify(error)
    if found is None:
        return error
    fault, meaning = found
    translated: BaseException
    if fault is Fault.SETTING:
        translated = RedisMisconfigured(f"Redis refused {what}: {meaning} ({error})")
    else:
        translated = RedisUnavailable(f"redis unavailable during {what}: {meaning}: {error}")
    translated.__cause__ = error
    return translated


def redact_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``: safe for logs and reprs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> None:
    """Raise ``ValueError`` (a one-line reason) unless redis-py accepts ``url``, query options
    included (``?socket_timeout=abc`` is refused here, at start-up, not at the first call)."""
    try:
        _redispy.parse_url(url)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e) or "not a valid Redis URL") from None


def _parse_host_port(address: str | tuple[str, int]) -> tuple[str, int]:
    if not isinstance(address, str):
        host_part, port_part = address
        return str(host_part), int(port_part)
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"sentinel address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Client tuning shared by every mode. Defaults detect a dead server in about 1-2 s."""

    socket_timeout_s: float = 2.0
    connect_timeout_s: float = 1.0
    health_check_interval_s: int = 5
    max_connections: int = 64
    client_name: str = "market-data-service"


class RedisConnection:
    """A Redis deployment and the sync client that reaches it; thread-safe.

    The client is built lazily, on the first call, inside the calling worker thread: a cluster
    client connects while it is constructed, and a service must be able to start while Redis is
    down. ``url`` selects TLS (``rediss://``), credentials and the database (``unix://`` works
    for standalone); in Sentinel mode the host part of the URL is ignored (the URL may be None)
    and ``sentinels`` (``"host:port"`` strings or ``(host, port)`` pairs) plus ``master_name``
    locate the master. Raises ``ValueError`` for a malformed URL or incomplete Sentinel
    settings; never connects here.
    """

    def __init__(
        self,
        url: str | None,
        *,
        mode: RedisMode | str = RedisMode.STANDALONE,
        sentinels: Sequence[str | tuple[str, int]] = (),
        master_name: str | None = None,
        options: RedisOptions | None = None,
    ) -> None:
        if url is None:
            if RedisMode(mode) is not RedisMode.SENTINEL:
                raise ValueError("a Redis URL is required unless the mode is sentinel")
            url = "redis://"  # Sentinel without a URL: no password, db 0, no TLS
        self._url = url
        self.mode = RedisMode(mode)
        self.options = options or RedisOptions()
        self._sentinels = [_parse_host_port(s) for s in sentinels]
        self._master_name = master_name
        if self.mode is RedisMode.SENTINEL and (not self._sentinels or not master_name):
            raise ValueError(
                "sentinel mode needs at least one sentinel host:port and a master name"
            )
        # Validate the URL now (clear error at start-up), without connecting.
        self._url_kwargs = _redispy.parse_url(url)
        self._lock = threading.Lock()
        self._client: redis.Redis | RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._scripts: dict[str, str] = {}  # sha -> source
        self._topology_stale = False
        self.closed = False

    def __repr__(self) -> str:
        return f"RedisConnection({redact_url(self._url)!r}, mode={self.mode.value!r})"

    def same_deployment(self, other: RedisConnection) -> bool:
        """True when ``other`` reaches the same Redis (same URL, mode and sentinels)."""
        return self is other or (
            self._url == other._url
            and self.mode is other.mode
            and self._sentinels == other._sentinels
            and self._master_name == other._master_name
        )

    @property
    def is_cluster(self) -> bool:
        return self.mode is RedisMode.CLUSTER

    @property
    def redacted_url(self) -> str:
        return redact_url(self._url)

    # -- client construction -------------------------------------------------------------------
    def _common_kwargs(self, *, retries: int) -> dict[str, Any]:
        o = self.options
        return {
            "socket_timeout": o.socket_timeout_s,
            "socket_connect_timeout": o.connect_timeout_s,
            "health_check_interval": o.health_check_interval_s,
            "client_name": o.client_name,
            # redis-py's default retries 10 times with backoff: that would hide an outage for
            # seconds. One immediate retry, on connection errors only (not timeouts), just
            # reconnects a pooled connection that a server restart killed.
            "retry": Retry(NoBackoff(), retries, supported_errors=(rex.ConnectionError,)),
        }

    def _build(self) -> redis.Redis | RedisCluster:
        if self.mode is RedisMode.CLUSTER:
            # Cluster retries are whole-command re-routes (with a topology refresh): one is
            # enough to ride over a MOVED, more would hide an outage.
            return RedisCluster.from_url(
                self._url,
                **self._common_kwargs(retries=1),
                max_connections=self.options.max_connections,
            )
        if self.mode is RedisMode.SENTINEL:
            return self._sentinel_client(self._common_kwargs(retries=1))
        return redis.Redis.from_url(
            self._url,
            **self._common_kwargs(retries=1),
            max_connections=self.options.max_connections,
        )

    def _sentinel_client(self, kwargs: dict[str, Any]) -> redis.Redis:
        if self._sentinel is None:
            o = self.options
            self._sentinel = _redispy.sentinel(
                self._sentinels,
                {
                    "socket_timeout": o.socket_timeout_s,
                    "socket_connect_timeout": o.connect_timeout_s,
                },
            )
        u = self._url_kwargs
        master_kwargs: dict[str, Any] = {
            k: u[k] for k in ("username", "password", "db") if u.get(k) is not None
        }
        if urlsplit(self._url).scheme == "rediss":
            # TLS to the master as the URL says, private CA and client certificate included
            # (``?ssl_ca_certs=...``); the sentinels themselves are asked over plain TCP.
            master_kwargs["ssl"] = True
            master_kwargs.update({k: v for k, v in u.items() if k.startswith("ssl_")})
        assert self._master_name is not None
        return _redispy.master_for(self._sentinel, self._master_name, {**kwargs, **master_kwargs})

    def client(self) -> redis.Redis | RedisCluster:
        """The shared client, built on first use (blocking: call from a worker thread).

        Raises :class:`RedisUnavailable` when a cluster cannot be reached to build it.
        """
        client = self._client
        if client is not None and not self._topology_stale:
            return client
        if client is not None:
            self._topology_stale = False
            self.refresh_topology()
            return client
        with self._lock:
            if self.closed:
                raise RedisUnavailable("redis connection is closed")
            if self._client is None:
                try:
                    self._client = self._build()
                except Exception as e:
                    raise translate(e, "connect") from e
            return self._client

    def pubsub_client(self, node: ClusterNode | None = None) -> redis.Redis:
        """A fresh client (own pool) for one long-lived pub/sub connection.

        It never retries: a lost pub/sub connection must surface as an error (the subscriber
        may have missed messages), not be papered over by a silent reconnect.
        """
        kwargs = self._common_kwargs(retries=0)
        if self.mode is RedisMode.SENTINEL:
            return self._sentinel_client(kwargs)
        client = redis.Redis.from_url(self._url, **kwargs, max_connections=4)
        if node is not None:
            pool_kwargs = client.connection_pool.connection_kwargs
            pool_kwargs["host"] = node.host
            pool_kwargs["port"] = node.port
        return client

    def cluster(self) -> RedisCluster:
        client = self.client()
        assert isinstance(client, RedisCluster)
        return client

    def standalone(self) -> redis.Redis:
        client = self.client()
        assert isinstance(client, redis.Redis)
        return client

    def mark_topology_stale(self) -> None:
        """Cluster: re-read the slot map before the next call (after a failure or a MOVED)."""
        if self.is_cluster:
            self._topology_stale = True

    def refresh_topology(self) -> None:
        """After a MOVED / non-local key in cluster mode: re-read the slot map."""
        if self._client is not None and isinstance(self._client, RedisCluster):
            try:
                self._client.nodes_manager.initialize()
            except Exception as e:  # the next call reports the outage
                log.debug("cluster topology refresh failed: %s", e)

    # -- scripts -------------------------------------------------------------------------------
    def register_script(self, source: str) -> str:
        """Remember ``source`` and return its SHA1 (loaded lazily, per server)."""
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = source
        return sha

    def evalsha(self, client: redis.Redis, sha: str, numkeys: int, args: Sequence[Any]) -> Any:
        """``EVALSHA`` on ``client``; after ``NOSCRIPT`` (a restarted or flushed server) load
        the script and run it once more."""
        try:
            return _redispy.execute(client, "EVALSHA", sha, numkeys, *args)
        except rex.NoScriptError:
            # Normal on a server's first use (and after its restart or SCRIPT FLUSH): not a fault.
            log.debug("loading redis script %s into the server's script cache", sha[:8])
            _redispy.execute(client, "SCRIPT", "LOAD", self._scripts[sha])
            return _redispy.execute(client, "EVALSHA", sha, numkeys, *args)

    # -- calls ---------------------------------------------------------------------------------
    def call_sync(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` here and now, translating outage errors to :class:`RedisUnavailable`.

        In a cluster, an outage also marks the slot map stale: the next call re-reads it first
        (after a failover the slots have a new owner). The failing call itself stays fast.
        """
        try:
            return fn()
        except Exception as e:
            error = translate(e, what)
            if isinstance(error, RedisUnavailable):
                self.mark_topology_stale()
            if error is e:
                raise
            raise error from e

    async def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (blocking redis-py code) in a worker thread: exactly one thread hop.

        Raises :class:`RedisUnavailable` for outages. Cancellation returns at once: the call in
        flight is abandoned (its thread ends by itself within the socket timeout; whether it
        took effect is unknown, as after any timeout). So a frozen Redis never holds a
        deadline of ours (the shutdown flush, a lease renewal) past its end.
        """
        return await anyio.to_thread.run_sync(self.call_sync, what, fn, abandon_on_cancel=True)

    async def ping(self) -> None:
        """Raises :class:`RedisUnavailable` unless every node answers ``PING``."""

        def ping() -> None:
            client = self.client()
            if isinstance(client, RedisCluster):
                client.ping(target_nodes=RedisCluster.ALL_NODES)
            else:
                client.ping()

        await self.call("ping", ping)

    def close(self) -> None:
        """Close every pooled connection (idempotent; cheap, no network round trip)."""
        with self._lock:
            self.closed = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:  # closing sockets of a dead server may complain
                log.debug("closing redis client: %s", e)


def as_bytes_list(value: object) -> list[bytes | None]:
    """redis-py's MGET reply, typed."""
    return cast(list[bytes | None], value)
