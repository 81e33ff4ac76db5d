"""A local Alpaca-compatible market-data stream server on trio-websocket.

It is the paper-mode feed, the double for end-to-end and fault tests, and the load generator for
benchmarks. It serves the endpoints of ``config.endpoints`` by path (stocks: ``/v2/iex``,
``/v2/sip``, ``/v2/delayed_sip``, ``/v2/test``; see ``endpoints.py``) and refuses any other path
with HTTP 404 at the upgrade, as Alpaca does. The wire protocol follows Alpaca's: ``connected``
on connect, message auth within ``auth_timeout_s``, ``connection_limit`` sessions per key and
endpoint, subscribe/unsubscribe acked with the full set, the documented error codes, JSON text
frames or msgpack binary frames (upgrade header ``Content-Type: application/msgpack``).

Data are random-walk quotes and trades for the subscribed symbols only, at ``rate`` messages per
second per connection in frames of ``batch`` messages, pre-encoded (see ``frames.py``); every
quote's and trade's ``t`` is the server's wall-clock send time.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import anyio
import anyio.abc
import trio
from trio_websocket import WebSocketRequest, wrap_server_stream

from adapters.alpaca_compatible_server import rest
from adapters.alpaca_compatible_server.config import Faults, ServerConfig
from adapters.alpaca_compatible_server.endpoints import Endpoint, endpoint_map, request_path
from adapters.alpaca_compatible_server.frames import WireFormat, codec_for
from adapters.alpaca_compatible_server.host import ServerStats, SessionHost
from adapters.alpaca_compatible_server.session import Session

__all__ = ["AlpacaCompatibleServer", "ServerStats"]

logger = logging.getLogger(__name__)


class AlpacaCompatibleServer:
    """Serve Alpaca's stream protocol on ``config.host:config.port``, one stream per endpoint.

    Tests run it in-process: ``port = await nursery.start(server.run)``. Counters
    (:attr:`stats`), live sessions (:attr:`sessions`) and the live faults (:attr:`faults`) are
    plain attributes; :meth:`wait_until` waits for a condition on them without polling.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self._config = config or ServerConfig()
        self._endpoints = endpoint_map(self._config.endpoints)
        self._faults: Faults = replace(self._config.faults)
        """Live fault switches, read by every session; assign attributes to flip them."""
        self._stats = ServerStats()
        self.sessions: dict[int, Session] = {}
        """Open WebSocket sessions by id (authenticated or not)."""
        self.ended_sessions: deque[Session] = deque(maxlen=100)
        """The most recent sessions that ended, oldest first."""
        self._ids = itertools.count(1)
        self._slots: dict[tuple[str, str], list[int]] = {}
        """Session ids holding a connection slot, by (key, endpoint path)."""
        self._changed = trio.lowlevel.ParkingLot()
        self._port: int | None = None
        self._stopping = False
        self._connections: dict[trio.CancelScope, Session | None] = {}
        """Every connection's (shielded) scope, and its session once upgraded."""

    @property
    def config(self) -> ServerConfig:
        return self._config

    @property
    def faults(self) -> Faults:
        """Live fault switches, read by every session; assign attributes to flip them."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults

    @property
    def stats(self) -> ServerStats:
        return self._stats

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """The endpoints served, by path."""
        return dict(self._endpoints)

    @property
    def port(self) -> int:
        """The bound port. Raises ``RuntimeError`` before :meth:`run` has started."""
        if self._port is None:
            raise RuntimeError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port``; append an endpoint's path, e.g. ``/v2/iex``."""
        host = self.config.host
        return f"ws://[{host}]:{self.port}" if ":" in host else f"ws://{host}:{self.port}"

    @property
    def active_sessions(self) -> dict[str, Session]:
        """Authenticated sessions by key id (the most recent one per key, on any endpoint)."""
        return {key: self.sessions[ids[-1]] for (key, _), ids in self._slots.items() if ids}

    def sessions_on(self, path: str) -> list[Session]:
        """Open sessions on the endpoint at ``path``, oldest first."""
        return [s for s in self.sessions.values() if s.path == path]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the port through ``task_status.started(port)``, serve until cancelled.

        On cancellation every open session gets a close frame (1001, going away) within
        ``close_timeout_s``. A failing connection is logged and never takes the server down.
        Raises ``OSError`` if the address cannot be bound.
        """
        cfg = self.config
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        self._port = listeners[0].socket.getsockname()[1]
        self._stopping = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
                logger.info("Alpaca-compatible server listening on %s (%r)", self.url, cfg)
                task_status.started(self.port)
                try:
                    await trio.sleep_forever()
                finally:
                    # Connections are shielded from this cancellation so that each session can
                    # still complete its close handshake (trio-websocket's reader must live for
                    # that); ask them to stop instead, and bound the time they take.
                    self._stop_connections()
        finally:
            logger.info("Alpaca-compatible server on port %s stopped", self._port)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checking whenever a counter or a session
        changes. Never times out: bound it with ``fail_after``."""
        while not predicate():
            await self._changed.park()

    async def drop_connections(self) -> None:
        """Close every open connection abruptly (no close frame), now."""
        for session in list(self.sessions.values()):
            await session.abort("drop_connections()")

    # ------------------------------------------------------------------ used by the sessions

    def notify(self) -> None:
        """Wake :meth:`wait_until` callers (cheap when nobody waits)."""
        if self._changed:
            self._changed.unpark_all()

    def credentials_valid(self, key: str, secret: str) -> bool:
        if not key or not secret:
            return False
        keys = self.config.keys
        if keys is None:
            return True
        expected = keys.get(key)
        return expected is not None and hmac.compare_digest(expected.encode(), secret.encode())

    def claim_slot(self, key: str, endpoint: str, session_id: int) -> bool:
        holders = self._slots.setdefault((key, endpoint), [])
        if len(holders) >= self._config.connection_limit:
            return False
        holders.append(session_id)
        return True

    def _release_slot(self, session: Session) -> None:
        if session.key is None:
            return
        slot = (session.key, session.path)
        holders = self._slots.get(slot, [])
        if session.id in holders:
            holders.remove(session.id)
        if not holders:
            self._slots.pop(slot, None)

    def record_client_close(self, code: int) -> None:
        self.stats.client_close_codes.append(code)
        self.notify()

    # --------------------------------------------------------------------------- connections

    def _stop_connections(self) -> None:
        self._stopping = True
        deadline = trio.current_time() + 2 * self.config.close_timeout_s
        for scope, session in self._connections.items():
            scope.deadline = min(scope.deadline, deadline)
            if session is None:
                scope.cancel()  # not a WebSocket session yet: nothing to close gracefully
            else:
                session.stop()

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        self.stats.connections_accepted += 1
        self.stats.accept_times.append(trio.current_time())
        self.notify()
        scope = trio.CancelScope(shield=True)  # see run(): shutdown goes through _stop_connections
        self._connections[scope] = None
        try:
            with scope:
                if self._stopping:
                    return
                async with trio.open_nursery() as nursery:
                    try:
                        await self._serve(nursery, stream, scope)
                    finally:
                        nursery.cancel_scope.cancel()  # stops trio-websocket's reader task
        except Exception:
            logger.exception("connection handler failed; the server carries on")
        finally:
            del self._connections[scope]
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout_s):
                await stream.aclose()
            self.notify()

    async def _serve(
        self, nursery: trio.Nursery, stream: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        cfg = self.config
        request: WebSocketRequest | None = None
        with trio.move_on_after(cfg.handshake_timeout_s):
            head = await rest.read_head(stream)
            target = rest.rest_target(head)
            if target is not None:  # the market-data REST API's latest quotes (rest.py)
                self.stats.rest_requests += 1
                rng = random.Random(
                    None if cfg.seed is None else cfg.seed + self.stats.rest_requests
                )
                await stream.send_all(
                    rest.answer(head, target, self.credentials_valid, rng, time.time_ns())
                )
                return
            request = await wrap_server_stream(
                nursery, rest.Replayed(stream, head), max_message_size=cfg.max_client_message_bytes
            )
        if request is None:
            self.stats.handshake_timeouts += 1
            return
        if self.faults.http_429_at_upgrade:
            self.stats.upgrades_rejected += 1
            self.stats.rejected_upgrade_times.append(trio.current_time())
            self.notify()
            await request.reject(
                429, extra_headers=[(b"Retry-After", b"1")], body=b"Too Many Requests"
            )
            return
        endpoint = self._endpoints.get(request_path(request.path))
        if endpoint is None:
            self.stats.upgrades_rejected += 1
            self.stats.rejected_upgrade_times.append(trio.current_time())
            self.notify()
            await request.reject(404, body=b"Not Found")
            return
        fmt = WireFormat.MSGPACK if _wants_msgpack(request) else WireFormat.JSON
        conn = await request.accept()
        host: SessionHost = self
        session = Session(
            host,
            next(self._ids),
            stream,
            conn,
            codec_for(fmt),
            endpoint,
            header_credentials=_header_credentials(request),
        )
        self.sessions[session.id] = session
        self._connections[scope] = session
        self.notify()
        logger.debug("session %d opened on %s (%s)", session.id, request.path, fmt.value)
        try:
            await session.run()
        finally:
            del self.sessions[session.id]
            self._release_slot(session)
            self.ended_sessions.append(session)
            self.notify()
            with trio.CancelScope(shield=True), trio.move_on_after(cfg.close_timeout_s):
                # A no-op if the session closed already; else the server is shutting down.
                await conn.aclose(1001, "server shutting down")
            logger.info(
                "session %d ended by the %s: %d frames, %d messages sent, %d frames dropped",
                session.id,
                session.ended_by or "server",
                session.frames_sent,
                session.messages_sent,
                session.frames_dropped,
            )


def _header_credentials(request: WebSocketRequest) -> tuple[str, str] | None:
    """The keys of the upgrade's ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers (Alpaca's
    header auth), or None when the request has neither. One without the other fails auth (402),
    as wrong keys do."""
    found: dict[bytes, str] = {}
    for name, value in request.headers:
        lower = name.lower()
        if lower in (b"apca-api-key-id", b"apca-api-secret-key"):
            found[lower] = value.decode("latin-1").strip()
    if not found:
        return None
    return found.get(b"apca-api-key-id", ""), found.get(b"apca-api-secret-key", "")


def _wants_msgpack(request: WebSocketRequest) -> bool:
    for name, value in request.headers:
        if name.lower() == b"content-type" and b"application/msgpack" in value.lower():
            return True
    return False
