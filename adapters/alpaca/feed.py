"""AlpacaQuoteFeed: the QuoteFeed for Alpaca's market-data stream v2 (stocks), on trio-websocket.

One ``connect()`` is one WebSocket session::

    connect  ->  [{"T":"success","msg":"connected"}]        (within connect_timeout_s)
    on_state(AUTHENTICATING); send auth
             ->  [{"T":"success","msg":"authenticated"}]    (within auth_timeout_s)
    yield the session (nothing subscribed)

With ``auth="header"`` (the default) the keys go in the upgrade's ``APCA-API-KEY-ID`` /
``APCA-API-SECRET-KEY`` headers and no auth message is sent: ``authenticated`` follows
``connected`` (in the same frame or the next). Alpaca does not document that reply, so if it has
not come within ``header_auth_wait_s`` the auth message is sent after all (logged at WARNING;
its ``403 already authenticated`` counts as success).

While the session is open, three tasks run in a nursery inside the context manager:

- the **reader** receives, decodes (:mod:`adapters.alpaca.wire`), handles control messages
  (subscription acks wake the waiting ``subscribe``; errors get their reaction) and hands each
  frame's data to a bounded channel that ``events()`` drains. It waits on nothing else: when the
  channel is full it waits for the consumer (back-pressure, nothing dropped);
- the **pinger** sends a WebSocket ping every ``ping_interval_s`` and ends the session if no pong
  comes within ``ping_timeout_s``;
- the **watchdog** (optional) ends the session with :class:`FeedStalled` when something is
  subscribed and no frame has arrived for ``data_watchdog_s``.

A session that ends records its error once; ``events()`` yields what was already received and
then raises it, a waiting ``subscribe`` raises it. Errors are the domain's (``raise ... from``
the transport's): never a trio-websocket exception, never an ``ExceptionGroup``.

Venue error codes and their reactions (all counted in ``stats.errors_by_code``):

==========  =====================================================================
402         FatalFeedError (bad keys; setting ALPACA_API_KEY / ALPACA_SECRET_KEY)
408, 411    FatalFeedError (account or token lacks market data)
409         FatalFeedError (plan lacks the feed; setting ALPACA_STREAM_URL, hint v2/iex)
412         FatalFeedError (stream needs msgpack)
406         FeedUnavailable(min_delay=15): another session holds the single slot
404         FeedUnavailable: auth timeout (HTTP 404 at the upgrade: FatalFeedError,
            no stream at the URL's path; setting ALPACA_STREAM_URL)
401, 407    FeedDisconnected (401 is an ordering bug, logged at ERROR)
500         FeedUnavailable during the handshake, FeedDisconnected later
405         the pending subscribe raises SymbolsRejected(limit_exceeded=True)
400, 410,   logged at ERROR with the offending outgoing message (secrets redacted);
413         the pending subscribe raises SymbolsRejected(code=...); 400 on auth is fatal
403         ignored (already authenticated)
==========  =====================================================================
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn

import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from adapters.alpaca.config import AlpacaFeedConfig, check_transport
from adapters.alpaca.recorder import FrameRecorder
from adapters.alpaca.transport import check_library, dial
from adapters.alpaca.wire import (
    ChannelFilter,
    RateLimitedErrorLog,
    decode_frame,
    encode_action,
    parse_subscription,
)
from domain.connection import ConnectionState
from domain.errors import (
    FatalFeedError,
    FeedDisconnected,
    FeedError,
    FeedStalled,
    FeedUnavailable,
    SymbolsRejected,
)
from domain.features import RECORDING, FeatureHealth
from domain.market import Channel, MarketEvent, SubscriptionAck, Subscriptions
from domain.stats import FeedStats

log = logging.getLogger(__name__)

KEYS_SETTING: Final = "ALPACA_API_KEY / ALPACA_SECRET_KEY"
CONNECTION_LIMIT_MIN_DELAY_S: Final = 15.0
_LOG_MESSAGE_MAX: Final = 1000
_CANCELLED_CLOSE_WAIT_S: Final = 0.1

OnState = Callable[[ConnectionState], None]


def _ignore_state(state: ConnectionState) -> None:
    pass


def _close_text(e: ConnectionClosed) -> str:
    reason = e.reason
    if reason is None:
        return "connection closed"
    detail = f": {reason.reason}" if reason.reason else ""
    return f"connection closed (code {reason.code} {reason.name}{detail})"


def _shown(message: dict[str, Any] | None) -> str:
    if message is None:
        return "(nothing sent yet)"
    text = orjson.dumps(message).decode()
    return text if len(text) <= _LOG_MESSAGE_MAX else text[: _LOG_MESSAGE_MAX - 3] + "..."


class _PendingChange:
    """The one subscription change in flight: completed by its ack or by an error."""

    __slots__ = ("done", "error", "seq", "symbols")

    def __init__(self, seq: int, symbols: frozenset[str]) -> None:
        self.seq = seq
        self.symbols = symbols
        self.done = trio.Event()
        self.error: FeedError | None = None


class AlpacaSession:
    """One authenticated Alpaca stream session (implements ``ports.quote_feed.FeedSession``).

    Created by :meth:`AlpacaQuoteFeed.connect`; not to be built directly.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        config: AlpacaFeedConfig,
        stats: FeedStats,
        now_ns: Callable[[], int],
        decode_log: RateLimitedErrorLog,
        recorder: FrameRecorder | None,
    ) -> None:
        self._ws = ws
        self._config = config
        self._stats = stats
        self._now_ns = now_ns
        self._decode_log = decode_log
        self._recorder = recorder
        self._authenticated = False
        self._confirmed = Subscriptions()
        self._filter = ChannelFilter(self._confirmed)
        self._send_events, self._receive_events = trio.open_memory_channel[list[MarketEvent]](
            config.event_buffer_frames
        )
        self._change_lock = trio.Lock()
        self._pending: _PendingChange | None = None
        self._changes_sent = 0
        self._changes_answered = 0
        self._last_sent: dict[str, Any] | None = None  # as logged: secrets redacted
        self._last_frame_at = trio.current_time()
        self._failure: FeedError | None = None
        self._background: trio.CancelScope | None = None
        self.filtered_out = 0  # events dropped because their symbol/channel is not confirmed

    # -- FeedSession ----------------------------------------------------------------------------
    @property
    def confirmed(self) -> Subscriptions:
        """The full set of the venue's last ``subscription`` message."""
        return self._confirmed

    async def subscribe(self, request: Subscriptions) -> SubscriptionAck:
        """Add ``request``: sent in chunks of ``subscribe_chunk`` symbols, one change in flight at
        a time, each acknowledged before the next. ``missing`` is what was asked for and is not in
        the venue's set (logged at WARNING).

        Raises :class:`SymbolsRejected` for the chunk the venue refused (405: ``limit_exceeded``,
        the venue's set is unchanged; 400/410: ``code``); earlier chunks stay subscribed. Raises
        :class:`FeedDisconnected` when no ack comes within ``subscribe_ack_timeout_s`` (the session
        is then over) or the session's error if it has ended. Cancellation leaves the venue's set
        as it last confirmed it; a late ack still updates :attr:`confirmed`.
        """
        return await self._change("subscribe", request)

    async def unsubscribe(self, request: Subscriptions) -> SubscriptionAck:
        """Remove ``request``; as :meth:`subscribe`. Data for removed symbols that the venue
        still sends is filtered out of ``events()``."""
        return await self._change("unsubscribe", request)

    async def events(self) -> AsyncIterator[Sequence[MarketEvent]]:
        """Data events, one batch per frame (or all the frames already waiting, when they come
        faster than they are taken), only for confirmed symbols and channels; empty batches
        are skipped. Ends by raising the session's error (after yielding the frames
        received before it). Iterate from one task only."""
        receive = self._receive_events
        ended = False
        while not ended:
            try:
                batch = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            # Under load several frames wait here: take them all in one go (one wake-up of the
            # consumer and of the writer behind it, instead of one per frame). Order is kept.
            while True:
                try:
                    more = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    ended = True
                    break
                batch.extend(more)
            wanted = self._filter.apply(batch)
            dropped = len(batch) - len(wanted)
            if dropped:
                self.filtered_out += dropped
            if wanted:
                yield wanted
        self._raise_failure()

    # -- lifecycle (driven by AlpacaQuoteFeed.connect) ------------------------------------------
    async def _handshake(self, on_state: OnState) -> None:
        cfg = self._config
        with trio.move_on_after(cfg.connect_timeout_s) as greeting:
            while not await self._handshake_step("connected"):
                pass
        if greeting.cancelled_caught:
            raise FeedUnavailable(f"no 'connected' greeting within {cfg.connect_timeout_s:g} s")
        on_state(ConnectionState.AUTHENTICATING)
        if cfg.auth == "header":
            with trio.move_on_after(min(cfg.header_auth_wait_s, cfg.auth_timeout_s)):
                while not self._authenticated:
                    await self._handshake_step("authenticated")
            if self._authenticated:
                return
            log.warning(
                "alpaca: no 'authenticated' within %g s of header auth; sending the auth "
                "message (set ALPACA_AUTH=message if this venue never confirms header auth)",
                min(cfg.header_auth_wait_s, cfg.auth_timeout_s),
            )
        auth = {"action": "auth", "key": cfg.api_key.reveal(), "secret": cfg.secret_key.reveal()}
        await self._send(auth, {"action": "auth", "key": "***", "secret": "***"})
        with trio.move_on_after(cfg.auth_timeout_s) as authenticated:
            while not self._authenticated:
                await self._handshake_step("authenticated")
        if authenticated.cancelled_caught:
            raise FeedUnavailable(f"not authenticated within {cfg.auth_timeout_s:g} s")

    async def _handshake_step(self, expected: str) -> bool:
        """Read one frame; True once ``success``/``expected`` arrived; venue errors raise."""
        try:
            raw = await self._ws.get_message()
        except ConnectionClosed as e:
            raise FeedUnavailable(
                f"server closed the connection while waiting for {expected!r}: {_close_text(e)}"
            ) from e
        _, controls = self._ingest(raw)
        done = False
        for message in controls:
            kind = message.get("T")
            if kind == "success":
                if message.get("msg") == "authenticated":
                    # Also when it shares the frame of "connected" (header auth).
                    self._authenticated = True
                if message.get("msg") == expected:
                    done = True
                else:
                    log.debug("alpaca: %r while waiting for %r", message.get("msg"), expected)
            elif kind == "error":
                if message.get("code") == 403 and expected == "authenticated":
                    self._authenticated = True  # header auth had worked: "already authenticated"
                    continue
                error = self._reaction(message, handshake=True)
                if error is not None:
                    raise error
        return done

    async def _run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._background = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._reader)
                nursery.start_soon(self._guard, self._pinger)
                if self._config.data_watchdog_s is not None:
                    nursery.start_soon(self._guard, self._watchdog)
                task_status.started()

    def _close(self) -> None:
        """The client is leaving the session: stop the tasks; later calls say it is closed."""
        self._fail(FeedDisconnected("session closed by the client"), quiet=True)

    # -- background tasks -----------------------------------------------------------------------
    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a background task; its feed error ends the session (bugs crash the nursery)."""
        try:
            await task()
        except FeedError as e:
            self._fail(e)

    async def _reader(self) -> None:
        ws = self._ws
        send = self._send_events.send
        ingest = self._ingest
        on_control = self._on_control
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as e:
                raise FeedDisconnected(f"server ended the session: {_close_text(e)}") from e
            events, controls = ingest(raw)
            for message in controls:
                on_control(message)
            if events:
                try:
                    await send(events)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return  # the session has already ended

    async def _pinger(self) -> None:
        cfg = self._config
        while True:
            await trio.sleep(cfg.ping_interval_s)
            with trio.move_on_after(cfg.ping_timeout_s) as waiting:
                try:
                    await self._ws.ping()
                except ConnectionClosed as e:
                    raise FeedDisconnected(f"ping failed: {_close_text(e)}") from e
            if waiting.cancelled_caught:
                raise FeedDisconnected(f"no pong within {cfg.ping_timeout_s:g} s")

    async def _watchdog(self) -> None:
        limit = self._config.data_watchdog_s
        assert limit is not None
        while True:
            deadline = self._last_frame_at + limit
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            if self._confirmed.is_empty():
                await trio.sleep(limit)
                continue
            raise FeedStalled(f"no message for {limit:g} s while subscribed")

    # -- frames -----------------------------------------------------------------------------------
    def _ingest(self, raw: str | bytes) -> tuple[list[MarketEvent], list[dict[str, Any]]]:
        received_ns = self._now_ns()
        self._last_frame_at = trio.current_time()
        if self._recorder is not None:
            self._recorder.write(received_ns, raw)
        return decode_frame(raw, received_ns, self._stats, self._decode_log)

    def _on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("T")
        if kind == "subscription":
            self._on_ack(message)
        elif kind == "error":
            error = self._reaction(message, handshake=False)
            if error is not None:
                raise error
        else:
            log.debug("alpaca: ignoring %s", _shown(message))

    def _on_ack(self, message: dict[str, Any]) -> None:
        confirmed, complaints = parse_subscription(message)
        for complaint in complaints:
            log.warning("alpaca: malformed subscription ack field %s", complaint)
        self._confirmed = confirmed
        self._filter = ChannelFilter(confirmed)
        self._answer(None)

    def _answer(self, error: FeedError | None) -> None:
        """An ack or a change-related error arrived: it answers the oldest unanswered change."""
        if self._changes_answered < self._changes_sent:
            self._changes_answered += 1
        pending = self._pending
        if pending is not None and pending.seq == self._changes_answered:
            pending.error = error
            pending.done.set()
        elif error is not None:
            log.warning("alpaca: %s (for an abandoned subscription change)", error)

    def _reaction(self, message: dict[str, Any], *, handshake: bool) -> FeedError | None:
        """What a venue error means: an error that ends the session (returned), or None when
        the session goes on (a pending change may be answered with SymbolsRejected)."""
        code = message.get("code")
        text = message.get("msg")
        if type(code) is not int:
            log.error("alpaca: error message without an integer code: %s", _shown(message))
            code = -1
        self._stats.errors_by_code[code] += 1
        reason = f"alpaca error {code}: {text}"
        pending = self._pending
        if code == 402:
            return FatalFeedError(
                "authentication failed: the API key or secret is wrong", code=code,
                setting=KEYS_SETTING,
            )  # fmt: skip
        if code in (408, 411):
            return FatalFeedError(
                f"the account or token may not use market data ({text})", code=code,
                setting=KEYS_SETTING,
            )  # fmt: skip
        if code == 409:
            # The plan lacks this feed: only this stream stops (stocks, crypto and options are
            # separate streams); the service stops when no other stream has symbols.
            return FatalFeedError(
                f"insufficient subscription: the plan does not include this feed; "
                f"{self._config.plan_hint}",
                code=code, setting=self._config.url_setting, lane_only=True,
            )  # fmt: skip
        if code == 412:
            return FatalFeedError(
                f"{text}: this stream needs msgpack", code=code,
                setting=self._config.url_setting, lane_only=True,
            )  # fmt: skip
        if code == 406:
            return FeedUnavailable(
                "connection limit exceeded: another session holds the single connection slot for "
                "these keys (another instance or app, or this service's previous session, which "
                "Alpaca may keep for ~90 s after a drop)",
                code=code, min_delay=CONNECTION_LIMIT_MIN_DELAY_S, slot_taken=True,
            )  # fmt: skip
        if code == 404:
            return FeedUnavailable("auth timeout: not authenticated in time", code=code)
        if code == 403:
            log.debug("alpaca: already authenticated (ignored)")
            return None
        if code == 401:
            log.error(
                "alpaca: %s: a message was sent before authentication (a bug); last sent: %s",
                reason, _shown(self._last_sent),
            )  # fmt: skip
            return FeedDisconnected(reason, code=code)
        if code == 407:
            return FeedDisconnected(
                "slow client: the venue dropped us for reading too slowly", code=code
            )
        if code == 500:
            if handshake:
                return FeedUnavailable(reason, code=code)
            return FeedDisconnected(reason, code=code)
        if code == 405:
            if pending is None or handshake:
                log.warning("alpaca: %s with no subscription change in flight", reason)
                return None
            self._answer(
                SymbolsRejected(
                    "symbol limit exceeded: the venue's set is unchanged", pending.symbols,
                    code=code, limit_exceeded=True,
                )
            )  # fmt: skip
            return None
        # 400 invalid syntax, 410 invalid action for this feed, 413, and codes we do not know.
        log.error(
            "alpaca: %s; the venue refused this message (a bug or a bad symbol): %s",
            reason, _shown(self._last_sent),
        )  # fmt: skip
        if handshake:
            if code == 400:
                return FatalFeedError(
                    "the venue refused the auth message as invalid syntax", code=code,
                    setting=KEYS_SETTING,
                )  # fmt: skip
            return FeedUnavailable(reason, code=code)
        if pending is not None:
            self._answer(SymbolsRejected(reason, pending.symbols, code=code))
        return None

    # -- sending ----------------------------------------------------------------------------------
    async def _send(self, message: dict[str, Any], shown: dict[str, Any]) -> None:
        """Send one action whole: shielded from cancellation (a half-sent frame would break the
        stream) but bounded by ``subscribe_ack_timeout_s``; a send that cannot finish ends the
        session."""
        self._last_sent = shown
        data = encode_action(message, self._config.fmt)
        timeout = self._config.subscribe_ack_timeout_s
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            try:
                await self._ws.send_message(data)
            except ConnectionClosed as e:
                raise FeedDisconnected(f"cannot send: {_close_text(e)}") from e
        if scope.cancelled_caught:
            raise FeedDisconnected(f"could not send within {timeout:g} s")

    async def _change(self, action: str, request: Subscriptions) -> SubscriptionAck:
        wanted = {c: s for c, s in request.by_channel.items() if s}
        self._raise_if_ended()
        if not wanted:
            return SubscriptionAck(self._confirmed)
        chunk_size = self._config.subscribe_chunk
        symbols = sorted(frozenset().union(*wanted.values()))
        async with self._change_lock:
            for start in range(0, len(symbols), chunk_size):
                part = frozenset(symbols[start : start + chunk_size])
                message: dict[str, Any] = {"action": action}
                for channel in Channel:
                    chosen = wanted.get(channel)
                    if chosen:
                        in_part = sorted(chosen & part)
                        if in_part:
                            message[channel.value] = in_part
                await self._request(message, part)
        confirmed = self._confirmed
        if action == "unsubscribe":
            still = frozenset(s for c, syms in wanted.items() for s in syms & confirmed.symbols(c))
            if still:
                log.warning(
                    "alpaca: still subscribed after unsubscribe: %s", ", ".join(sorted(still))
                )
            return SubscriptionAck(confirmed)
        missing: set[str] = set()
        for channel, syms in wanted.items():
            have = confirmed.symbols(channel)
            if "*" not in have:
                missing |= syms - have
        if missing:
            log.warning(
                "alpaca: subscribed but not confirmed by the venue: %s", ", ".join(sorted(missing))
            )
        return SubscriptionAck(confirmed, frozenset(missing))

    async def _request(self, message: dict[str, Any], symbols: frozenset[str]) -> None:
        self._raise_if_ended()
        self._changes_sent += 1
        pending = _PendingChange(self._changes_sent, symbols)
        self._pending = pending
        timeout = self._config.subscribe_ack_timeout_s
        try:
            try:
                await self._send(message, message)
            except FeedError as e:
                self._fail(e)
                raise
            # The ack queues behind data frames on a busy stream: while frames keep arriving
            # (progress), keep waiting, up to six timeouts; silence for a timeout ends it.
            give_up_at = trio.current_time() + 6 * timeout
            while not pending.done.is_set():
                waiting_since = trio.current_time()
                with trio.move_on_after(timeout):
                    await pending.done.wait()
                if self._last_frame_at <= waiting_since or trio.current_time() >= give_up_at:
                    break
        finally:
            if self._pending is pending:
                self._pending = None
        if not pending.done.is_set():
            error = FeedDisconnected(f"no subscription ack within {timeout:g} s")
            self._fail(error)
            raise error
        if pending.error is not None:
            raise pending.error

    # -- failure ----------------------------------------------------------------------------------
    def _fail(self, error: FeedError, *, quiet: bool = False) -> None:
        """End the session with ``error`` (the first one wins): events() raises it after the
        frames already received, a waiting change raises it, the background tasks stop."""
        if self._failure is None:
            self._failure = error
            if not quiet:
                # Retryable ends are the reconnect loop's to report; fatal ones are ours too.
                level = logging.ERROR if isinstance(error, FatalFeedError) else logging.INFO
                log.log(level, "alpaca session ended: %s", error)
        self._send_events.close()
        pending = self._pending
        if pending is not None and not pending.done.is_set():
            pending.error = self._failure
            pending.done.set()
        if self._background is not None:
            self._background.cancel()

    def _raise_if_ended(self) -> None:
        if self._failure is not None:
            self._raise_failure()

    def _raise_failure(self) -> NoReturn:
        raise self._failure or FeedDisconnected("session closed")


class AlpacaQuoteFeed:
    """The QuoteFeed for Alpaca's stock stream (``ports.quote_feed.QuoteFeed``).

    Construction validates the transport and raises :class:`FatalFeedError` (setting
    ``ALPACA_STREAM_URL``) for ``ws://`` to a non-loopback host unless ``allow_insecure``; it does
    no I/O. ``now_ns`` stamps receive times (wall clock, ns). ``stats`` accumulate across
    sessions. The adapter never retries: the application's reconnect loop does.
    """

    def __init__(
        self,
        config: AlpacaFeedConfig,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        features: FeatureHealth | None = None,
    ) -> None:
        check_transport(config.url, config.allow_insecure, config.url_setting)
        check_library()
        self._config = config
        self._now_ns = now_ns
        self._stats = FeedStats()
        self._decode_log = RateLimitedErrorLog(log, what="Alpaca data")
        self._features = features if features is not None else FeatureHealth()
        self._recorder: FrameRecorder | None = None  # one for every session (config.record_path)
        self.connects = 0

    def _recording(self) -> FrameRecorder | None:
        """The recorder of every session, opened at the first connect: a file that cannot be
        opened then is a setting error; later disk failures stop recording alone."""
        path = self._config.record_path
        if path is None:
            return None
        if self._recorder is None:
            features = self._features
            try:
                self._recorder = FrameRecorder(
                    path,
                    on_failure=lambda why: features.fail(RECORDING, why),
                    on_recovery=lambda: features.recover(RECORDING),
                )
            except OSError as e:
                raise FatalFeedError(
                    f"cannot open the recording file {path}: {e} (check MDS_RECORD_FILE)"
                ) from e
        return self._recorder

    @property
    def config(self) -> AlpacaFeedConfig:
        return self._config

    @property
    def stats(self) -> FeedStats:
        return self._stats

    @asynccontextmanager
    async def connect(self, on_state: OnState | None = None) -> AsyncIterator[AlpacaSession]:
        """Open, authenticate and yield a session with nothing subscribed.

        ``on_state`` hears CONNECTING, then AUTHENTICATING once the venue greeted us (CONNECTED is
        left to the caller, which knows when it has subscribed). Raises :class:`FeedUnavailable`
        (refused, HTTP 429 or other rejection, timeout, 406, 404, 500),
        :class:`FatalFeedError` (402, 409, 408, 411) or :class:`FeedDisconnected`. TCP connect,
        TLS handshake and HTTP upgrade together have ``connect_timeout_s``. On exit, also when
        cancelled or failing, completes the close handshake whoever started it (sends 1000, or
        lets the server's close be answered) under a shielded scope bounded by
        ``close_timeout_s``, then closes the socket, so the venue frees the slot at once.
        """
        try:
            async with self._open(on_state or _ignore_state) as session:
                yield session
        except BaseExceptionGroup as group:
            _raise_one(group)

    @asynccontextmanager
    async def _open(self, on_state: OnState) -> AsyncIterator[AlpacaSession]:
        cfg = self._config
        self.connects += 1
        on_state(ConnectionState.CONNECTING)
        content_type = b"application/msgpack" if cfg.fmt == "msgpack" else b"application/json"
        headers = [(b"Content-Type", content_type)]
        if cfg.auth == "header":
            headers += [
                (b"APCA-API-KEY-ID", cfg.api_key.reveal().encode()),
                (b"APCA-API-SECRET-KEY", cfg.secret_key.reveal().encode()),
            ]
        recorder = self._recording()
        try:
            # This nursery holds trio-websocket's reader task (see adapters.alpaca.transport):
            # ours, so that every wait in it has our deadline and leaving cannot hang on it.
            async with trio.open_nursery() as transport:
                try:
                    link = await dial(
                        transport,
                        cfg.url,
                        timeout_s=cfg.connect_timeout_s,
                        extra_headers=headers,
                        message_queue_size=cfg.message_queue_size,
                        max_message_size=cfg.max_message_size,
                    )
                except FeedUnavailable as e:
                    if e.code == 404:
                        # Alpaca answers a URL that is no stream with HTTP 404 at the upgrade:
                        # a setting, retrying cannot fix it (the Go SDK stops too).
                        raise FatalFeedError(
                            "HTTP 404 at the WebSocket upgrade: no stream at this URL's path "
                            "(stocks: /v2/iex, /v2/sip, /v2/delayed_sip, /v2/test)",
                            code=404, setting=cfg.url_setting, lane_only=True,
                        ) from e  # fmt: skip
                    raise
                try:
                    session = AlpacaSession(
                        link.ws, cfg, self._stats, self._now_ns, self._decode_log, recorder
                    )
                    await session._handshake(on_state)
                    async with trio.open_nursery() as nursery:
                        await nursery.start(session._run_background)
                        try:
                            yield session
                        finally:
                            session._close()
                finally:
                    # Leave with the close handshake done, whoever started it, and the socket
                    # closed, so Alpaca frees the slot now, not after ~90 s. trio-websocket's
                    # reader is shielded from our cancellation and still reads the answer;
                    # but when we are being cancelled (shutdown) do not wait out the whole
                    # close timeout for it: the close frame itself is what frees the slot.
                    cancelled = trio.current_effective_deadline() == -math.inf
                    wait = (
                        min(cfg.close_timeout_s, _CANCELLED_CLOSE_WAIT_S)
                        if cancelled
                        else cfg.close_timeout_s
                    )
                    await link.leave(1000, wait)
        except ConnectionClosed as e:
            raise FeedDisconnected(f"server ended the session: {_close_text(e)}") from e
        except HandshakeError as e:
            raise FeedDisconnected(f"websocket error: {e!r}") from e
        finally:
            if recorder is not None:
                recorder.close()  # never raises; the next session's first write reopens it


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _raise_one(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one exception that matters from a nursery's group: the only non-Cancelled
    one; a bug before a feed error when there are several (the others are logged)."""
    leaves = _leaves(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if not real:
        chosen = leaves[0]
    else:
        bugs = [e for e in real if not isinstance(e, FeedError)]
        chosen = (bugs or real)[0]
        for other in real:
            if other is not chosen:
                log.error("alpaca: also raised while closing the session", exc_info=other)
    # Raise the leaf itself, keeping its own context (not the group that contains it).
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
        del chosen, context


async def record_stream(
    feed: AlpacaQuoteFeed, request: Subscriptions, duration_s: float
) -> FeedStats:
    """Record a live stream: connect, subscribe to ``request``, read for ``duration_s`` seconds.

    The feed's config must have ``record_path``; every frame of the session (the handshake
    included) is written there, flushed on exit. Returns the feed's stats. Feed errors propagate
    (what was received before them is recorded).
    """
    if feed.config.record_path is None:
        raise ValueError("the feed's config has no record_path")
    with trio.move_on_after(duration_s):
        async with feed.connect() as session:
            await session.subscribe(request)
            async for _ in session.events():
                pass
    return feed.stats
