"""ServiceMetrics: a private registry, histograms fed by plain calls, counters read from a
snapshot at scrape time, and a valid Prometheus exposition."""

from __future__ import annotations

from collections import Counter

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from adapters.clock import SystemClock
from adapters.memory import InMemoryEventBus, InMemoryPriceCache, ScriptedQuoteFeed
from application.service import MarketDataService, ServiceConfig
from application.status import Role, ServiceStatus, StoreState
from application.stream_prices import StreamObserver
from domain.connection import ConnectionState
from domain.stats import FeedStats
from entrypoints.metrics import MetricsSnapshot, ServiceMetrics

EXPECTED_FAMILIES = {
    "mds_messages",
    "mds_decode_errors",
    "mds_venue_errors",
    "mds_frames",
    "mds_received_bytes",
    "mds_reconnects",
    "mds_reconnect_attempts",
    "mds_connection_state",
    "mds_subscribed_symbols",
    "mds_desired_symbols",
    "mds_left_out_symbols",
    "mds_quote_age_seconds",
    "mds_cache_write_seconds",
    "mds_cache_write_batch_size",
    "mds_prices_computed",
    "mds_prices_written",
    "mds_prices_published",
    "mds_conflated",
    "mds_refused_older",
    "mds_snapshot_quotes",
    "mds_snapshot_missing",
    "mds_dropped",
    "mds_no_mid",
    "mds_cache_write_errors",
    "mds_position_sync_errors",
    "mds_symbols_rejected",
    "mds_pending_writes",
    "mds_subscribed_symbols_without_fresh_price",
    "mds_redis_degraded",
    "mds_leader",
    "mds_uptime_seconds",
}


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_metric_is_exposed_in_valid_text_format() -> None:
    text = ServiceMetrics().render().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert families >= EXPECTED_FAMILIES


def test_registry_is_private_so_instances_do_not_clash() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_quote_age(1.0)
    assert samples(first)[("mds_quote_age_seconds_count", ())] == 1.0
    assert samples(second)[("mds_quote_age_seconds_count", ())] == 0.0
    assert b"mds_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_is_a_stream_observer_and_what_it_observes_reaches_the_histograms() -> None:
    metrics = ServiceMetrics()
    observer: StreamObserver = metrics  # mypy checks the Protocol here
    observer.observe_write(0.001, 3)
    observer.observe_quote_age(0.25)
    got = samples(metrics)
    assert got[("mds_cache_write_seconds_count", ())] == 1
    assert got[("mds_cache_write_seconds_sum", ())] == 0.001
    assert got[("mds_cache_write_batch_size_count", ())] == 1
    assert got[("mds_cache_write_batch_size_sum", ())] == 3
    assert got[("mds_quote_age_seconds_count", ())] == 1
    assert got[("mds_quote_age_seconds_sum", ())] == 0.25


def test_histograms_and_their_buckets() -> None:
    m = ServiceMetrics()
    m.observe_write(0.0003, 40)
    m.observe_cache_write(0.2, 1)
    m.observe_quote_age(0.004)
    m.observe_quote_age(-0.5)  # venue clock ahead of ours: counted as 0
    m.observe_quote_age(45.0)
    got = samples(m)
    assert got[("mds_cache_write_seconds_bucket", (("le", "0.0001"),))] == 0
    assert got[("mds_cache_write_seconds_bucket", (("le", "0.0005"),))] == 1
    assert got[("mds_cache_write_seconds_bucket", (("le", "0.25"),))] == 2
    assert got[("mds_cache_write_batch_size_sum", ())] == 41
    assert got[("mds_quote_age_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("mds_quote_age_seconds_bucket", (("le", "0.005"),))] == 2
    assert got[("mds_quote_age_seconds_bucket", (("le", "30.0"),))] == 2
    assert got[("mds_quote_age_seconds_bucket", (("le", "60.0"),))] == 3
    assert got[("mds_quote_age_seconds_sum", ())] == 45.004


def test_refresh_from_exports_counters_and_gauges() -> None:
    m = ServiceMetrics()
    m.refresh_from(
        MetricsSnapshot(
            messages_by_type={"quote": 10, "trade": 2},
            decode_errors_by_reason={"bad_timestamp": 1},
            venue_errors_by_code={406: 2},
            reconnects=4,
            connection_state="connected",
            subscribed_symbols=30,
            conflated=7,
            dropped=1,
            prices_published=99,
            no_mid_by_reason={"crossed": 5},
            redis_degraded=True,
            leader=False,
        )
    )
    got = samples(m)
    assert got[("mds_messages_total", (("type", "quote"),))] == 10
    assert got[("mds_messages_total", (("type", "trade"),))] == 2
    assert got[("mds_decode_errors_total", (("reason", "bad_timestamp"),))] == 1
    assert got[("mds_venue_errors_total", (("code", "406"),))] == 2
    assert got[("mds_reconnects_total", ())] == 4
    assert got[("mds_subscribed_symbols", ())] == 30
    assert got[("mds_conflated_total", ())] == 7
    assert got[("mds_dropped_total", ())] == 1
    assert got[("mds_prices_published_total", ())] == 99
    assert got[("mds_no_mid_total", (("reason", "crossed"),))] == 5
    assert got[("mds_no_mid_total", (("reason", "empty_bid"),))] == 0
    assert got[("mds_redis_degraded", ())] == 1
    assert got[("mds_leader", ())] == 0
    states = {k[1][0][1]: v for k, v in got.items() if k[0] == "mds_connection_state"}
    assert states == {
        s.value: (1.0 if s is ConnectionState.CONNECTED else 0.0) for s in ConnectionState
    }


def test_bound_callback_is_read_at_every_scrape() -> None:
    reconnects = [0]
    m = ServiceMetrics(lambda: MetricsSnapshot(reconnects=reconnects[0]))
    assert samples(m)[("mds_reconnects_total", ())] == 0
    reconnects[0] = 3
    assert samples(m)[("mds_reconnects_total", ())] == 3
    m.bind(lambda: MetricsSnapshot(reconnects=8))
    assert samples(m)[("mds_reconnects_total", ())] == 8


def test_snapshot_from_the_application_status() -> None:
    status = ServiceStatus(started_at=100.0)
    status.set_state(ConnectionState.CONNECTING)
    status.set_state(ConnectionState.AUTHENTICATING)
    status.set_state(ConnectionState.CONNECTED)
    status.reconnects = 2
    status.reconnect_attempts = 1
    status.desired = frozenset({"AAPL", "MSFT", "TSLA"})
    status.confirmed = frozenset({"AAPL", "MSFT"})
    status.left_out = ("TSLA",)
    status.store = StoreState.DEGRADED
    status.role = Role.LEADER
    status.pending_writes = 12
    status.counters.update(
        prices=50,
        prices_written=40,
        published=40,
        conflated=10,
        refused_older=1,
        dropped=2,
        no_mid_empty_bid=3,
        no_mid_crossed=4,
        cache_write_errors=5,
        position_sync_errors=6,
        symbols_rejected=7,
    )
    stats = FeedStats(
        frames=9,
        bytes=1234,
        messages=Counter(quote=20, trade=3),
        decode_errors=Counter(unknown_type=1),
        errors_by_code=Counter({406: 1}),
    )
    snap = MetricsSnapshot.from_status(status, stats, now=160.0)
    assert snap == MetricsSnapshot(
        messages_by_type={"quote": 20, "trade": 3},
        decode_errors_by_reason={"unknown_type": 1},
        venue_errors_by_code={406: 1},
        frames=9,
        bytes_received=1234,
        reconnects=2,
        reconnect_attempts=1,
        connection_state="connected",
        subscribed_symbols=2,
        desired_symbols=3,
        left_out_symbols=1,
        prices_computed=50,
        prices_written=40,
        prices_published=40,
        conflated=10,
        refused_older=1,
        dropped=2,
        no_mid_by_reason={"empty_bid": 3, "empty_ask": 0, "crossed": 4},
        cache_write_errors=5,
        position_sync_errors=6,
        symbols_rejected=7,
        pending_writes=12,
        redis_degraded=True,
        leader=True,
        uptime_s=60.0,
    )
    m = ServiceMetrics(lambda: MetricsSnapshot.from_status(status, stats, now=160.0))
    assert samples(m)[("mds_uptime_seconds", ())] == 60.0
    assert MetricsSnapshot.from_status(status).messages_by_type == {}


async def test_attach_reads_a_running_service_at_scrape_time() -> None:
    clock = SystemClock()
    feed = ScriptedQuoteFeed(clock)
    service = MarketDataService(
        feed,
        InMemoryPriceCache(clock, ttl_s=300.0),
        InMemoryEventBus(),
        clock,
        ServiceConfig(),
    )
    m = ServiceMetrics()
    m.attach(service)
    assert samples(m)[("mds_prices_written_total", ())] == 0
    service.status.counters["prices_written"] += 5
    feed.stats.messages["quote"] += 2
    got = samples(m)
    assert got[("mds_prices_written_total", ())] == 5
    assert got[("mds_messages_total", (("type", "quote"),))] == 2
    assert got[("mds_uptime_seconds", ())] >= 0


async def test_symbols_without_a_fresh_price_are_counted_at_scrape_time() -> None:
    from domain.market import Quote

    clock = SystemClock()
    service = MarketDataService(
        ScriptedQuoteFeed(clock),
        InMemoryPriceCache(clock, ttl_s=300.0),
        InMemoryEventBus(),
        clock,
        ServiceConfig(),
    )
    m = ServiceMetrics()
    m.attach(service)
    now = clock.now_ns()

    def quote(symbol: str, age_s: float) -> Quote:
        ts = now - int(age_s * 1e9)
        return Quote(symbol, 1.0, 1, 1.02, 1, "V", "V", (), "C", ts, ts)

    service.status.confirmed = frozenset({"FRESH", "OLD", "NEVER"})
    service.stream.handle([quote("FRESH", 1), quote("OLD", 600), quote("UNSUBSCRIBED", 900)])
    assert samples(m)[("mds_subscribed_symbols_without_fresh_price", ())] == 2  # OLD, NEVER
    service.stream.handle([quote("OLD", 0.5)])
    assert samples(m)[("mds_subscribed_symbols_without_fresh_price", ())] == 1
