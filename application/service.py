"""MarketDataService: every use case of one instance, run in one task group.

Start order (each ``tg.start`` returns once its component is ready): the price writer, the first
subscription sync, then the connection loop, the periodic sync and the positions-changed
listener. Cancelling the task group stops everything; :meth:`run` then flushes pending prices
under a deadline. A fatal feed error ends :meth:`run` with :class:`FatalFeedError`, a store
that refuses our settings with :class:`FatalStoreError`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio

from application.keep_connected import KeepConnected
from application.status import Health, Role, ServiceStatus, StoreState
from application.stream_prices import StreamMidPrices, StreamObserver
from application.streams import Stream
from application.sync_subscriptions import SyncSubscriptions
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, FatalStoreError, PositionSourceError
from domain.features import FeatureHealth
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S, is_silent
from domain.subscriptions import SubscriptionPlan
from ports.clock import Clock
from ports.event_bus import POSITIONS_CHANGED_CHANNEL, EventBus
from ports.position_source import PositionSource
from ports.price_cache import PriceCache
from ports.quote_feed import QuoteFeed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    static_symbols: frozenset[str] = frozenset()
    sync_interval_s: float = 300.0
    symbol_limit: int | None = 30
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    listen_for_position_changes: bool = True
    # The flush deadline leaves room in the 2 s shutdown bound for closing the feed before it
    # and the interpreter's exit after it, also when Redis is frozen (calls abandoned).
    shutdown_flush_s: float = 1.0
    max_pending: int = 50_000
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    # A connected, subscribed stream without data for longer than this makes /health degraded
    # (MDS_DATA_TIMEOUT, the data watchdog's threshold). None: silence is never a fault.
    stall_after_s: float | None = None
    source: str = ""
    """The feed's name, published as the price's ``exchange`` (``IEX``, ``SIP``, ``SIM``...)."""
    # Per-class symbol limits of the streams (a class not named here gets ``symbol_limit``).
    symbol_limits: Mapping[AssetClass, int | None] = field(default_factory=dict)
    # Per-class feed names published as ``exchange`` (a class not named here gets ``source``).
    sources: Mapping[AssetClass, str] = field(default_factory=dict)


class MarketDataService:
    """``feed`` is one QuoteFeed for every symbol (simulator, replay, tests), or one feed per
    asset class (Alpaca: stocks, crypto, options), each run as its own :class:`Stream`."""

    def __init__(
        self,
        feed: QuoteFeed | Mapping[AssetClass, QuoteFeed],
        cache: PriceCache,
        bus: EventBus,
        clock: Clock,
        config: ServiceConfig,
        *,
        positions: PositionSource | None = None,
        observer: StreamObserver | None = None,
        rng: Callable[[], float] | None = None,
        features: FeatureHealth | None = None,
    ) -> None:
        self.cache = cache
        self.bus = bus
        self.clock = clock
        self.config = config
        self.status = ServiceStatus(started_at=clock.monotonic())
        if features is not None:  # shared with the adapters of optional features
            self.status.features = features
        self.stream = StreamMidPrices(
            cache,
            bus,
            clock,
            self.status,
            observer=observer,
            max_pending=config.max_pending,
            source=config.source,
            max_future_skew_s=config.max_future_skew_s,
        )
        self._rng = rng if rng is not None else random.random
        self.subscribed_listeners: list[Callable[[Stream, frozenset[str]], None]] = []
        self.streams: list[Stream] = []
        if isinstance(feed, Mapping):
            if not feed:
                raise ValueError("at least one feed is needed")
            for cls in AssetClass:  # stocks first: the primary stream
                if cls in feed:
                    status = ServiceStatus(started_at=self.status.started_at)
                    limit = config.symbol_limits.get(cls, config.symbol_limit)
                    self.streams.append(self._make_stream(cls.value, frozenset({cls}), feed[cls],
                                                          status, limit, lazy=True))  # fmt: skip
        else:
            self.streams.append(
                self._make_stream("all", None, feed, self.status, config.symbol_limit, lazy=False)
            )
        self.feed = self.streams[0].feed
        self.connection = self.streams[0].connection
        self.sync = SyncSubscriptions(
            positions,
            config.static_symbols,
            self.streams,
            self.status,
            interval_s=config.sync_interval_s,
        )

    def _make_stream(
        self,
        name: str,
        classes: frozenset[AssetClass] | None,
        feed: QuoteFeed,
        status: ServiceStatus,
        capacity: int | None,
        *,
        lazy: bool,
    ) -> Stream:
        holder: list[Stream] = []

        def on_subscribed(symbols: frozenset[str]) -> None:
            for listener in self.subscribed_listeners:
                listener(holder[0], symbols)

        source = self.config.source
        if classes is not None and len(classes) == 1:
            source = self.config.sources.get(next(iter(classes)), source)
        connection = KeepConnected(
            feed,
            self.clock,
            status,
            self.config.backoff,
            self.stream.handler_for(source),
            rng=self._rng,
            on_subscribed=on_subscribed,
        )
        stream = Stream(name, classes, feed, status, connection, capacity, lazy=lazy)
        holder.append(stream)
        return stream

    # -- the service as a whole, across its streams --------------------------------------------
    @property
    def single(self) -> bool:
        """One feed for every class (its stream's status is the service's)."""
        return self.streams[0].status is self.status

    def confirmed(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for stream in self.streams:
            out |= stream.status.confirmed
        return out

    def connected(self) -> bool:
        """Every stream that has symbols is connected (and at least one has)."""
        if self.single:
            return self.status.connected
        active = [s for s in self.streams if s.active]
        return bool(active) and all(s.status.connected for s in active)

    def streaming(self) -> bool:
        if self.single:
            return self.status.streaming
        return self.connected() and bool(self.confirmed()) and self.status.store is StoreState.OK

    def connection_state(self) -> str:
        if self.single:
            return self.status.state.value
        if self.status.fatal_error is not None:
            return ConnectionState.FAILED.value
        for stream in self.streams:
            if stream.active and not stream.status.connected:
                return stream.status.state.value
        return (
            ConnectionState.CONNECTED.value
            if any(s.active for s in self.streams)
            else ConnectionState.DISCONNECTED.value
        )

    def reconnect_attempts(self) -> int:
        return max(s.status.reconnect_attempts for s in self.streams)

    def reconnects(self) -> int:
        return sum(s.status.reconnects for s in self.streams)

    def last_message_ns(self) -> int | None:
        times = [s.status.last_message_ns for s in self.streams]
        known = [t for t in times if t is not None]
        return max(known) if known else None

    def silent_streams(self) -> list[tuple[Stream, float]]:
        """The streams that have symbols but got no data for longer than ``stall_after_s``,
        with their silence in seconds (measured across reconnects: a stall between the data
        watchdog's reconnects stays one silence). A standby streams nothing."""
        limit = self.config.stall_after_s
        if limit is None or self.status.role is Role.STANDBY:
            return []
        now = self.clock.now_ns()
        out: list[tuple[Stream, float]] = []
        for stream in self.streams:
            silent = stream.status.silent_s(now)
            if silent is not None and is_silent(silent, limit):
                out.append((stream, silent))
        return out

    def silence_detail(self, stream: Stream, silent_s: float) -> str:
        """A silent stream, in words (the /health detail)."""
        who = "feed" if self.single else f"{stream.name} stream"
        limit = self.config.stall_after_s
        return f"{who}: no data for {silent_s:.1f} s (MDS_DATA_TIMEOUT {limit:g} s)"

    def health(self) -> Health:
        health = self._health()
        if health is Health.HEALTHY and self.silent_streams():
            return Health.DEGRADED
        return health

    def _health(self) -> Health:
        status = self.status
        if self.single:
            return status.health()
        if status.fatal_error is not None or all(s.disabled for s in self.streams):
            return Health.FAILED
        if status.role is Role.STANDBY:
            ok = status.store is StoreState.OK and not status.features.failing
            return Health.HEALTHY if ok else Health.DEGRADED
        if status.store is not StoreState.OK or status.features.failing:
            return Health.DEGRADED
        for stream in self.streams:
            if stream.disabled is not None or (stream.active and not stream.status.connected):
                return Health.DEGRADED
        return Health.HEALTHY

    def stream_details(self) -> list[str]:
        """Per stream, why it is not streaming (disabled, or not connected), in words."""
        details: list[str] = []
        for stream in self.streams:
            if stream.disabled is not None:
                details.append(f"{stream.name} stream disabled: {stream.disabled}")
            elif stream.active and not stream.status.connected:
                details.append(f"{stream.name} stream {stream.status.state.value}")
        return details

    async def sync_now(self) -> SubscriptionPlan | None:
        """Sync subscriptions now; None when positions could not be read (kept as they were)."""
        try:
            return await self.sync.request()
        except PositionSourceError:
            return None

    async def _listen_for_position_changes(self) -> None:
        """Trigger a sync on every ``positions.changed`` signal; re-listen after bus errors
        (0.5 s doubling to 10 s), one WARNING per outage and one INFO once listening again."""
        delay = 0.5
        failing = False
        while True:
            try:
                async with self.bus.listen(POSITIONS_CHANGED_CHANNEL) as signals:
                    delay = 0.5
                    if failing:
                        failing = False
                        log.info("listening on %s again", POSITIONS_CHANGED_CHANNEL)
                    async for _ in signals:
                        self.sync.trigger()
            except ConnectionError as e:
                if failing:
                    log.debug("still cannot listen on %s: %s", POSITIONS_CHANGED_CHANNEL, e)
                else:
                    failing = True
                    log.warning("cannot listen on %s (%s); retrying", POSITIONS_CHANGED_CHANNEL, e)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _run_stream(self, stream: Stream) -> None:
        try:
            await stream.run()
        except FatalFeedError as e:
            self.status.fatal_error = str(e)
            raise
        if all(s.disabled is not None for s in self.streams):
            # Nothing left to stream: the service fails as a single feed always did.
            error = FatalFeedError(stream.disabled or "every stream failed", setting=None)
            self.status.fatal_error = str(error)
            raise error

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (or a fatal feed error, which propagates). ``started`` once the
        writer runs and the first sync has planned the subscriptions (not waiting for the
        venue: an unreachable venue must not hold up the HTTP API)."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.stream.run)
                await tg.start(self.sync.run)
                for stream in self.streams:
                    tg.start_soon(self._run_stream, stream)
                if self.config.listen_for_position_changes:
                    tg.start_soon(self._listen_for_position_changes)
                task_status.started()
        except BaseExceptionGroup as group:
            # A fatal feed or store error is the only expected way out; hand it over alone.
            fatal, rest = group.split((FatalFeedError, FatalStoreError))
            if fatal is not None and rest is None:
                raise _first_leaf(fatal) from None
            raise
        finally:
            await self.stream.flush(self.config.shutdown_flush_s)


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return first if not isinstance(first, BaseExceptionGroup) else _first_leaf(first)
