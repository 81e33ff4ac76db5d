"""Real redis-server processes for tests: standalone, a three-master cluster, and Sentinel.

Every server runs on a free loopback port (never 6379: the machine's shared Redis lives there),
without persistence, in its own temporary directory, and is stopped in fixture teardown, also
when a test fails. Start-up waits on a condition (PING answers, ``cluster_state:ok``, the sentinel
knows its master) under a deadline; nothing sleeps blindly.

The pytest fixtures built on these live in ``tests/redis_servers.py``; the helpers
(:func:`start_server`, :func:`start_cluster`, :func:`start_sentinel`) also serve the
benchmarks and the chaos soak (``mds chaos``), which is why they live in the installed package.
A missing ``redis-server`` binary fails loudly: ``scripts/test.sh`` installs it; skipping
silently would hide the whole Redis tier.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SHARED_REDIS_PORT = 6379
CLUSTER_BUS_OFFSET = 10_000
START_TIMEOUT_S = 10.0
# redis-py retries 10 times with backoff by default: polling must see each refusal at once.
_NO_RETRY = Retry(NoBackoff(), 0)


class RedisServerError(RuntimeError):
    """A test server could not be started."""


class RedisServerExited(RedisServerError):
    """The server exited during start-up (typically: another process took the port)."""


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RedisServerError(
            f"{name} not found on PATH: the Redis tests need a real server. Install it with "
            f"`sudo apt-get install redis-server` (scripts/test.sh does this on a fresh machine)."
        )
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_cluster_bus: bool = False) -> int:
    """A loopback port nobody listens on (and ``port + 10000`` too, for a cluster node's bus)."""
    for _ in range(200):
        port = random.randint(20_000, 55_000) if with_cluster_bus else _ephemeral_port()
        if port == SHARED_REDIS_PORT or port + CLUSTER_BUS_OFFSET == SHARED_REDIS_PORT:
            continue
        if not _port_is_free(port):
            continue
        if with_cluster_bus and not _port_is_free(port + CLUSTER_BUS_OFFSET):
            continue
        return port
    raise RedisServerError("no free port found")


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait_until(
    what: str,
    check: Callable[[], bool],
    deadline_s: float,
    proc: subprocess.Popen[bytes],
    log: Path,
) -> None:
    deadline = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        if proc.poll() is not None:
            raise RedisServerExited(
                f"redis-server exited with {proc.returncode} while waiting for {what}:\n"
                f"{_tail(log)}"
            )
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RedisServerError(
                f"timed out after {deadline_s} s waiting for {what}:\n{_tail(log)}"
            )
        time.sleep(delay)  # polling a subprocess's readiness; bounded by the deadline
        delay = min(delay * 2, 0.1)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(eq=False)
class RedisServer:
    """One redis-server subprocess on ``port``; ``restart()`` brings it back on the same port."""

    port: int
    directory: Path
    extra_args: tuple[str, ...] = ()
    config_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tls_port(self) -> int:
        """The TLS port this server listens on (asked on its plain port; 0 when none)."""
        with self.client(decode_responses=True) as c:
            return int(c.config_get("tls-port")["tls-port"])

    @property
    def log(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, *, decode_responses: bool = False) -> redis.Redis:
        """A plain client for assertions (close it, or use it as a context manager)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            decode_responses=decode_responses,
            retry=_NO_RETRY,
        )

    def start(self) -> None:
        if self.running:
            return
        argv = [_binary("redis-server")]
        if self.config_file is not None:
            argv.append(str(self.config_file))
        argv += [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until(f"PING on port {self.port}", self._pings, START_TIMEOUT_S, self.proc, self.log)

    def _pings(self) -> bool:
        with redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=_NO_RETRY,
        ) as c:
            try:
                return bool(c.ping())
            except redis.exceptions.AuthenticationError:
                return True  # it answered: up, and wants a password
            except redis.exceptions.ResponseError as e:
                return "NOAUTH" in str(e)

    def kill9(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its sockets open (a wedged host, half-open TCP)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`kill9` or :meth:`stop`); empty data."""
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()  # a paused server would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def start_server(
    directory: Path | None = None,
    *,
    extra_args: tuple[str, ...] | Callable[[], tuple[str, ...]] = (),
    with_cluster_bus: bool = False,
    config_file: Path | None = None,
) -> RedisServer:
    """Start a redis-server on a free port (retrying if another process grabs the port).

    redis-server cannot listen on port 0 and report the port (``--port 0`` and ``--tls-port 0``
    disable the listener), so a port is picked, and another is tried when the server exits at
    start-up because someone took it meanwhile. ``extra_args`` may be a function called for
    each attempt, so that ports it names (``--tls-port``) are picked again too; read such a
    port back from the server (:meth:`RedisServer.tls_port`)."""
    _binary("redis-server")
    base = directory or Path(tempfile.mkdtemp(prefix="mds-redis-"))
    last: Exception | None = None
    for _ in range(5):
        port = free_port(with_cluster_bus=with_cluster_bus)
        server_dir = base / str(port)
        server_dir.mkdir(parents=True, exist_ok=True)
        args = extra_args() if callable(extra_args) else extra_args
        server = RedisServer(port, server_dir, args, config_file)
        try:
            server.start()
        except RedisServerExited as e:  # port race: try another one
            server.stop()
            last = e
            continue
        return server
    raise RedisServerError(f"could not start redis-server: {last}")


@dataclass(eq=False)
class RedisClusterHandle:
    """A cluster: ``nodes`` are the masters as created (no replicas by default), ``replicas``
    one per master when asked for (``replicas[i]`` replicates ``nodes[i]`` at the start; a
    failover swaps roles). ``url`` points at the first node."""

    nodes: list[RedisServer]
    directory: Path
    replicas: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def servers(self) -> list[RedisServer]:
        return [*self.nodes, *self.replicas]

    def stop(self) -> None:
        for node in self.servers:
            node.stop()


def start_cluster(
    masters: int = 3,
    directory: Path | None = None,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 2000,
) -> RedisClusterHandle:
    """Start ``masters`` cluster-enabled servers (and ``replicas`` per master: 0 or 1), join
    them, and wait for ``cluster_state:ok`` (and every replica's link to its master).
    ``node_timeout_ms``: how long a silent master takes to be failed over by its replica."""
    if replicas not in (0, 1):
        raise ValueError("replicas: 0 or 1 per master")
    base = directory or Path(tempfile.mkdtemp(prefix="mds-redis-cluster-"))
    servers: list[RedisServer] = []
    try:
        for _ in range(masters * (1 + replicas)):
            port_dir = base / f"n{len(servers)}"
            port_dir.mkdir(parents=True, exist_ok=True)
            node = start_server(
                port_dir,
                with_cluster_bus=True,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # A replica may take over whatever the age of its data (tests kill masters
                    # right after start).
                    "--cluster-replica-validity-factor",
                    "0",
                ),
            )
            servers.append(node)
        nodes = servers[:masters]
        create = subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *[n.address for n in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if create.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed:\n{create.stdout.decode(errors='replace')}"
                f"\n{create.stderr.decode(errors='replace')}"
            )
        extra = servers[masters:]
        for master, replica in zip(nodes, extra, strict=False):
            _add_replica(master, replica)
        for node in servers:
            assert node.proc is not None

            def ok(node: RedisServer = node) -> bool:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    replication = c.info("replication")
                return bool(
                    replication.get("role") != "slave"
                    or replication.get("master_link_status") == "up"
                )

            _wait_until(
                f"cluster_state:ok on {node.port}", ok, START_TIMEOUT_S, node.proc, node.log
            )
    except BaseException:
        for node in servers:
            node.stop()
        raise
    return RedisClusterHandle(nodes, base, extra)


def _add_replica(master: RedisServer, replica: RedisServer) -> None:
    """Make ``replica`` a replica of ``master`` (as ``redis-cli --cluster add-node --cluster-slave
    --cluster-master-id`` does: MEET, then REPLICATE once the master is known)."""
    with master.client() as m:
        raw = m.execute_command("CLUSTER", "MYID")
    master_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    with replica.client() as r:
        r.execute_command("CLUSTER", "MEET", "127.0.0.1", master.port)

        def knows_master() -> bool:
            nodes = r.execute_command("CLUSTER", "NODES")
            text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
            return any(
                line.startswith(master_id) and "master" in line for line in text.splitlines()
            )

        assert replica.proc is not None
        _wait_until(
            f"{replica.port} meets {master.port}",
            knows_master,
            START_TIMEOUT_S,
            replica.proc,
            replica.log,
        )
        r.execute_command("CLUSTER", "REPLICATE", master_id)


@dataclass(eq=False)
class RedisSentinelHandle:
    """A master and one sentinel monitoring it under ``master_name``."""

    master: RedisServer
    sentinel: RedisServer
    master_name: str

    @property
    def sentinels(self) -> list[str]:
        return [self.sentinel.address]

    def stop(self) -> None:
        self.sentinel.stop()
        self.master.stop()


def start_sentinel(
    master_name: str = "mds-master",
    directory: Path | None = None,
    *,
    master_args: tuple[str, ...] | Callable[[], tuple[str, ...]] = (),
    monitor_tls_port: bool = False,
    sentinel_conf: str = "",
) -> RedisSentinelHandle:
    """Start a master and a sentinel (``redis-server <conf> --sentinel``) that knows it.

    ``master_args`` go to the master's command line (as ``extra_args`` of :func:`start_server`);
    the sentinel monitors (and so hands out) the master's port, or its TLS port with
    ``monitor_tls_port``; ``sentinel_conf`` is appended to its config file (e.g. TLS settings
    for reaching a master's TLS port)."""
    base = directory or Path(tempfile.mkdtemp(prefix="mds-redis-sentinel-"))
    master = start_server(base / "master", extra_args=master_args)
    try:
        sentinel_dir = base / "sentinel"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = sentinel_dir / "sentinel.conf"
        # Sentinel rewrites its config file, so it must be a writable file of its own.
        monitored = master.tls_port() if monitor_tls_port else master.port
        conf.write_text(
            f"sentinel monitor {master_name} 127.0.0.1 {monitored} 1\n"
            f"sentinel down-after-milliseconds {master_name} 5000\n" + sentinel_conf
        )
        sentinel = _start_sentinel_process(sentinel_dir, conf, master_name)
    except BaseException:
        master.stop()
        raise
    return RedisSentinelHandle(master, sentinel, master_name)


def _start_sentinel_process(directory: Path, conf: Path, master_name: str) -> RedisServer:
    for _ in range(5):
        port = free_port()
        sentinel = RedisServer(port, directory, ("--sentinel",), conf)
        argv = [
            _binary("redis-server"),
            str(conf),
            "--sentinel",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(sentinel.log),
        ]
        sentinel.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def knows_master(port: int = port) -> bool:
            with redis.Redis(
                host="127.0.0.1",
                port=port,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=_NO_RETRY,
            ) as c:
                return (
                    c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
                    is not None
                )

        try:
            _wait_until(
                f"sentinel on {port}", knows_master, START_TIMEOUT_S, sentinel.proc, sentinel.log
            )
        except RedisServerExited:
            sentinel.stop()
            continue
        return sentinel
    raise RedisServerError("could not start redis-server --sentinel")


def cleanup_dir(path: Path) -> None:
    """Remove a directory made by a helper outside pytest (benchmarks)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
