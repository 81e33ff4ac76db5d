"""One client connection: Alpaca's control protocol, the paced data sender and the fault hooks.

Three tasks share a session: the receiver (client actions), the sender (data frames) and the
monitor (auth timeout, timed drops, sends stuck on a full socket). Whichever ends first ends the
session. All writes go through trio-websocket's ``send_message``, which serialises them, so a
control reply never interleaves with a data frame.

Ordering guarantee: data for a newly subscribed symbol is only sent after the subscription ack;
data for an unsubscribed symbol is never sent after the ack.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from adapters.alpaca_compatible_server.config import FAULT_POLL_S, Faults, SlowClientPolicy
from adapters.alpaca_compatible_server.endpoints import KNOWN_CHANNELS, Endpoint
from adapters.alpaca_compatible_server.frames import (
    MALFORMED_KINDS,
    FramePool,
    JsonCodec,
    MsgpackCodec,
    WireFormat,
)
from adapters.alpaca_compatible_server.host import SessionHost
from adapters.alpaca_compatible_server.market import DataParams, Item
from domain.errors import InvalidSymbol
from domain.symbols import validate_symbol
from domain.timestamps import NS_PER_SECOND

_NO_FAULTS = Faults()  # what a session sees when the faults target other endpoints

logger = logging.getLogger(__name__)

WILDCARD: Final = "*"
_EVENT_CHANNELS: Final = (
    "bars", "updatedBars", "dailyBars", "statuses", "lulds", "imbalances", "trades",
)  # fmt: skip
_NEW_YORK: Final = ZoneInfo("America/New_York")
_MAX_FRAMES_PER_WRITE: Final = 64
_MAX_BYTES_PER_WRITE: Final = 256 * 1024
_ERROR_TEXT: Final = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    412: "option messages are only available in MsgPack format",
    413: "star subscription is not allowed for option quotes",
    500: "internal error",
}

Subscriptions = dict[str, frozenset[str]]


def _empty_subscriptions(channels: tuple[str, ...]) -> Subscriptions:
    return {channel: frozenset() for channel in channels}


class Session:
    """State of one connection, readable by tests while it runs (``server.sessions``)."""

    def __init__(
        self,
        server: SessionHost,
        session_id: int,
        stream: trio.SocketStream,
        conn: WebSocketConnection,
        codec: JsonCodec | MsgpackCodec,
        endpoint: Endpoint,
        header_credentials: tuple[str, str] | None = None,
    ) -> None:
        cfg = server.config
        self._header_credentials = header_credentials
        self.id = session_id
        self.endpoint = endpoint
        self.path = endpoint.path
        self.format = codec.format
        self.key: str | None = None
        """The key id once authenticated."""
        self.authenticated = False
        self.connected_at = trio.current_time()
        self.subscriptions: Subscriptions = _empty_subscriptions(endpoint.channels)
        """The set the last ack reported (what the client is subscribed to)."""
        self.frames_sent = 0
        self.messages_sent = 0
        self.frames_dropped = 0
        self.client_close_code: int | None = None
        """The close code the CLIENT sent (1006 if it dropped TCP without a close frame);
        ``None`` while open or when the server closed first."""
        self.ended_by: Literal["client", "server"] | None = None
        self._server = server
        self._stream = stream
        self._conn = conn
        self._writer = _FrameWriter(conn, stream)
        self._codec = codec
        seed = None if cfg.seed is None else cfg.seed * 1_000_003 + session_id
        params = DataParams(
            batch=cfg.batch,
            pool_frames=cfg.pool_frames,
            one_sided_probability=cfg.one_sided_probability,
            crossed_probability=cfg.crossed_probability,
            exchanges=endpoint.exchanges,
        )
        self._market = endpoint.market(params, random.Random(seed))
        # What the sender streams: updated after the ack on subscribe, before it on unsubscribe.
        self._data_subscriptions: Subscriptions = _empty_subscriptions(endpoint.channels)
        self._data_version = 0
        self._data_changed = trio.Event()
        self._send_started: float | None = None
        self._malformed_sent = 0
        self._last_stamp_ns = 0
        self._aborted = False
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        return (
            f"Session(id={self.id}, path={self.path!r}, format={self.format.value}, "
            f"authenticated={self.authenticated}, messages_sent={self.messages_sent})"
        )

    # ----------------------------------------------------------------------------- lifecycle

    def _faults(self) -> Faults:
        """The server's live faults, or none when they are limited to other endpoints."""
        faults = self._server.faults
        paths = faults.paths
        return faults if paths is None or self.path in paths else _NO_FAULTS

    async def run(self) -> None:
        """Serve the connection until either side closes it. Never raises ConnectionClosed."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_closed, self._monitor)
                nursery.start_soon(self._until_closed, self._sender)
                await self._until_closed(self._connected_then_receive)

    def stop(self) -> None:
        """End the session from outside (server shutdown); the server then sends close 1001."""
        self.ended_by = self.ended_by or "server"
        self._scope.cancel()

    async def _until_closed(self, task: Callable[[], Awaitable[None]]) -> None:
        # Any of the three tasks ending (normally or because the socket closed) ends the session.
        try:
            await task()
        except ConnectionClosed as exc:
            # Whichever task notices first: a send or a receive, on a close the client started.
            if self.ended_by is None:
                self.ended_by = "client"
                self.client_close_code = int(exc.reason.code) if exc.reason else 1006
                self._server.record_client_close(self.client_close_code)
        finally:
            self._scope.cancel()

    async def _connected_then_receive(self) -> None:
        await self._send_control({"T": "success", "msg": "connected"})
        if self._header_credentials is not None:
            # Keys in the upgrade's APCA-API-KEY-ID / APCA-API-SECRET-KEY headers: authenticate
            # now, with the same answers as the auth message (success or 402/406/409/500).
            self._server.stats.header_auths += 1
            self._server.stats.auth_attempts += 1
            await self._authenticate(*self._header_credentials)
        conn = self._conn
        while True:
            await self._on_message(await conn.get_message())

    async def _close_with_error(self, code: int) -> None:
        """Send ``[{"T":"error",...}]``, close the WebSocket (close frame, code 1000) and end the
        session. Bounded in time even if the client does not read."""
        self.ended_by = "server"
        timeout = self._server.config.close_timeout_s
        with trio.move_on_after(timeout) as sending, contextlib.suppress(ConnectionClosed):
            await self._send_error(code)
        if sending.cancelled_caught:
            # Part of the frame may be out: a close frame after it would be garbage.
            await self.abort(f"could not send error {code} within {timeout} s")
            return
        with trio.move_on_after(timeout):
            await self._conn.aclose(1000, _ERROR_TEXT[code])
        self._scope.cancel()

    async def abort(self, why: str) -> None:
        """Close the TCP connection without a close frame (a FIN, or a reset if configured)."""
        if self._aborted:
            return
        self._aborted = True
        self.ended_by = "server"
        self._server.stats.connections_dropped += 1
        logger.info("session %d: dropping the connection (%s)", self.id, why)
        if self._faults().drop_with_rst:
            with contextlib.suppress(OSError):  # already closed
                self._stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        await self._stream.aclose()
        self._scope.cancel()

    # ------------------------------------------------------------------------------ control

    async def _send_control(self, message: Mapping[str, object]) -> None:
        await self._conn.send_message(self._codec.control(message))
        self._server.stats.control_frames_sent += 1

    async def _send_error(self, code: int) -> None:
        stats = self._server.stats
        stats.errors_sent[code] += 1
        stats.error_times.setdefault(code, deque(maxlen=1000)).append(trio.current_time())
        await self._send_control({"T": "error", "code": code, "msg": _ERROR_TEXT[code]})

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            message = self._codec.decode(raw)
        except ValueError:
            await self._send_error(400)
            return
        action = message.get("action") if isinstance(message, dict) else None
        if not isinstance(message, dict) or action not in ("auth", "subscribe", "unsubscribe"):
            await self._send_error(400)
        elif action == "auth":
            await self._on_auth(message)
        elif not self.authenticated:
            await self._send_error(401)
        else:
            await self._on_subscription(action == "subscribe", message)

    async def _on_auth(self, message: dict[object, object]) -> None:
        server = self._server
        server.stats.auth_attempts += 1
        server.notify()
        if self.authenticated:
            await self._send_error(403)
            return
        key, secret = message.get("key"), message.get("secret")
        if not isinstance(key, str) or not isinstance(secret, str):
            await self._send_error(400)
            return
        await self._authenticate(key, secret)

    async def _authenticate(self, key: str, secret: str) -> None:
        server = self._server
        faults = self._faults()
        if faults.internal_error:
            await self._close_with_error(500)
        elif faults.refuse_auth or not server.credentials_valid(key, secret):
            await self._close_with_error(402)
        elif faults.insufficient_subscription:
            await self._close_with_error(409)
        elif self.endpoint.msgpack_only and self._codec.format is not WireFormat.MSGPACK:
            await self._close_with_error(412)  # the option streams speak msgpack only
        elif faults.reject_connections_with_406 or not server.claim_slot(key, self.path, self.id):
            await self._close_with_error(406)
        else:
            self.key = key
            self.authenticated = True
            server.stats.auth_successes += 1
            server.notify()
            logger.info("session %d authenticated (key %s…)", self.id, key[:4])
            await self._send_control({"T": "success", "msg": "authenticated"})

    async def _on_subscription(self, subscribe: bool, message: dict[object, object]) -> None:
        channels = self.endpoint.channels
        if any(key in KNOWN_CHANNELS and key not in channels for key in message):
            await self._send_error(410)  # e.g. orderbooks or news on a stock stream
            return
        changes: dict[str, frozenset[str]] = {}
        for channel in channels:
            if channel not in message:
                continue  # keys that are no channel at all are ignored
            symbols = message[channel]
            if not isinstance(symbols, list) or not all(map(_valid_symbol, symbols)):
                await self._send_error(400)
                return
            if subscribe and WILDCARD in symbols and channel in self.endpoint.no_wildcard:
                await self._send_error(413)  # "*" for option quotes
                return
            changes[channel] = frozenset(symbols)
        current = self.subscriptions
        if subscribe:
            new = {ch: current[ch] | changes.get(ch, frozenset()) for ch in channels}
            if self._exceeds_limit(new):
                await self._send_error(405)
                return
            self.subscriptions = new
            self._server.notify()
            await self._send_ack()
            self._stream_data_for(new)  # only after the ack
        else:
            new = {ch: current[ch] - changes.get(ch, frozenset()) for ch in channels}
            self.subscriptions = new
            self._stream_data_for(new)  # before the ack
            self._server.notify()
            await self._send_ack()

    def _exceeds_limit(self, subscriptions: Subscriptions) -> bool:
        """Alpaca's plans limit the symbols of trades and quotes (the endpoint's limited
        channels) together; bars and the rest are unlimited, ``"*"`` included."""
        limit = self._server.config.symbol_limit
        if limit is None:
            return False
        limited = self.endpoint.limited_channels
        distinct = frozenset().union(*(s for ch, s in subscriptions.items() if ch in limited))
        return WILDCARD in distinct or len(distinct) > limit

    async def _send_ack(self) -> None:
        subs = self.subscriptions
        endpoint = self.endpoint
        ack: dict[str, object] = {"T": "subscription"}
        for channel in endpoint.channels:
            if channel in endpoint.ack_when_non_empty and not subs[channel]:
                continue
            ack[channel] = sorted(subs[channel])
            if channel == "lulds":  # the documented order: ..., lulds, corrections, ...
                for follower in endpoint.follow_trades:
                    ack[follower] = ack["trades"]
        await self._send_control(ack)

    def _stream_data_for(self, subscriptions: Subscriptions) -> None:
        self._data_subscriptions = subscriptions
        self._data_version += 1
        self._data_changed.set()
        self._data_changed = trio.Event()

    def _expand(self, symbols: frozenset[str]) -> list[str]:
        """The symbols that get data: ``"*"`` expanded, and only those the endpoint quotes."""
        if WILDCARD in symbols:
            symbols = (symbols - {WILDCARD}) | frozenset(self._server.config.wildcard_symbols)
        only = self.endpoint.data_symbols
        if only is not None:
            symbols &= only
        return sorted(symbols)

    def _data_items(self) -> list[Item]:
        subs = self._data_subscriptions
        quotes: list[Item] = [("q", s) for s in self._expand(subs["quotes"])]
        trades: list[Item] = [("t", s) for s in self._expand(subs["trades"])]
        return quotes + trades

    # --------------------------------------------------------------------------------- data

    def _what_to_stream(self, current: _Streaming | None) -> _Streaming:
        """The pre-encoded pool etc. for the current data subscriptions (rebuilt on change)."""
        if current is not None and current.version == self._data_version:
            return current
        items = self._data_items()
        return _Streaming(
            version=self._data_version,
            pool=self._codec.pool(self._market.pool_frames(items)) if items else None,
            events={
                channel: expanded
                for channel in _EVENT_CHANNELS
                if channel in self._data_subscriptions
                and (expanded := self._expand(self._data_subscriptions[channel]))
            },
            symbol=items[0][1] if items else "FAKEPACA",
        )

    async def _sender(self) -> None:
        """Send data frames at ``rate`` (deadline pacing: behind schedule it sends without
        sleeping, never above the average); every ``bar_interval_s`` the minute bars (of the
        streamed trades), daily bars, statuses, LULDs, imbalances, and a correction and a cancel
        per trades symbol; half an interval later the updated bars (Alpaca: after the :30 mark).
        Returns when the session must end (a fault or the slow-client policy closed it)."""
        server = self._server
        cfg = server.config
        interval = cfg.batch / cfg.rate if cfg.rate else 0.0
        bar_interval = cfg.bar_interval_s or 0.0
        next_bar = trio.current_time() + bar_interval if bar_interval else math.inf
        next_update = next_bar + bar_interval / 2
        next_frame: float | None = None  # None: not streaming frames (no catch-up burst later)
        streaming: _Streaming | None = None
        malformed_due = 0
        while True:
            previous, streaming = streaming, self._what_to_stream(streaming)
            if streaming is not previous and next_frame is not None:
                next_frame = max(next_frame, trio.current_time())  # rebuilding is not lag
            faults = self._faults()
            live = self.authenticated and not faults.stall
            pool = streaming.pool if live else None
            events = streaming.events if live else {}
            bar_symbols = bool(events)
            now = trio.current_time()
            if pool is None:
                next_frame = None
            elif next_frame is None:
                next_frame = now
            if faults.send_407_then_close and (pool is not None or bar_symbols):
                logger.info("session %d: fault send_407_then_close", self.id)
                await self._close_with_error(407)
                return

            if bar_symbols and now >= next_bar:
                await self._send_events(events, streaming.version, updated=False)
                next_bar = max(next_bar + bar_interval, now)
                continue
            if bar_symbols and now >= next_update:
                await self._send_events(events, streaming.version, updated=True)
                next_update = max(next_update + bar_interval, now)
                continue

            if pool is None or next_frame is None or now < next_frame:
                # Idle or early: wait for the deadline, a subscription change or a fault flip.
                deadline = now + FAULT_POLL_S
                if bar_symbols:
                    deadline = min(deadline, next_bar, next_update)
                if next_frame is not None:
                    deadline = min(deadline, next_frame)
                with trio.move_on_at(deadline):
                    await self._data_changed.wait()
                continue

            lag = now - next_frame
            if interval and lag > cfg.max_lag_s:
                if cfg.slow_client is SlowClientPolicy.DISCONNECT:
                    server.stats.slow_client_disconnects += 1
                    logger.info("session %d: %.2f s behind, 407 slow client", self.id, lag)
                    await self._close_with_error(407)
                    return
                skipped = int(lag / interval)
                next_frame += skipped * interval
                self.frames_dropped += skipped
                server.stats.frames_dropped += skipped

            # Everything due goes out in one write (the timer cannot wake per frame at high
            # rates, and one write per frame costs more than the frame): same average rate.
            due = 1 + int((now - next_frame) / interval) if interval else _MAX_FRAMES_PER_WRITE
            every = faults.malformed_every
            if every:
                due = min(due, every - malformed_due)
            sent = await self._send_frames(streaming, due, faults.drop_after_messages)
            if not sent:
                return
            next_frame += sent * interval

            if every:
                malformed_due += sent
                if malformed_due >= every and streaming.version == self._data_version:
                    malformed_due = 0
                    await self._send_malformed(streaming.symbol)

    async def _send_frames(self, streaming: _Streaming, due: int, drop_after: int | None) -> int:
        """Write up to ``due`` frames from the pool (at least one; at most
        :data:`_MAX_FRAMES_PER_WRITE` or :data:`_MAX_BYTES_PER_WRITE`) in one write, stamped
        with the send time (every message its own ``t``, a step apart, increasing across the
        session's frames). Returns how many, or 0 once the fault ``drop_after_messages`` has
        dropped the connection."""
        pool = streaming.pool
        assert pool is not None
        frames = min(due, _MAX_FRAMES_PER_WRITE)
        stamps, self._last_stamp_ns = self._codec.stamps(
            time.time_ns(), frames, self._last_stamp_ns
        )
        budget = drop_after - self.messages_sent if drop_after is not None else math.inf
        if budget <= 0:
            await self.abort(f"drop_after_messages={drop_after}")
            return 0
        parts: list[bytes] = []
        size = messages = 0
        index = streaming.index
        for stamp in stamps:
            count = pool.counts[index]
            if count >= budget - messages:
                count = int(budget - messages)  # the last frame before the drop, cut short
                parts.append(pool.render_first(index, count, stamp))
                messages += count
                index = (index + 1) % len(pool)
                break
            parts.append(pool.render(index, stamp))
            messages += count
            size += pool.sizes[index]
            index = (index + 1) % len(pool)
            if size >= _MAX_BYTES_PER_WRITE:
                break
        streaming.index = index
        self._send_started = trio.current_time()  # watched by the monitor
        await self._writer.write(parts[0] if len(parts) == 1 else b"".join(parts))
        self._send_started = None
        self._count(len(parts), messages)
        if messages >= budget:
            await self.abort(f"drop_after_messages={drop_after}")
            return 0
        return len(parts)

    async def _send_events(
        self, channels: dict[str, list[str]], version: int, *, updated: bool
    ) -> None:
        """The interval's bars and events (see :meth:`_sender`), ``batch`` per frame, each
        message in the shape Alpaca documents."""
        now = time.time_ns()
        minute = 60 * NS_PER_SECOND
        last_minute = (now // minute - 1) * minute
        market = self._market
        if updated:
            messages = market.bars(channels.get("updatedBars", ()), last_minute, "u")
        else:
            messages = market.bars(channels.get("bars", ()), last_minute, "b")
            messages += market.bars(channels.get("dailyBars", ()), _day_start_ns(now), "d")
            messages += market.events(channels, now)
        batch = self._server.config.batch
        for i in range(0, len(messages), batch):
            if version != self._data_version:
                return  # an unsubscribe may have removed some: not after its ack
            chunk = messages[i : i + batch]
            await self._conn.send_message(self._codec.encode(chunk))
            self._count(1, len(chunk))

    async def _send_malformed(self, symbol: str) -> None:
        kind = MALFORMED_KINDS[self._malformed_sent % len(MALFORMED_KINDS)]
        self._malformed_sent += 1
        await self._conn.send_message(self._codec.malformed(kind, symbol, time.time_ns()))
        self._server.stats.malformed_frames_sent += 1

    def _count(self, frames: int, messages: int) -> None:
        self.frames_sent += frames
        self.messages_sent += messages
        stats = self._server.stats
        stats.frames_sent += frames
        stats.messages_sent += messages
        self._server.notify()

    # ------------------------------------------------------------------------------ monitor

    async def _monitor(self) -> None:
        """Auth deadline, ``drop_every_s``, and sends blocked for ``send_timeout_s``."""
        server = self._server
        cfg = server.config
        auth_deadline = self.connected_at + cfg.auth_timeout_s
        while True:
            now = trio.current_time()
            if not self.authenticated and now >= auth_deadline:
                await self._close_with_error(404)
                return
            drop_every = self._faults().drop_every_s
            drop_at = math.inf if drop_every is None else self.connected_at + drop_every
            if now >= drop_at:
                await self.abort(f"drop_every_s={drop_every}")
                return
            started = self._send_started
            if started is not None and now - started >= cfg.send_timeout_s:
                server.stats.slow_client_disconnects += 1
                await self.abort(f"a send blocked for {now - started:.1f} s")
                return
            wake = min(now + FAULT_POLL_S, drop_at)
            if not self.authenticated:
                wake = min(wake, auth_deadline)
            await trio.sleep_until(wake)


class _FrameWriter:
    """Writes pre-framed data frames straight to the TCP stream.

    trio-websocket sends one message per call, encoding it through wsproto; the pool's frames
    are already on-the-wire bytes, and writing many in one ``send_all`` is what makes high rates
    cheap. The write holds trio-websocket's own send lock (``_stream_lock``, a private attribute
    of trio-websocket 0.12, checked at construction) so it never interleaves with the control
    messages, pongs and close frames that trio-websocket sends, and nothing is written once a
    close frame has gone out or come in.
    """

    def __init__(self, conn: WebSocketConnection, stream: trio.SocketStream) -> None:
        lock = getattr(conn, "_stream_lock", None)
        if not isinstance(lock, trio.StrictFIFOLock):
            raise RuntimeError("this trio-websocket has no _stream_lock: update _FrameWriter")
        self._lock = lock
        self._conn = conn
        self._stream = stream

    async def write(self, data: bytes) -> None:
        """Raises ``ConnectionClosed`` if the WebSocket is closing or the TCP connection is
        gone (code 1006); cancellation mid-write leaves a partial frame: drop the connection."""
        async with self._lock:
            if self._conn.closed is not None:
                raise ConnectionClosed(self._conn.closed)
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionClosed(
                    self._conn.closed or CloseReason(1006, "connection lost")
                ) from None


@dataclass(slots=True)
class _Streaming:
    """What the sender streams for one version of the data subscriptions."""

    version: int
    pool: FramePool | None
    """Pre-encoded quote and trade frames; None if no quotes or trades are subscribed."""
    events: dict[str, list[str]]
    """Symbols per channel sent every bar interval (bars, daily and updated bars, statuses,
    LULDs, imbalances; trades for their corrections and cancels)."""
    symbol: str
    """A subscribed symbol, for malformed frames (a client filtering by symbol still sees them)."""
    index: int = 0
    """The next frame of the pool."""


def _day_start_ns(now_ns: int) -> int:
    """Midnight in New York of the trading day of ``now_ns`` (a daily bar's ``t``)."""
    local = datetime.fromtimestamp(now_ns / NS_PER_SECOND, tz=_NEW_YORK)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.astimezone(UTC).timestamp()) * NS_PER_SECOND


def _valid_symbol(symbol: object) -> bool:
    if symbol == WILDCARD:
        return True
    try:
        validate_symbol(symbol)
    except InvalidSymbol:
        return False
    return True
