"""The chaos soak engine: runs a :class:`~entrypoints.chaos.schedule.Plan` against real
processes and checks invariants all along.

Per block it builds a *scene* (``entrypoints.testbed``: redis-server processes, the service as a
subprocess, the local Alpaca-compatible server in-process behind :class:`FeedProxy`), then plays
episodes: inject, hold (``/health`` sampled: it must leave ``healthy`` for a degrading fault),
clear, settle (every subscribed symbol fresh in Redis and ``/health`` healthy within the fault's
settle time). Monitors run the whole time: each service process alive (unless a signal fault
ended it as it should), RSS under a bound, per-symbol order of what Redis publishes and caches,
no price stamped in the future in the cache, at most one instance saying it streams.

A violation is recorded with the seed and the episodes played so far; the run goes on (a dead
service is restarted, as a supervisor would) so one run reports every violation it meets.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import orjson
import redis as redis_lib
import trio

from adapters.alpaca_compatible_server.config import ServerConfig
from adapters.alpaca_compatible_server.server import AlpacaCompatibleServer
from adapters.redis.reader import PriceReader, SubscriptionGap
from domain.price import Price
from entrypoints.chaos.flow import FlowWatch
from entrypoints.chaos.proxy import FeedProxy, text_frame
from entrypoints.chaos.schedule import BY_NAME, Episode, Plan
from entrypoints.testbed.helpers import PositionsGateway, alpaca_server
from entrypoints.testbed.redis_servers import (
    RedisClusterHandle,
    RedisServer,
    start_cluster,
    start_server,
)
from entrypoints.testbed.service_process import ServiceProcess, start_service

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
POSITION_SYMBOL = "TSLA"
FRESH_S = 3.0
"""A symbol is fresh when its cached price's venue time is at most this old (the local server
stamps each quote with its send time, so a flowing symbol is milliseconds old)."""
FUTURE_SLACK_S = 5.0
RSS_LIMIT_MB = 400.0
DETECT_S = 4.0
"""How long ``/health`` may take to stop saying ``healthy`` once a degrading fault is active."""
TWO_LEADERS_GRACE_S = 3.0
EXIT_WITHIN_S = 2.5
HA_TTL_S = 4.0
SAMPLE_S = 0.2
GAP_S = 2.0
"""While prices are expected to flow (see :mod:`entrypoints.chaos.flow`), no subscribed symbol's
published stream is quiet for longer than this (the local server quotes each symbol ~50 times a
second: 2 s leaves room for a loaded machine)."""
SHARD_GAP_S = 1.0
"""The same while one cluster master is dead, for the symbols on the others."""
CLUSTER_SERVES_S = 1.5
"""How long the rest of the cluster surely serves after a master died: it goes down (full
coverage required) once the node timeout (2 s) has passed without the master's answer."""


@dataclass
class Violation:
    at_s: float
    invariant: str
    detail: str
    episode: str
    repeats: int = 0
    """Later violations of the same invariant in the same episode (not listed one by one)."""


@dataclass
class Report:
    seed: int
    planned_s: float
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    played: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    interrupted: str | None = None
    """The signal that ended the run before its time, if one did."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        stopped = f", interrupted by {self.interrupted}" if self.interrupted else ""
        lines = [
            f"chaos soak: seed {self.seed}, {self.elapsed_s:.0f} s "
            f"(planned {self.planned_s:.0f} s{stopped}), {len(self.played)} episodes",
            f"faults injected: {sum(self.faults.values())}",
        ]
        lines += [f"  {name:<22} {n}" for name, n in sorted(self.faults.items())]
        lines.append(f"invariant checks: {sum(self.checks.values())}")
        lines += [f"  {name:<22} {n}" for name, n in sorted(self.checks.items())]
        lines.append(f"peak service RSS: {self.peak_rss_mb:.0f} MB")
        for name, why in sorted(self.skipped.items()):
            lines.append(f"skipped {name}: {why}")
        lines.append(f"violations: {len(self.violations)}")
        for v in self.violations:
            again = f" (+{v.repeats} more like it)" if v.repeats else ""
            lines.append(
                f"  [{v.at_s:7.1f} s] {v.invariant}: {v.detail} (during {v.episode}){again}"
            )
        if self.violations:
            lines.append(
                f"reproduce: mds chaos --seed {self.seed} --minutes {self.planned_s / 60:g}"
            )
            lines.append("schedule played:")
            lines += [f"  {i + 1:3}. {e}" for i, e in enumerate(self.played)]
        return "\n".join(lines)


class SoakError(RuntimeError):
    """The soak could not set up a scene (not a finding about the service)."""


# ------------------------------------------------------------------------------------ scenes


@dataclass(eq=False)
class Instance:
    """One service process of a scene (restartable with the same settings)."""

    name: str
    env: dict[str, str]
    directory: Path
    service: ServiceProcess | None = None
    expected_exit: bool = False
    frozen: bool = False

    def start(self, stream_url: str, redis_url: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.service = start_service(self.directory, stream_url, redis_url, **self.env)
        self.expected_exit = False
        self.frozen = False

    @property
    def alive(self) -> bool:
        return self.service is not None and self.service.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.service is not None
            self.service.proc.send_signal(sig)

    def log_tail(self, chars: int = 1500) -> str:
        if self.service is None:
            return ""
        try:
            return self.service.log()[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.service is not None:
            if self.frozen:
                self.signal(signal.SIGCONT)
            self.service.kill()


@dataclass(eq=False)
class Scene:
    """What one block runs against."""

    name: str
    directory: Path
    server: AlpacaCompatibleServer
    proxy: FeedProxy
    redis: RedisServer | None = None
    cluster: RedisClusterHandle | None = None
    instances: list[Instance] = field(default_factory=list)
    gateway: PositionsGateway | None = None
    gateway_delay_s: float = 0.0
    disk: Path | None = None
    filler: Path | None = None
    reader: PriceReader | None = None

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.redis is not None
        return self.redis.url

    @property
    def symbols(self) -> tuple[str, ...]:
        return (*SYMBOLS, POSITION_SYMBOL) if self.gateway is not None else SYMBOLS

    @property
    def stream_url(self) -> str:
        return f"{self.proxy.url}/v2/iex"

    def start_instance(self, instance: Instance) -> None:
        instance.start(self.stream_url, self.redis_url)

    def client(self) -> redis_lib.Redis:
        assert self.redis is not None
        return self.redis.client()


def _base_env() -> dict[str, str]:
    return {
        "MDS_SYMBOLS": ",".join(SYMBOLS),
        "MDS_DATA_TIMEOUT": "2",
        "MDS_RECONNECT_BASE_DELAY": "0.2",
        "MDS_RECONNECT_MAX_DELAY": "1",
        "MDS_LOG_LEVEL": "INFO",
    }


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a small tmpfs on ``path``; None when done, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        return "no mount command"
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        return f"cannot mount a tmpfs ({done.stderr.decode(errors='replace').strip()})"
    return None


def _umount(path: Path) -> None:
    umount = shutil.which("umount")
    if umount is not None:
        subprocess.run([umount, "-l", str(path)], capture_output=True, timeout=10, check=False)


@asynccontextmanager
async def open_scene(name: str, base: Path, report: Report) -> AsyncIterator[Scene]:
    """Start the processes of scene ``name`` and stop them all when the block ends."""
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    config = ServerConfig(rate=200, batch=5, bar_interval_s=None, close_timeout_s=1.0)
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(alpaca_server(config))
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        proxy = FeedProxy(server.port)
        await tg.start(proxy.run)
        stack.callback(proxy.close_all)
        scene = Scene(name, directory, server, proxy)
        env = _base_env()
        if name == "cluster":
            scene.cluster = await anyio.to_thread.run_sync(
                lambda: start_cluster(3, directory / "cluster")
            )
            stack.callback(scene.cluster.stop)
            env["MDS_REDIS_CLUSTER"] = "true"
        else:
            scene.redis = await anyio.to_thread.run_sync(lambda: start_server(directory / "redis"))
            stack.callback(scene.redis.stop)
        if name == "single":
            gateway = _DelayedGateway(scene, [POSITION_SYMBOL])
            await gateway.up(tg)
            scene.gateway = gateway
            env["MDS_POSITION_SOURCE"] = "gateway"
            env["MDS_POSITIONS_URL"] = gateway.url
            env["MDS_POSITION_SYNC_INTERVAL"] = "1"
            disk = directory / "disk"
            why = _mount_tmpfs(disk)
            if why is None:
                scene.disk = disk
                stack.callback(_umount, disk)
                env["MDS_RECORD_FILE"] = str(disk / "frames.jsonl")
            else:
                report.skipped["disk.full"] = why
        if name == "ha":
            env["MDS_HA"] = "true"
            env["MDS_HA_LEASE_TTL"] = str(HA_TTL_S)
            count = 2
        else:
            count = 1
        for i in range(count):
            instance = Instance(f"{name}-{i}", dict(env), directory / f"service-{i}")
            scene.instances.append(instance)
            scene.start_instance(instance)
            stack.callback(instance.kill)
        scene.reader = PriceReader(scene.redis_url, cluster=scene.cluster is not None)
        stack.callback(scene.reader.close)
        yield scene


class _DelayedGateway(PositionsGateway):
    """The fault helpers' positions gateway, answering after ``scene.gateway_delay_s``."""

    def __init__(self, scene: Scene, symbols: list[str]) -> None:
        super().__init__(symbols)
        self._scene = scene

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._scene.gateway_delay_s:
            await trio.sleep(self._scene.gateway_delay_s)  # the fault: a slow source
        await super()._handle(stream)


# ------------------------------------------------------------------------------------ faults


@dataclass
class Active:
    """A fault in force: how to clear it."""

    name: str
    clear: Callable[[], Awaitable[None]]
    affects: frozenset[str] = frozenset()
    """For a kind that does not interrupt every price: the symbols it may interrupt (those on
    a killed master or a migrating slot); the others must keep being published."""
    serves_for_s: float | None = None
    """The others only for this long (the cluster goes down after a master's node timeout)."""


async def _nothing() -> None:
    return None


async def _thread(fn: Callable[[], object]) -> None:
    await anyio.to_thread.run_sync(fn)


def _leader(scene: Scene, healths: dict[str, dict[str, object] | None]) -> Instance | None:
    for inst in scene.instances:
        h = healths.get(inst.name)
        if h is not None and h.get("role") == "leader" and inst.alive:
            return inst
    return None


async def healths_of(scene: Scene) -> dict[str, dict[str, object] | None]:
    out: dict[str, dict[str, object] | None] = {}
    for inst in scene.instances:
        if inst.service is None or not inst.alive or inst.frozen:
            out[inst.name] = None
            continue
        with anyio.move_on_after(1.5):
            out[inst.name] = await inst.service.health()
        out.setdefault(inst.name, None)
    return out


class Injector:
    """Injects the catalog's faults into a scene (one method per kind)."""

    def __init__(self, scene: Scene, engine: Engine) -> None:
        self.scene = scene
        self.engine = engine

    async def inject(self, name: str) -> Active | None:
        method = getattr(self, "_" + name.replace(".", "_"))
        active: Active | None = await method()
        return active

    # --- feed ------------------------------------------------------------------------------

    async def _feed_drop(self) -> Active:
        faults = self.scene.server.faults
        faults.drop_every_s = 1.0
        await self.scene.server.drop_connections()

        async def clear() -> None:
            faults.drop_every_s = None

        return Active("feed.drop", clear)

    async def _feed_drop_rst(self) -> Active:
        faults = self.scene.server.faults
        faults.drop_with_rst = True
        faults.drop_every_s = 1.0
        await self.scene.server.drop_connections()

        async def clear() -> None:
            faults.drop_every_s = None
            faults.drop_with_rst = False

        return Active("feed.drop_rst", clear)

    async def _feed_close_1001(self) -> Active:
        for session in list(self.scene.server.sessions.values()):
            session.stop()  # the server then sends close 1001 ("going away")
        return Active("feed.close_1001", _nothing)

    async def _feed_stall(self) -> Active:
        faults = self.scene.server.faults
        faults.stall = True

        async def clear() -> None:
            faults.stall = False

        return Active("feed.stall", clear)

    async def _feed_malformed(self) -> Active:
        faults = self.scene.server.faults
        faults.malformed_every = 3

        async def clear() -> None:
            faults.malformed_every = None

        return Active("feed.malformed", clear)

    async def _feed_send_407(self) -> Active:
        faults = self.scene.server.faults
        faults.send_407_then_close = True

        async def clear() -> None:
            faults.send_407_then_close = False

        return Active("feed.send_407", clear)

    async def _feed_reject_406(self) -> Active:
        faults = self.scene.server.faults
        faults.reject_connections_with_406 = True
        await self.scene.server.drop_connections()

        async def clear() -> None:
            faults.reject_connections_with_406 = False

        return Active("feed.reject_406", clear)

    async def _feed_http_429(self) -> Active:
        faults = self.scene.server.faults
        faults.http_429_at_upgrade = True
        await self.scene.server.drop_connections()

        async def clear() -> None:
            faults.http_429_at_upgrade = False

        return Active("feed.http_429", clear)

    async def _feed_http_500(self) -> Active:
        proxy = self.scene.proxy
        proxy.http_500_new = True
        await self.scene.server.drop_connections()

        async def clear() -> None:
            proxy.http_500_new = False

        return Active("feed.http_500", clear)

    async def _feed_half_open(self) -> Active:
        proxy = self.scene.proxy
        proxy.freeze()
        proxy.blackhole_new = True

        async def clear() -> None:
            # The old connections finally die (the server frees the slot); new ones pass. A
            # connection accepted while black-holed stays unanswered: the client must give up.
            proxy.close_frozen()
            proxy.blackhole_new = False

        return Active("feed.half_open", clear)

    async def _feed_slow_drip(self) -> Active:
        proxy = self.scene.proxy
        proxy.drip()
        proxy.drip_new = True

        async def clear() -> None:
            proxy.drip_new = False  # connections already dripping keep dripping

        return Active("feed.slow_drip", clear)

    async def _feed_future_stamp(self) -> Active:
        quote = {
            "T": "q", "S": SYMBOLS[0], "bx": "V", "bp": 100.0, "bs": 1, "ax": "V",
            "ap": 100.02, "as": 1, "c": ["R"], "z": "C", "t": "2099-01-01T00:00:00Z",
        }  # fmt: skip
        self.scene.proxy.inject(text_frame(orjson.dumps([quote])))
        return Active("feed.future_stamp", _nothing)

    # --- Redis ---------------------------------------------------------------------------

    async def _redis_kill_restart(self) -> Active:
        server = self.scene.redis
        assert server is not None
        await _thread(server.kill9)

        async def clear() -> None:
            await _thread(server.start)  # empty: no persistence

        return Active("redis.kill_restart", clear)

    async def _redis_pause(self) -> Active:
        server = self.scene.redis
        assert server is not None
        server.pause()

        async def clear() -> None:
            server.resume()

        return Active("redis.pause", clear)

    async def _config(self, *args: str) -> None:
        def run() -> None:
            with self.scene.client() as c:
                c.execute_command(*args)

        await _thread(run)

    async def _redis_oom(self) -> Active:
        await self._config("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await self._config("CONFIG", "SET", "maxmemory", "1")

        async def clear() -> None:
            await self._config("CONFIG", "SET", "maxmemory", "0")

        return Active("redis.oom", clear)

    async def _redis_readonly(self) -> Active:
        # A master that is not there, so the server stays a read-only replica. The port is held
        # (bound, never listening) until the fault clears: a port merely found free could be
        # taken by another process's Redis, and ours would then sync (and lose) its data.
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", 0))
            await self._config("REPLICAOF", "127.0.0.1", str(held.getsockname()[1]))
        except BaseException:
            held.close()
            raise

        async def clear() -> None:
            try:
                await self._config("REPLICAOF", "NO", "ONE")
            finally:
                held.close()

        return Active("redis.readonly", clear)

    async def _redis_flushall(self) -> Active:
        await self._config("FLUSHALL")
        self.engine.forget_cached()
        return Active("redis.flushall", _nothing)

    async def _redis_script_flush(self) -> Active:
        await self._config("SCRIPT", "FLUSH")
        return Active("redis.script_flush", _nothing)

    # --- positions -----------------------------------------------------------------------

    async def _positions_slow(self) -> Active:
        self.scene.gateway_delay_s = 8.0

        async def clear() -> None:
            self.scene.gateway_delay_s = 0.0

        return Active("positions.slow", clear)

    async def _positions_garbage(self) -> Active:
        gateway = self.scene.gateway
        assert gateway is not None
        good = gateway.body
        gateway.body = b'{"positions": [{"symbol": "AAPL", "qty": "NaN"}, {"symbol": 7}], "x":'

        async def clear() -> None:
            gateway.body = good

        return Active("positions.garbage", clear)

    async def _positions_error_500(self) -> Active:
        gateway = self.scene.gateway
        assert gateway is not None
        gateway.status = 500

        async def clear() -> None:
            gateway.status = 200

        return Active("positions.error_500", clear)

    # --- disk ----------------------------------------------------------------------------

    async def _disk_full(self) -> Active | None:
        disk = self.scene.disk
        if disk is None:
            return None
        filler = disk / "filler"

        def fill() -> None:
            # Down to the last byte: a few KB left would take the recording many seconds to use.
            with filler.open("wb", buffering=0) as f:
                for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
                    block = b"\0" * size
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(block)

        await _thread(fill)

        async def clear() -> None:
            filler.unlink(missing_ok=True)

        return Active("disk.full", clear)

    # --- signals -------------------------------------------------------------------------

    async def _exit_on(self, sig: signal.Signals, name: str) -> Active:
        inst = self.scene.instances[0]
        inst.expected_exit = True
        sent = anyio.current_time()
        inst.signal(sig)
        assert inst.service is not None
        service = inst.service
        try:
            code: int | None = await service.wait_exit(EXIT_WITHIN_S + 2)
        except TimeoutError:
            code = None
        took = anyio.current_time() - sent
        self.engine.check(
            "clean_exit",
            code == 0 and took <= EXIT_WITHIN_S,
            f"{sig.name}: exit code {code} after {took:.2f} s (want 0 within {EXIT_WITHIN_S} s)"
            f"\n{inst.log_tail(600)}",
        )
        if code is None:
            inst.kill()

        async def clear() -> None:
            self.scene.start_instance(inst)  # the supervisor starts it again

        return Active(name, clear)

    async def _signal_sigterm(self) -> Active:
        return await self._exit_on(signal.SIGTERM, "signal.sigterm")

    async def _signal_sighup(self) -> Active:
        return await self._exit_on(signal.SIGHUP, "signal.sighup")

    async def _signal_sigstop(self) -> Active:
        inst = self.scene.instances[0]
        inst.signal(signal.SIGSTOP)
        inst.frozen = True

        async def clear() -> None:
            inst.signal(signal.SIGCONT)
            inst.frozen = False

        return Active("signal.sigstop", clear)

    # --- active/standby --------------------------------------------------------------------

    async def _ha_leader(self) -> Instance | None:
        with anyio.move_on_after(10):
            while True:
                leader = _leader(self.scene, await healths_of(self.scene))
                if leader is not None:
                    return leader
                await anyio.sleep(SAMPLE_S)
        return None

    async def _ha_leader_kill(self) -> Active | None:
        leader = await self._ha_leader()
        if leader is None:
            self.engine.check("ha_leader", False, "no instance says it leads")
            return None
        leader.expected_exit = True
        leader.kill()

        async def clear() -> None:
            self.scene.start_instance(leader)

        return Active("ha.leader_kill", clear)

    async def _ha_flushall(self) -> Active:
        """Redis loses its data under an active/standby pair (the lease and its token too)."""
        return await self._redis_flushall()

    async def _ha_leader_freeze(self) -> Active | None:
        leader = await self._ha_leader()
        if leader is None:
            self.engine.check("ha_leader", False, "no instance says it leads")
            return None
        leader.signal(signal.SIGSTOP)
        leader.frozen = True

        async def clear() -> None:
            leader.signal(signal.SIGCONT)
            leader.frozen = False

        return Active("ha.leader_freeze", clear)

    # --- Redis Cluster ---------------------------------------------------------------------

    async def _cluster_master_kill(self) -> Active:
        cluster = self.scene.cluster
        assert cluster is not None
        # The master of a subscribed symbol's slot (a master holding none of them would be a
        # fault the service cannot see before the cluster marks it failed).
        symbol = SYMBOLS[self.engine.rng_index(len(SYMBOLS))]
        port = await anyio.to_thread.run_sync(lambda: _owner_port(cluster, f"price:{symbol}"))
        node = next(n for n in cluster.nodes if n.port == port)
        symbols = self.scene.symbols
        affects = await anyio.to_thread.run_sync(lambda: _on_node(cluster, port, symbols))
        await _thread(node.kill9)

        async def clear() -> None:
            await _thread(node.start)  # rejoins from its nodes.conf with its slots, empty
            await _thread(lambda: _wait_cluster_ok(cluster))

        return Active("cluster.master_kill", clear, affects, CLUSTER_SERVES_S)

    async def _cluster_reshard(self) -> Active:
        cluster = self.scene.cluster
        assert cluster is not None
        symbol = SYMBOLS[self.engine.rng_index(len(SYMBOLS))]
        await _thread(lambda: _migrate_slot(cluster, f"price:{symbol}"))
        return Active("cluster.reshard", _nothing, frozenset({symbol}))


def _wait_cluster_ok(cluster: RedisClusterHandle, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if all(_cluster_ok(n) for n in cluster.nodes):
                return
        except (redis_lib.RedisError, OSError):
            pass
        time.sleep(0.1)  # polling the cluster's state, bounded by the deadline
    raise SoakError("the cluster did not come back to cluster_state:ok")


def _cluster_ok(node: RedisServer) -> bool:
    with node.client() as c:
        info: bytes = c.execute_command("CLUSTER", "INFO")
    return b"cluster_state:ok" in info


def _node_ids(cluster: RedisClusterHandle) -> dict[int, str]:
    ids: dict[int, str] = {}
    for node in cluster.nodes:
        with node.client() as c:
            ids[node.port] = c.execute_command("CLUSTER", "MYID").decode()
    return ids


def _on_node(cluster: RedisClusterHandle, port: int, symbols: tuple[str, ...]) -> frozenset[str]:
    """The symbols whose price key or channel lives on the master at ``port``."""
    return frozenset(
        s
        for s in symbols
        if port in (_owner_port(cluster, f"price:{s}"), _owner_port(cluster, f"price.updated.{s}"))
    )


def _owner_port(cluster: RedisClusterHandle, key: str) -> int:
    """The port of the master that owns ``key``'s slot (asked of a node that is up)."""
    for node in cluster.nodes:
        if not node.running:
            continue
        with node.client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
    raise SoakError(f"no node of the cluster knows the owner of {key}")


def _migrate_slot(cluster: RedisClusterHandle, key: str, pause_s: float = 1.0) -> None:
    """Move the slot of ``key`` to another master, step by step as ``redis-cli --cluster
    reshard`` does, staying ``pause_s`` in the migrating state while the service writes."""
    ids = _node_ids(cluster)
    owner_port = _owner_port(cluster, key)
    with cluster.nodes[0].client() as c:
        slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
    source = next(n for n in cluster.nodes if n.port == owner_port)
    target = next(n for n in cluster.nodes if n.port != owner_port)
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        time.sleep(pause_s / 2)  # the fault: a slot mid-migration while the service writes
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
        time.sleep(pause_s / 2)
        for node in (target, source, *cluster.nodes):
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])


# ------------------------------------------------------------------------------------ engine


class Engine:
    def __init__(self, plan: Plan, *, echo: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.report = Report(plan.seed, plan.total_s)
        self.echo = echo or (lambda _line: None)
        self._t0 = 0.0
        self._episode = "start-up"
        self._cached: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self.flow = FlowWatch()
        self._rng_state = plan.seed
        self._degraded_seen = False
        self._scene: Scene | None = None
        self._reported: dict[tuple[str, str], Violation] = {}

    # --- bookkeeping -----------------------------------------------------------------------

    def now_s(self) -> float:
        return anyio.current_time() - self._t0

    def check(self, invariant: str, ok: bool, detail: str) -> bool:
        self.report.checks[invariant] += 1
        if not ok:
            first = self._reported.get((invariant, self._episode))
            if first is not None:
                first.repeats += 1
                return ok
            v = Violation(self.now_s(), invariant, detail, self._episode)
            self._reported[(invariant, self._episode)] = v
            self.report.violations.append(v)
            self.echo(f"VIOLATION [{v.at_s:.1f} s] {invariant}: {detail}")
        return ok

    def rng_index(self, n: int) -> int:
        self._rng_state = (self._rng_state * 1103515245 + 12345) % (1 << 31)
        return self._rng_state % n

    def forget_cached(self) -> None:
        self._cached.clear()

    # --- the run -----------------------------------------------------------------------------

    async def run(self, base: Path | None = None) -> Report:
        self._t0 = anyio.current_time()
        started = time.monotonic()
        own = base is None
        base = base or Path(tempfile.mkdtemp(prefix="mds-chaos-"))
        try:
            for block in self.plan.blocks:
                deadline = self._t0 + sum(b.length_s for b in self.plan.blocks[: block.index + 1])
                self.echo(f"block {block.index + 1}/{len(self.plan.blocks)}: scene {block.scene}")
                await self._run_block(block.scene, self.plan.episodes(block), deadline, base)
        finally:
            self.report.elapsed_s = time.monotonic() - started
            if own:
                shutil.rmtree(base, ignore_errors=True)
        return self.report

    async def _run_block(
        self, scene_name: str, episodes: Iterator[Episode], deadline: float, base: Path
    ) -> None:
        self._cached.clear()
        self._published.clear()
        self.flow = FlowWatch()
        async with (
            open_scene(scene_name, base, self.report) as scene,
            anyio.create_task_group() as tg,
        ):
            self._scene = scene
            injector = Injector(scene, self)
            self._episode = f"{scene_name} start-up"
            tg.start_soon(self._monitor_published, scene)  # the settle waits for publishes too
            await self._settle(scene, 30.0, "start-up")
            tg.start_soon(self._monitor_processes, scene)
            tg.start_soon(self._monitor_redis, scene)
            tg.start_soon(self._monitor_flow, scene)
            if scene_name == "ha":
                tg.start_soon(self._monitor_leaders, scene)
            for episode in episodes:
                longest = max(BY_NAME[n].settle_s for n, _ in episode.faults)
                if anyio.current_time() + episode.hold_s + longest > deadline:
                    break
                await self._play(scene, injector, episode)
            tg.cancel_scope.cancel()
        self._scene = None

    async def _play(self, scene: Scene, injector: Injector, episode: Episode) -> None:
        label = episode.describe()
        self._episode = f"#{len(self.report.played) + 1} {label}"
        self.report.played.append(f"[{self.now_s():7.1f} s] {scene.name}: {label}")
        self.echo(f"[{self.now_s():7.1f} s] {scene.name}: {label}")
        active: list[Active] = []
        interrupts = any(BY_NAME[name].interrupts for name, _ in episode.faults)
        if interrupts:
            self.flow.pause()  # every price may stop: nothing expected until settled
        for name, _hold in episode.faults:
            got = await injector.inject(name)
            if got is None:
                self.report.skipped.setdefault(name, "not applicable in this scene")
                continue
            self.report.faults[name] += 1
            active.append(got)
        self.expect_during(active, interrupts, anyio.current_time())
        degrades = any(BY_NAME[a.name].degrades for a in active)
        seen_degraded = await self._hold(scene, episode.hold_s)
        if degrades:
            self.check(
                "health_degraded_during_fault",
                seen_degraded,
                "/health said healthy all along while the fault was active",
            )
        if interrupts or any(a.affects for a in active):
            self.flow.pause()  # clearing may restart or reconnect things
        for a in reversed(active):
            await a.clear()
        settle = max((BY_NAME[a.name].settle_s for a in active), default=10.0)
        await self._settle(scene, settle, label)

    def expect_during(self, active: list[Active], interrupts: bool, now: float) -> None:
        """While faults that do not interrupt every price are active: a shard's fault exempts
        its symbols (for as long as the rest of the cluster serves), the others must flow."""
        if interrupts:
            return
        affects = frozenset().union(*(a.affects for a in active))
        if not affects:
            return  # prices flow on, as expected since the last settle
        serves = [a.serves_for_s for a in active if a.serves_for_s is not None]
        until = now + min(serves) if serves else None
        self.flow.expect(now, SHARD_GAP_S, exempt=affects, until=until)

    async def _hold(self, scene: Scene, hold_s: float) -> bool:
        """Sample /health while the fault holds; whether any instance stopped being healthy
        (unreachable counts) within :data:`DETECT_S` or the hold."""
        seen = False
        end = anyio.current_time() + hold_s
        while anyio.current_time() < end:
            healths = await healths_of(scene)
            if any(h is None or h.get("status") != "healthy" for h in healths.values()):
                seen = True
            await anyio.sleep(SAMPLE_S)
        return seen

    async def _settle(self, scene: Scene, within_s: float, label: str) -> None:
        """After the faults cleared: every symbol fresh in Redis and every instance healthy
        (with one leader in HA) within ``within_s``."""
        start = anyio.current_time()
        for inst in scene.instances:  # a supervisor restarts what died
            if not inst.alive:
                scene.start_instance(inst)
        deadline = start + within_s
        stale: list[str] = []
        unpublished: list[str] = []
        unhealthy: dict[str, object] = {}
        while True:
            stale = await self._stale_symbols(scene)
            # Cached is not enough: each symbol must also be published again (defect 9 cached
            # and never published).
            unpublished = self.flow.unpublished_since(scene.symbols, start)
            healths = await healths_of(scene)
            unhealthy = {
                n: (h.get("status"), h.get("detail")) if h else None
                for n, h in healths.items()
                if h is None or h.get("status") != "healthy"
            }
            leaders = [n for n, h in healths.items() if h and h.get("role") == "leader"]
            if not stale and not unpublished and not unhealthy and len(leaders) == 1:
                self.report.checks["fresh_after_faults"] += 1
                self.report.checks["published_after_faults"] += 1
                self.report.checks["healthy_after_faults"] += 1
                self.flow.expect(anyio.current_time(), GAP_S)  # from now on, all must flow
                return
            if anyio.current_time() > deadline:
                break
            await anyio.sleep(SAMPLE_S)
        self.check(
            "fresh_after_faults",
            not stale,
            f"not fresh {within_s:.0f} s after the faults cleared: {stale}",
        )
        self.check(
            "published_after_faults",
            not unpublished,
            f"nothing published {within_s:.0f} s after the faults cleared for: {unpublished}",
        )
        self.check(
            "healthy_after_faults",
            not unhealthy,
            f"/health not healthy {within_s:.0f} s after the faults cleared: {unhealthy}"
            + "".join(f"\n--- {i.name} log ---\n{i.log_tail()}" for i in scene.instances),
        )
        # Go on from a clean slate: restart what does not recover by itself.
        self._cached.clear()
        self._published.clear()
        for inst in scene.instances:
            inst.kill()
            inst.expected_exit = False
            scene.start_instance(inst)
        self.report.played.append(f"[{self.now_s():7.1f} s] {scene.name}: (restarted)")
        with anyio.move_on_after(20):
            while await self._stale_symbols(scene):  # noqa: ASYNC110 (polling Redis)
                await anyio.sleep(SAMPLE_S)

    async def _stale_symbols(self, scene: Scene) -> list[str]:
        assert scene.reader is not None
        now = time.time_ns()
        try:
            with anyio.fail_after(3):
                cached = await scene.reader.get_many(scene.symbols)
        except (ConnectionError, TimeoutError):
            return list(scene.symbols)
        oldest, newest = now - int(FRESH_S * 1e9), now + int(FUTURE_SLACK_S * 1e9)
        return [
            s
            for s in scene.symbols
            if s not in cached or not oldest <= cached[s].price.ts_event_ns <= newest
        ]

    # --- monitors --------------------------------------------------------------------------

    async def _monitor_processes(self, scene: Scene) -> None:
        while True:
            for inst in scene.instances:
                svc = inst.service
                if svc is None:
                    continue
                code = svc.proc.poll()
                if code is not None and not inst.expected_exit:
                    self.check(
                        "process_alive",
                        False,
                        f"{inst.name} exited with {code}\n{inst.log_tail()}",
                    )
                    inst.expected_exit = True  # reported once; the settle step restarts it
                elif code is None:
                    self.report.checks["process_alive"] += 1
                    rss = _rss_mb(svc.pid)
                    if rss is not None:
                        self.report.peak_rss_mb = max(self.report.peak_rss_mb, rss)
                        self.check(
                            "rss_bounded",
                            rss <= RSS_LIMIT_MB,
                            f"{inst.name} RSS {rss:.0f} MB > {RSS_LIMIT_MB:.0f} MB",
                        )
            await anyio.sleep(0.5)

    async def _monitor_redis(self, scene: Scene) -> None:
        """The cached price of each symbol never goes back in time (a vanished key resets the
        baseline: a flush or an empty restart), and is never stamped in the future."""
        assert scene.reader is not None
        while True:
            await anyio.sleep(0.5)
            try:
                with anyio.fail_after(3):
                    cached = await scene.reader.get_many(scene.symbols)
            except (ConnectionError, TimeoutError):
                continue
            now = time.time_ns()
            for s in scene.symbols:
                if s not in cached:
                    self._cached.pop(s, None)
                    continue
                ts = cached[s].price.ts_event_ns
                before = self._cached.get(s, 0)
                self.check(
                    "cache_never_older",
                    ts >= before,
                    f"price:{s} went back in time: {before} -> {ts}",
                )
                if not self.check(
                    "cache_not_in_future",
                    ts <= now + int(FUTURE_SLACK_S * 1e9),
                    f"price:{s} stamped {(ts - now) / 1e9:.0f} s in the future",
                ):
                    continue  # reported; not a baseline for the order check
                self._cached[s] = max(ts, before)

    async def _monitor_flow(self, scene: Scene) -> None:
        """No expected symbol's published stream goes quiet for longer than the gap bound
        (:class:`~entrypoints.chaos.flow.FlowWatch`)."""
        while True:
            await anyio.sleep(0.1)
            self.check_flow(scene.symbols, anyio.current_time())

    def check_flow(self, symbols: tuple[str, ...], now: float) -> None:
        if not self.flow.expecting:
            return
        quiet = self.flow.quiet(symbols, now)
        self.check(
            "published_without_gap",
            not quiet,
            "nothing published while expected: "
            + ", ".join(f"{s} for {q:.1f} s" for s, q in sorted(quiet.items()))
            + f" (bound {self.flow.gap_s:g} s; exempt: {sorted(self.flow.exempt) or 'none'})",
        )

    async def _monitor_published(self, scene: Scene) -> None:
        """Every published price of a symbol is newer than the one before (per subscription;
        a lost subscription is re-made; a cluster shard's gap is read through: the order
        check needs no re-read of the cache)."""
        assert scene.reader is not None
        while True:
            try:
                async with scene.reader.subscribe(scene.symbols) as updates:
                    while True:
                        try:
                            async for price in updates:
                                self._published_one(price)
                            break
                        except SubscriptionGap:
                            continue
            except ConnectionError:
                await anyio.sleep(SAMPLE_S)

    def _published_one(self, price: Price) -> None:
        self.flow.published(price.symbol, anyio.current_time())
        if not self.check(
            "published_not_in_future",
            price.ts_event_ns <= time.time_ns() + int(FUTURE_SLACK_S * 1e9),
            f"{price.symbol} published stamped {price.timestamp}",
        ):
            return  # reported; not a baseline for the order check
        before = self._published.get(price.symbol, 0)
        self.check(
            "published_in_order",
            price.ts_event_ns >= before,
            f"{price.symbol} published {price.ts_event_ns} after {before}",
        )
        self._published[price.symbol] = max(before, price.ts_event_ns)

    async def _monitor_leaders(self, scene: Scene) -> None:
        """At most one instance says it leads and is connected, beyond a short grace."""
        both_since: float | None = None
        while True:
            healths = await healths_of(scene)
            streaming = [
                n
                for n, h in healths.items()
                if h and h.get("role") == "leader" and h.get("websocket_connected")
            ]
            leaders = [n for n, h in healths.items() if h and h.get("role") == "leader"]
            sessions = sum(1 for s in scene.server.sessions.values() if s.authenticated)
            self.check("one_session_at_venue", sessions <= 1, f"{sessions} sessions at once")
            now = anyio.current_time()
            if len(leaders) > 1 or len(streaming) > 1:
                both_since = both_since if both_since is not None else now
                if now - both_since > TWO_LEADERS_GRACE_S:
                    self.check(
                        "one_leader",
                        False,
                        f"{leaders} all say role leader for {now - both_since:.1f} s "
                        f"(connected: {streaming})",
                    )
                    both_since = None
            else:
                both_since = None
                self.report.checks["one_leader"] += 1
            await anyio.sleep(0.25)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def soak(
    plan: Plan, *, echo: Callable[[str], None] | None = None, base: Path | None = None
) -> Report:
    """Run ``plan`` on trio (inside ``anyio.run(..., backend="trio")``)."""
    return await Engine(plan, echo=echo).run(base)


def run_soak(
    plan: Plan, *, echo: Callable[[str], None] | None = None, base: Path | None = None
) -> Report:
    """Blocking entry point for the CLI. SIGTERM, SIGHUP or Ctrl-C end the run early: every
    process it started is stopped and the report so far is returned (``interrupted`` set)."""
    engine = Engine(plan, echo=echo)

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(
                    signal.SIGTERM, signal.SIGHUP, signal.SIGINT
                ) as signals:
                    async for signum in signals:
                        engine.report.interrupted = signal.Signals(signum).name
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await engine.run(base)
            tg.cancel_scope.cancel()

    anyio.run(main, backend="trio")
    return engine.report


__all__ = ["Engine", "Report", "SoakError", "Violation", "run_soak", "soak"]
