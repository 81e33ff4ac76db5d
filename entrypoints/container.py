"""The one dependency-injector container: which adapter serves which port, from the settings.

Synchronous on purpose: dependency-injector's async providers assume asyncio and fail under
trio. The container only constructs objects; connections are opened with ``async with`` by
:mod:`entrypoints.service`, which then overrides ``cache`` and ``bus`` (Redis or memory).
Tests override any provider: ``container.feed.override(providers.Object(fake))``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from dependency_injector import containers, providers

from adapters.alpaca.config import AlpacaFeedConfig, Secret
from adapters.alpaca.feed import AlpacaQuoteFeed
from adapters.clock import SystemClock
from adapters.http.position_source import AlpacaPositionSource, GatewayPositionSource
from adapters.http.snapshot_source import AlpacaSnapshotSource
from adapters.memory import InMemoryEventBus, InMemoryPriceCache
from adapters.simulated import SimulatedQuoteFeed
from application.initial_image import InitialImage
from application.service import MarketDataService, ServiceConfig
from application.stream_prices import StreamObserver
from domain.assets import AssetClass
from domain.backoff import BackoffPolicy
from domain.features import FeatureHealth
from entrypoints.settings import Settings
from ports.clock import Clock
from ports.event_bus import EventBus
from ports.position_source import PositionSource
from ports.price_cache import PriceCache
from ports.quote_feed import QuoteFeed
from ports.snapshot_source import SnapshotSource


def alpaca_feed_config(settings: Settings) -> AlpacaFeedConfig:
    if settings.alpaca_api_key is None or settings.alpaca_secret_key is None:
        raise ValueError("ALPACA_API_KEY and ALPACA_SECRET_KEY are required for MDS_FEED=alpaca")
    return AlpacaFeedConfig(
        api_key=Secret(settings.alpaca_api_key.get_secret_value()),
        secret_key=Secret(settings.alpaca_secret_key.get_secret_value()),
        url=settings.stream_url,
        fmt=settings.stream_format,
        auth=settings.stream_auth,
        data_watchdog_s=settings.data_timeout_s or None,
        allow_insecure=settings.allow_insecure_ws,
        record_path=settings.record_file,
    )


def make_alpaca_feed(settings: Settings, clock: Clock, features: FeatureHealth) -> AlpacaQuoteFeed:
    return AlpacaQuoteFeed(alpaca_feed_config(settings), now_ns=clock.now_ns, features=features)


def make_alpaca_feeds(
    settings: Settings, clock: Clock, features: FeatureHealth
) -> dict[AssetClass, QuoteFeed]:
    """One Alpaca stream per class in MDS_ASSET_CLASSES, each its own connection."""
    base = alpaca_feed_config(settings)
    configs = {
        AssetClass.US_EQUITY: base,
        # Recording stays with the stocks stream (one writer per file).
        AssetClass.CRYPTO: replace(
            base,
            url=settings.crypto_stream_url,
            url_setting="ALPACA_CRYPTO_STREAM_URL",
            plan_hint="check the plan's crypto data",
            record_path=None,
        ),
        # Options are msgpack only ("unlike the stock and crypto stream").
        AssetClass.US_OPTION: replace(
            base,
            url=settings.options_stream_url,
            fmt="msgpack",
            url_setting="ALPACA_OPTIONS_STREAM_URL",
            plan_hint=(
                "options data needs the OPRA plan for .../v1beta1/opra; use "
                "wss://stream.data.alpaca.markets/v1beta1/indicative, or leave us_option out "
                "of MDS_ASSET_CLASSES"
            ),
            record_path=None,
        ),
    }
    return {
        cls: AlpacaQuoteFeed(config, now_ns=clock.now_ns, features=features)
        for cls, config in configs.items()
        if cls in settings.asset_classes
    }


def make_replay_feed(settings: Settings, clock: Clock) -> QuoteFeed:
    from adapters.replay import ReplayQuoteFeed

    return ReplayQuoteFeed(
        Path(settings.replay_file),
        speed=settings.replay_speed,
        hold_at_end=True,
        strict=True,
        keep_times=settings.replay_keep_times,
        now_ns=clock.now_ns,
    )


def make_position_source(settings: Settings) -> PositionSource | None:
    if settings.position_source == "gateway":
        assert settings.positions_url is not None  # checked by Settings
        return GatewayPositionSource(
            settings.positions_url, max_calls_per_minute=settings.position_calls_per_minute
        )
    if settings.position_source == "alpaca":
        assert settings.alpaca_api_key is not None and settings.alpaca_secret_key is not None
        return AlpacaPositionSource(
            settings.trading_url,
            settings.alpaca_api_key.get_secret_value(),
            settings.alpaca_secret_key.get_secret_value(),
            max_calls_per_minute=settings.position_calls_per_minute,
            asset_classes=frozenset(c.value for c in settings.asset_classes),
        )
    return None


STOCK_DATA_FEEDS: Final = frozenset({"iex", "sip", "delayed_sip", "boats", "overnight", "otc"})
OPTION_DATA_FEEDS: Final = frozenset({"indicative", "opra"})


def make_snapshot_source(settings: Settings, clock: Clock) -> AlpacaSnapshotSource | None:
    """The initial image's REST source: only with MDS_INITIAL_IMAGE and the Alpaca feed. The
    feeds asked for are the streams' (``/v2/sip`` -> ``feed=sip``; a test stream: the default)."""
    if not settings.initial_image or settings.feed != "alpaca":
        return None
    assert settings.alpaca_api_key is not None and settings.alpaca_secret_key is not None
    stock = stream_source(settings.stream_url).lower()
    option = stream_source(settings.options_stream_url).lower()
    return AlpacaSnapshotSource(
        settings.data_url,
        settings.alpaca_api_key.get_secret_value(),
        settings.alpaca_secret_key.get_secret_value(),
        clock.now_ns,
        stock_feed=stock if stock in STOCK_DATA_FEEDS else None,
        option_feed=option if option in OPTION_DATA_FEEDS else None,
    )


def make_initial_image(
    service: MarketDataService, source: SnapshotSource, config: ServiceConfig
) -> InitialImage:
    """An InitialImage writing through the service's price path, listening to its subscribes."""
    handlers = {
        cls: service.stream.handler_for(config.sources.get(cls, config.source))
        for cls in AssetClass
    }
    image = InitialImage(source, handlers, service.status)
    service.subscribed_listeners.append(image.on_subscribed)
    return image


def stream_source(url: str) -> str:
    """A stream's name from its URL: the path after the version, upper-cased."""
    segments = [s for s in urlsplit(url).path.split("/") if s][1:]
    name = re.sub(r"[^A-Z0-9_]", "_", "_".join(segments).upper())
    return name if name[:1].isalpha() else "ALPACA"


def feed_source(settings: Settings) -> str:
    """The feed's name, published in every price as ``exchange``: for Alpaca the stream's path
    after the version (``/v2/iex`` -> ``IEX``, ``/v2/delayed_sip`` -> ``DELAYED_SIP``,
    ``/v1beta3/crypto/us`` -> ``CRYPTO_US``), else ``SIM`` or ``REPLAY``."""
    if settings.feed != "alpaca":
        return str(settings.feed).upper()
    return stream_source(settings.stream_url)


def service_config(settings: Settings) -> ServiceConfig:
    return ServiceConfig(
        source=feed_source(settings),
        sources={
            AssetClass.US_EQUITY: feed_source(settings),
            AssetClass.CRYPTO: stream_source(settings.crypto_stream_url),
            AssetClass.US_OPTION: stream_source(settings.options_stream_url),
        },
        static_symbols=settings.symbols,
        sync_interval_s=settings.position_sync_interval_s,
        symbol_limit=settings.symbol_limit,
        max_future_skew_s=settings.max_future_skew_s,
        stall_after_s=settings.data_timeout_s or None,
        backoff=BackoffPolicy(
            base_s=settings.reconnect_base_delay_s,
            cap_s=settings.reconnect_max_delay_s,
            max_attempts=settings.reconnect_max_attempts,
            jitter=settings.reconnect_jitter,
        ),
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    clock: providers.Provider[Clock] = providers.Singleton(SystemClock)
    # Optional features report their failures here; /health and /metrics read it.
    features: providers.Provider[FeatureHealth] = providers.Singleton(FeatureHealth)

    feed: providers.Provider[QuoteFeed | Mapping[AssetClass, QuoteFeed]] = providers.Selector(
        settings.provided.feed,
        alpaca=providers.Singleton(make_alpaca_feeds, settings, clock, features),
        sim=providers.Singleton(
            SimulatedQuoteFeed,
            clock,
            rate_per_s=settings.provided.sim_rate,
            symbol_limit=settings.provided.symbol_limit,
        ),
        replay=providers.Singleton(make_replay_feed, settings, clock),
    )

    # The embedded default; entrypoints.service overrides both with Redis when REDIS_URL is set.
    cache: providers.Provider[PriceCache] = providers.Singleton(
        InMemoryPriceCache,
        clock,
        ttl_s=settings.provided.price_ttl_s,
        max_future_skew_s=settings.provided.max_future_skew_s,
    )
    bus: providers.Provider[EventBus] = providers.Singleton(InMemoryEventBus, keep=1_000)

    positions: providers.Provider[PositionSource | None] = providers.Singleton(
        make_position_source, settings
    )
    config: providers.Provider[ServiceConfig] = providers.Singleton(service_config, settings)
    snapshots: providers.Provider[SnapshotSource | None] = providers.Singleton(
        make_snapshot_source, settings, clock
    )
    observer: providers.Provider[StreamObserver | None] = providers.Object(None)

    service: providers.Provider[MarketDataService] = providers.Singleton(
        MarketDataService,
        feed,
        cache,
        bus,
        clock,
        config,
        positions=positions,
        observer=observer,
        features=features,
    )
