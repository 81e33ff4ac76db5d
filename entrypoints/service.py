"""Run market-data-service: ``python entrypoints/service.py`` (or ``mds run``).

Configuration comes from environment variables and an optional ``.env`` (see README.md). With
nothing set it runs the embedded default: simulated quotes for AAPL, MSFT and SPY, in-memory cache
and bus, the HTTP API on 127.0.0.1:8000, prices logged.

Exit codes: 0 after SIGINT/SIGTERM/SIGHUP (128 + the signal's number when a second one cuts the
shutdown short), 2 for invalid configuration (one message naming each bad variable; also Redis
refusing our credentials or permissions: "check REDIS_URL"), 3 when the feed fails fatally
(bad credentials, plan without the feed, too many reconnect attempts, an unusable replay file),
4 when a start-up resource is unavailable (the HTTP port is taken), each with one clear line
saying why and what to check.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a file: make the project's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import anyio.abc
from dependency_injector import providers

from adapters.redis import RedisPriceStore, open_redis_store
from adapters.redis.lease import RedisLease
from application.leadership import LeaderElection
from application.service import MarketDataService
from domain.errors import FatalFeedError, FatalStoreError
from domain.features import LIVE_STREAM
from entrypoints.container import Container, make_initial_image
from entrypoints.http_limit import ConcurrencyLimit
from entrypoints.optional import serve_http_alone
from entrypoints.settings import Settings, SettingsError, load_settings, unknown_variables

if TYPE_CHECKING:
    from application.price_fanout import PriceFanOut
    from domain.price import Price

log = logging.getLogger("mds")

EXIT_CONFIG = 2
EXIT_FATAL = 3
EXIT_STARTUP = 4
SUMMARY_EVERY_S = 5.0


class StartupError(Exception):
    """A start-up resource is unavailable (the HTTP port is taken); the message names the
    setting to change. Distinct from invalid configuration: the same settings may work later."""


@dataclass(frozen=True, slots=True)
class Store:
    name: str  # "memory", "single", "sentinel" or "cluster"
    redis: RedisPriceStore | None = None


@asynccontextmanager
async def open_store(container: Container, settings: Settings) -> AsyncIterator[Store]:
    """Point the container's cache and bus at Redis when configured (else keep memory)."""
    if settings.redis_mode == "memory":
        yield Store("memory")
        return
    async with open_redis_store(
        settings.redis_url or "redis://",
        mode={"single": "standalone"}.get(settings.redis_mode, settings.redis_mode),
        sentinels=[str(s) for s in settings.redis_sentinels],
        master_name=settings.redis_master,
        ttl_s=settings.price_ttl_s,
        max_future_skew_s=settings.max_future_skew_s,
    ) as store:
        with (
            container.cache.override(providers.Object(store.cache)),
            container.bus.override(providers.Object(store.bus)),
        ):
            yield Store(settings.redis_mode, store)


@dataclass(frozen=True, slots=True)
class Running:
    """What ``run`` hands over once everything is up (tests and tools use it)."""

    service: MarketDataService
    http_urls: list[str]


async def log_summary(service: MarketDataService, every_s: float = SUMMARY_EVERY_S) -> None:
    """Every ``every_s`` one line, in every mode: the price rate, how many subscribed symbols
    have a price, and the latest prices of a few (so a newcomer sees it working)."""
    counters = service.status.counters
    last_count = counters["prices"]
    while True:
        await anyio.sleep(every_s)
        count = counters["prices"]
        rate = (count - last_count) / every_s
        last_count = count
        symbols = sorted(service.confirmed())
        try:
            prices = await service.cache.get_many(symbols) if symbols else {}
        except ConnectionError:
            log.info("prices: %.0f/s; price store unavailable", rate)
            continue
        shown = ", ".join(f"{s} {prices[s].mid}" for s in sorted(prices)[:3])
        more = f" (+{len(prices) - 3} more)" if len(prices) > 3 else ""
        log.info(
            "prices: %.0f/s; %d of %d subscribed symbols priced%s",
            rate,
            len(prices),
            len(symbols),
            f": {shown}{more}" if shown else "",
        )


def describe_store(settings: Settings) -> str:
    """Where prices go, in words (no password)."""
    from entrypoints.settings import redact_url

    url = redact_url(settings.redis_url) if settings.redis_url else ""
    return {
        "memory": "memory (no REDIS_URL: in this process only)",
        "single": f"Redis {url}",
        "sentinel": f"Redis via Sentinel (master {settings.redis_master!r})",
        "cluster": f"Redis Cluster (seed {url})",
    }[settings.redis_mode]


def nothing_to_price(settings: Settings) -> str | None:
    """Why the service will price nothing, as a warning, or None."""
    if settings.symbols or settings.position_source != "none":
        return None
    return (
        "nothing will be priced: MDS_SYMBOLS is empty and MDS_POSITION_SOURCE=none; set "
        "MDS_SYMBOLS=AAPL,MSFT (or a position source, MDS_POSITION_SOURCE=gateway|alpaca)"
    )


async def stream_feeding(
    service: MarketDataService,
    fanout: PriceFanOut,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service's streams (the single instance, or the leader's term), handing every
    batch the writer publishes to the live stream's fan-out in-process meanwhile: the instance
    that publishes the prices does not read them back from the bus. Before and after (a
    standby), the fan-out follows the bus."""
    features = service.status.features

    with fanout.fed_locally() as published:

        def feed(prices: Sequence[Price]) -> None:
            # An optional feature fails alone: a fault in the live stream's table never reaches
            # the writer (which would take it for a failed write and retry a published batch).
            try:
                published(prices)
            except Exception as e:
                if features.fail(LIVE_STREAM, f"{type(e).__name__}: {e}"[:200]):
                    log.error(
                        "live stream (/prices/stream) failing, prices keep flowing: %s: %s",
                        type(e).__name__, e, exc_info=True,
                    )  # fmt: skip
            else:
                if LIVE_STREAM in features.failing and features.recover(LIVE_STREAM):
                    log.info("live stream (/prices/stream) works again")

        service.stream.on_published = feed
        try:
            await service.run(task_status=task_status)  # its final flush still feeds it
        finally:
            service.stream.on_published = None


async def run(
    settings: Settings,
    container: Container | None = None,
    *,
    task_status: anyio.abc.TaskStatus[Running] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service until cancelled or a signal; raises :class:`FatalFeedError` when the
    feed cannot go on. ``started`` hands over the running service and the API's URLs."""
    from application.price_fanout import PriceFanOut
    from entrypoints.http_api import HttpOptions, create_app, serve_http
    from entrypoints.http_sse import encode_event
    from entrypoints.metrics import ServiceMetrics
    from entrypoints.runtime import cancel_on_signals
    from entrypoints.view import ServiceViewAdapter

    container = container or Container(settings=settings)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(container, settings))
        positions = container.positions()
        if positions is not None and hasattr(positions, "__aenter__"):
            await stack.enter_async_context(positions)  # type: ignore[arg-type]
        metrics = ServiceMetrics()
        stack.enter_context(container.observer.override(providers.Object(metrics)))
        service = container.service()
        image = None
        snapshots = container.snapshots()
        if snapshots is not None:  # MDS_INITIAL_IMAGE: latest quotes over REST on every subscribe
            await stack.enter_async_context(snapshots)  # type: ignore[arg-type]
            image = make_initial_image(service, snapshots, container.config())
        view = ServiceViewAdapter(
            service,
            store=store.name,
            max_age_s=settings.price_ttl_s,
            max_future_skew_s=settings.max_future_skew_s,
        )
        metrics.attach(service)
        status = service.status
        fanout = PriceFanOut(
            service.bus,
            service.cache,
            max_clients=settings.sse_max_clients,
            all_symbols=lambda: status.confirmed or status.desired,
            clock=service.clock,
            max_future_skew_s=settings.max_future_skew_s,
            encode=encode_event,
        )
        token = settings.http_token.get_secret_value() if settings.http_token else None
        options = HttpOptions(
            token=token,
            protect=settings.http_protect,
            cors_origins=settings.cors_origins,
            sse_send_timeout_s=settings.sse_send_timeout_s,
            stale_after_s=settings.price_ttl_s,
        )
        app = ConcurrencyLimit(
            create_app(view, metrics.registry, fanout=fanout, options=options),
            settings.http_max_concurrency,
            service.status.counters,
        )
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(
                    partial(cancel_on_signals, pending=lambda: service.stream.unwritten),
                    tg.cancel_scope,
                )
                if image is not None:  # its own task: a slow REST call never holds the stream
                    await tg.start(image.run)
                stream = partial(stream_feeding, service, fanout)
                if settings.ha and store.redis is not None:
                    election = LeaderElection(
                        RedisLease(store.redis.connection),
                        service.clock,
                        service.status,
                        ttl_s=settings.ha_lease_ttl_s,
                    )
                    await tg.start(election.run, stream)
                else:
                    await tg.start(stream)
                await tg.start(fanout.run)
                try:
                    # The API fails alone: its server is restarted when it dies (optional.py).
                    urls = await tg.start(
                        serve_http_alone,
                        partial(serve_http, app, stuck_peer_timeout_s=settings.sse_send_timeout_s),
                        settings.http_host,
                        settings.http_port,
                        service.status.features,
                    )
                except OSError as e:
                    address = f"{settings.http_host}:{settings.http_port}"
                    raise StartupError(
                        f"MDS_HTTP_PORT: cannot listen on {address}: "
                        f"{(e.strerror or str(e)).lower()} (another instance running? set "
                        "MDS_HTTP_PORT to a free port, or 0 for any)"
                    ) from None
                tg.start_soon(log_summary, service)
                log.info(
                    "market-data-service running: feed=%s, prices in %s, http=%s",
                    settings.feed,
                    describe_store(settings),
                    " ".join(urls),
                )
                task_status.started(Running(service, urls))
        except BaseExceptionGroup as group:
            fatal, rest = group.split((FatalFeedError, FatalStoreError, StartupError))
            if fatal is not None and rest is None:
                first: BaseException = fatal
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
            raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mds run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--env-file", type=Path, default=None, help="read settings from this file (default .env)"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (secrets hidden) and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from entrypoints.logging_setup import configure_logging

    if args.env_file is not None and not args.env_file.is_file():
        print(f"market-data-service: --env-file: no such file: '{args.env_file}'", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(env_file=args.env_file)
    except SettingsError as e:
        print(f"market-data-service: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        for name, value in settings.redacted().items():
            print(f"{name}={value}")
        return 0
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secret_values())
    for warning in unknown_variables(env_file=args.env_file):
        log.warning("%s", warning)
    if (why := nothing_to_price(settings)) is not None:
        log.warning("%s", why)
    # Quotes and prices are short-lived tuples: move everything alive after start-up out of
    # the collector's way and collect the young generation less often (fewer, shorter pauses).
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    try:
        anyio.run(run, settings, backend="trio")
    except FatalFeedError as e:
        log.critical("stopping: %s", e)
        return EXIT_FATAL
    except FatalStoreError as e:
        log.critical("stopping: %s", e)
        return EXIT_CONFIG
    except StartupError as e:
        log.critical("cannot start: %s", e)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
