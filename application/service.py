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
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from application.keep_connected import KeepConnected
from application.status import ServiceStatus
from application.stream_prices import StreamMidPrices, StreamObserver
from application.sync_subscriptions import SyncSubscriptions
from domain.backoff import BackoffPolicy
from domain.errors import FatalFeedError, FatalStoreError, PositionSourceError
from domain.features import FeatureHealth
from domain.staleness import DEFAULT_MAX_FUTURE_SKEW_S
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
    shutdown_flush_s: float = 1.5
    max_pending: int = 50_000
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    source: str = ""
    """The feed's name, published as the price's ``exchange`` (``IEX``, ``SIP``, ``SIM``...)."""


class MarketDataService:
    def __init__(
        self,
        feed: QuoteFeed,
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
        self.feed = feed
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
        self.connection = KeepConnected(
            feed,
            clock,
            self.status,
            config.backoff,
            self.stream.handle,
            rng=rng if rng is not None else random.random,
        )
        self.sync = SyncSubscriptions(
            positions,
            config.static_symbols,
            self.connection,
            clock,
            self.status,
            interval_s=config.sync_interval_s,
            capacity=config.symbol_limit,
        )

    async def sync_now(self) -> SubscriptionPlan | None:
        """Sync subscriptions now; None when positions could not be read (kept as they were)."""
        try:
            return await self.sync.request()
        except PositionSourceError:
            return None

    async def _listen_for_position_changes(self) -> None:
        """Trigger a sync on every ``positions.changed`` signal; re-listen after bus errors."""
        delay = 0.5
        while True:
            try:
                async with self.bus.listen(POSITIONS_CHANGED_CHANNEL) as signals:
                    delay = 0.5
                    async for _ in signals:
                        self.sync.trigger()
            except ConnectionError as e:
                log.warning("cannot listen on %s (%s); retrying", POSITIONS_CHANGED_CHANNEL, e)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

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
                tg.start_soon(self.connection.run)
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
