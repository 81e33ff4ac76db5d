"""Prometheus metrics of one service instance, on a dedicated registry (never the global one).

Two kinds of metric, two mechanisms:

- **Distributions we observe** (quote age, cache-write latency and batch size) are real
  prometheus_client histograms, fed through plain methods (:meth:`ServiceMetrics.observe_write`,
  :meth:`ServiceMetrics.observe_quote_age`) so the application, which knows no metrics library,
  calls them through its ``StreamObserver`` protocol.
- **Counters and gauges owned elsewhere** (the feed's ``FeedStats``, the ``ServiceStatus``
  counters) are not copied into prometheus objects on every event: a custom collector reads a
  :class:`MetricsSnapshot` at scrape time, from a bound callback (:meth:`ServiceMetrics.bind`) or
  from the last :meth:`ServiceMetrics.refresh_from`, and yields ``CounterMetricFamily`` /
  ``GaugeMetricFamily``. The hot path pays nothing for them.

Every name starts with ``mds_``. Scrapes run on the event loop's thread (the snapshot reads
live state without locks), so do not call :meth:`ServiceMetrics.render` from a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from domain.connection import ConnectionState
from domain.features import FEATURES, METRICS, FeatureHealth

if TYPE_CHECKING:
    from application.service import MarketDataService
    from application.status import ServiceStatus
    from domain.stats import FeedStats

log = logging.getLogger(__name__)

QUOTE_AGE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
CACHE_WRITE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

FRESH_PRICE_S: Final = 60.0  # mds_subscribed_symbols_without_fresh_price counts older ones

NO_MID_REASONS: Final = ("empty_bid", "empty_ask", "crossed")


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """One stream's numbers (stocks, crypto, options: each its own connection)."""

    name: str
    connection_state: str
    disabled: bool
    subscribed_symbols: int
    desired_symbols: int
    reconnects: int
    frames: int
    messages: int
    silent: bool = False  # no data for longer than MDS_DATA_TIMEOUT while it has symbols


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Plain values of everything counted elsewhere, at one moment. Counters are monotonic."""

    messages_by_type: Mapping[str, int] = field(default_factory=dict)
    decode_errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    venue_errors_by_code: Mapping[int, int] = field(default_factory=dict)
    frames: int = 0
    bytes_received: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    connection_state: str = ConnectionState.DISCONNECTED.value
    subscribed_symbols: int = 0
    desired_symbols: int = 0
    left_out_symbols: int = 0
    prices_computed: int = 0
    prices_written: int = 0
    prices_published: int = 0
    conflated: int = 0
    refused_older: int = 0
    refused_future: int = 0
    snapshot_quotes: int = 0
    snapshot_missing: int = 0
    dropped: int = 0
    no_mid_by_reason: Mapping[str, int] = field(default_factory=dict)
    cache_write_errors: int = 0
    position_sync_errors: int = 0
    symbols_rejected: int = 0
    pending_writes: int = 0
    symbols_without_fresh_price: int = 0
    redis_degraded: bool = False
    leader: bool = True
    uptime_s: float = 0.0
    features_failing: frozenset[str] = frozenset()
    http_rejected: int = 0
    feature_failures: Mapping[str, int] = field(default_factory=dict)
    streams: tuple[StreamSnapshot, ...] = ()

    @classmethod
    def from_service(cls, service: MarketDataService) -> MetricsSnapshot:
        """Every stream's feed stats summed, the service's status, and one
        :class:`StreamSnapshot` per stream."""
        from dataclasses import replace

        from domain.stats import FeedStats

        streams = service.streams
        total = FeedStats()
        per_stream: list[StreamSnapshot] = []
        silent = {s.name for s, _ in service.silent_streams()}
        for stream in streams:
            stats = stream.feed.stats
            total.messages.update(stats.messages)
            total.decode_errors.update(stats.decode_errors)
            total.errors_by_code.update(stats.errors_by_code)
            total.frames += stats.frames
            total.bytes += stats.bytes
            per_stream.append(
                StreamSnapshot(
                    name=stream.name,
                    connection_state=stream.status.state.value,
                    disabled=stream.disabled is not None,
                    subscribed_symbols=len(stream.status.confirmed),
                    desired_symbols=len(stream.status.desired),
                    reconnects=stream.status.reconnects,
                    frames=stats.frames,
                    messages=sum(stats.messages.values()),
                    silent=stream.name in silent,
                )
            )
        base = cls.from_status(service.status, total, now=service.clock.monotonic())
        if service.single:
            return replace(base, streams=tuple(per_stream))
        return replace(
            base,
            reconnects=service.reconnects(),
            reconnect_attempts=service.reconnect_attempts(),
            connection_state=service.connection_state(),
            subscribed_symbols=len(service.confirmed()),
            symbols_rejected=sum(s.status.counters["symbols_rejected"] for s in streams),
            streams=tuple(per_stream),
        )

    @classmethod
    def from_status(
        cls,
        status: ServiceStatus,
        feed_stats: FeedStats | None = None,
        *,
        now: float | None = None,
    ) -> MetricsSnapshot:
        """Read the application's ``ServiceStatus`` (and the feed's stats) without copying
        more than the numbers. ``now`` is the monotonic time for the uptime gauge."""
        from application.status import Role, StoreState

        c = status.counters
        return cls(
            messages_by_type=dict(feed_stats.messages) if feed_stats is not None else {},
            decode_errors_by_reason=(
                dict(feed_stats.decode_errors) if feed_stats is not None else {}
            ),
            venue_errors_by_code=dict(feed_stats.errors_by_code) if feed_stats is not None else {},
            frames=feed_stats.frames if feed_stats is not None else 0,
            bytes_received=feed_stats.bytes if feed_stats is not None else 0,
            reconnects=status.reconnects,
            reconnect_attempts=status.reconnect_attempts,
            connection_state=status.state.value,
            subscribed_symbols=len(status.confirmed),
            desired_symbols=len(status.desired),
            left_out_symbols=len(status.left_out),
            prices_computed=c["prices"],
            prices_written=c["prices_written"],
            prices_published=c["published"],
            conflated=c["conflated"],
            refused_older=c["refused_older"],
            refused_future=c["refused_future"],
            snapshot_quotes=c["snapshot_quotes"],
            snapshot_missing=c["snapshot_missing"],
            dropped=c["dropped"],
            no_mid_by_reason={r: c[f"no_mid_{r}"] for r in NO_MID_REASONS},
            cache_write_errors=c["cache_write_errors"],
            position_sync_errors=c["position_sync_errors"],
            symbols_rejected=c["symbols_rejected"],
            pending_writes=status.pending_writes,
            redis_degraded=status.store is not StoreState.OK,
            leader=status.role is Role.LEADER,
            uptime_s=status.uptime_s(now) if now is not None else 0.0,
            features_failing=frozenset(status.features.failing),
            http_rejected=c["http_rejected"],
            feature_failures=dict(status.features.failures),
        )


class ServiceMetrics:
    """The metrics of one service instance. Satisfies ``application.stream_prices.StreamObserver``.

    Create one per process (or per test); ``registry`` is its own ``CollectorRegistry``.
    """

    def __init__(
        self,
        snapshot_source: Callable[[], MetricsSnapshot] | None = None,
        *,
        namespace: str = "mds",
    ) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=False)
        self._source = snapshot_source
        self._features: FeatureHealth | None = None  # set by attach: where failures go
        self._latest = MetricsSnapshot()
        self.quote_age = Histogram(
            f"{namespace}_quote_age_seconds",
            "Venue timestamp to cache write, of the oldest price in each written batch.",
            buckets=QUOTE_AGE_BUCKETS,
            registry=self.registry,
        )
        self.cache_write = Histogram(
            f"{namespace}_cache_write_seconds",
            "Time to write one batch of prices to the cache and publish it.",
            buckets=CACHE_WRITE_BUCKETS,
            registry=self.registry,
        )
        self.cache_write_batch = Histogram(
            f"{namespace}_cache_write_batch_size",
            "Prices per cache write (after conflation).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SnapshotCollector(self))

    # -- fed by the application (StreamObserver) ------------------------------------------------

    def observe_write(self, seconds: float, count: int) -> None:
        """One batch of ``count`` prices written to the cache and bus in ``seconds``."""
        self.cache_write.observe(max(0.0, seconds))
        self.cache_write_batch.observe(max(0, count))

    observe_cache_write = observe_write

    def observe_quote_age(self, seconds: float) -> None:
        """Venue time to write time; clock skew can make it negative, which counts as 0."""
        self.quote_age.observe(max(0.0, seconds))

    # -- counters owned elsewhere ------------------------------------------------------------------

    def bind(self, snapshot_source: Callable[[], MetricsSnapshot]) -> None:
        """Read this callback at every scrape (it runs on the scraping thread)."""
        self._source = snapshot_source

    def attach(self, service: MarketDataService) -> None:
        """Export the counters of a running service: its status and its feed's stats, read at
        every scrape (the same as ``bind`` with :meth:`MetricsSnapshot.from_status`)."""

        def read() -> MetricsSnapshot:
            snapshot = MetricsSnapshot.from_service(service)
            since = service.clock.now_ns() - int(FRESH_PRICE_S * 1e9)
            unpriced = service.stream.count_unpriced(service.confirmed(), since)
            return dataclasses.replace(snapshot, symbols_without_fresh_price=unpriced)

        self.bind(read)
        self._features = service.status.features

    def refresh_from(self, snapshot: MetricsSnapshot) -> None:
        """Export these values until the next refresh (used when no callback is bound)."""
        self._latest = snapshot

    def snapshot(self) -> MetricsSnapshot:
        """The counters now. When reading them fails, the last good snapshot (with
        ``metrics`` marked failing): a scrape never fails, prices never notice."""
        if self._source is None:
            return self._latest
        features = self._features
        try:
            latest = self._source()
        except Exception as e:
            if features is not None and features.fail(METRICS, f"scrape: {type(e).__name__}: {e}"):
                log.exception("metrics: cannot read the counters; serving the last ones")
            failing = self._latest.features_failing | {METRICS}
            return dataclasses.replace(self._latest, features_failing=failing)
        if features is not None and features.failing.get(METRICS, "").startswith("scrape:"):
            features.recover(METRICS)
            log.warning("metrics: counters readable again")
            latest = dataclasses.replace(
                latest, features_failing=latest.features_failing - {METRICS}
            )
        self._latest = latest
        return latest

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this instance."""
        return generate_latest(self.registry)

    content_type: Final = CONTENT_TYPE_LATEST


class _SnapshotCollector(Collector):
    """Yields the counters and gauges of a :class:`MetricsSnapshot` at scrape time."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        s = self._metrics.snapshot()
        ns = self._metrics.namespace

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{ns}_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{ns}_{name}", doc, value=value)

        def labelled(
            name: str, doc: str, label: str, values: Iterable[tuple[object, int]]
        ) -> Metric:
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=[label])
            for key, value in sorted(values, key=lambda kv: str(kv[0])):
                family.add_metric([str(key)], value)
            return family

        yield labelled(
            "messages", "Stream messages received, by type.", "type", s.messages_by_type.items()
        )
        yield labelled(
            "decode_errors",
            "Stream messages that could not be decoded (skipped), by reason.",
            "reason",
            s.decode_errors_by_reason.items(),
        )
        yield labelled(
            "venue_errors",
            "Error messages from the venue, by code.",
            "code",
            s.venue_errors_by_code.items(),
        )
        yield counter("frames", "WebSocket frames received.", s.frames)
        yield counter("received_bytes", "WebSocket payload bytes received.", s.bytes_received)
        yield counter("reconnects", "Reconnects since start.", s.reconnects)
        yield gauge(
            "reconnect_attempts",
            "Consecutive failed connection attempts since the last healthy session.",
            s.reconnect_attempts,
        )
        state = GaugeMetricFamily(
            f"{ns}_connection_state",
            "1 for the current state of the stream connection, 0 for the others.",
            labels=["state"],
        )
        for candidate in ConnectionState:
            state.add_metric([candidate.value], 1.0 if candidate.value == s.connection_state else 0)
        yield state
        yield gauge("subscribed_symbols", "Symbols the venue confirmed.", s.subscribed_symbols)
        yield gauge("desired_symbols", "Symbols wanted (positions and list).", s.desired_symbols)
        yield gauge(
            "left_out_symbols", "Desired symbols over the symbol limit.", s.left_out_symbols
        )
        yield counter("prices_computed", "Prices computed from quotes.", s.prices_computed)
        yield counter("prices_written", "Prices written to the cache.", s.prices_written)
        yield counter("prices_published", "Prices published on the bus.", s.prices_published)
        yield counter(
            "conflated",
            "Prices replaced by a newer one of the same symbol before being written.",
            s.conflated,
        )
        yield counter(
            "refused_older", "Prices not applied: older than the cached one.", s.refused_older
        )
        yield counter(
            "refused_future",
            "Quotes refused: stamped more than MDS_MAX_FUTURE_SKEW ahead of their receive time.",
            s.refused_future,
        )
        yield counter(
            "snapshot_quotes", "Initial image: latest quotes received over REST.", s.snapshot_quotes
        )
        yield counter(
            "snapshot_missing",
            "Initial image: symbols asked for that got no quote (batch failed, unknown symbol).",
            s.snapshot_missing,
        )
        yield counter("dropped", "Prices dropped because the write queue was full.", s.dropped)
        no_mid = CounterMetricFamily(
            f"{ns}_no_mid", "Quotes that gave no mid price, by reason.", labels=["reason"]
        )
        for reason in sorted(set(NO_MID_REASONS) | set(s.no_mid_by_reason)):
            no_mid.add_metric([reason], s.no_mid_by_reason.get(reason, 0))
        yield no_mid
        yield counter("cache_write_errors", "Failed cache writes.", s.cache_write_errors)
        yield counter(
            "position_sync_errors", "Failed reads of the position source.", s.position_sync_errors
        )
        yield counter(
            "symbols_rejected", "Symbols the venue refused to subscribe.", s.symbols_rejected
        )
        yield gauge("pending_writes", "Prices waiting to be written.", s.pending_writes)
        yield gauge(
            "subscribed_symbols_without_fresh_price",
            f"Confirmed symbols without a price newer than {FRESH_PRICE_S:g} s (venue time).",
            s.symbols_without_fresh_price,
        )
        yield gauge("redis_degraded", "1 while the cache store is unreachable.", s.redis_degraded)
        yield gauge("leader", "1 when this instance streams (HA leader), 0 on standby.", s.leader)
        yield gauge("uptime_seconds", "Seconds since the service started.", s.uptime_s)
        features = sorted(set(FEATURES) | s.features_failing | set(s.feature_failures))
        failing = GaugeMetricFamily(
            f"{ns}_feature_failing",
            "1 while an optional feature (recording, metrics, HTTP API, position sync) is "
            "failing alone; prices flow on.",
            labels=["feature"],
        )
        failures = CounterMetricFamily(
            f"{ns}_feature_failures",
            "Failures of optional features, by feature.",
            labels=["feature"],
        )
        for name in features:
            failing.add_metric([name], 1.0 if name in s.features_failing else 0.0)
            failures.add_metric([name], s.feature_failures.get(name, 0))
        yield failing
        yield failures
        yield counter(
            "http_rejected",
            "HTTP requests answered 503 because MDS_HTTP_MAX_CONCURRENCY was reached.",
            s.http_rejected,
        )
        yield from _stream_metrics(ns, s.streams)


def _stream_metrics(ns: str, streams: Iterable[StreamSnapshot]) -> Iterable[Metric]:
    """Per stream (label ``stream``: us_equity, crypto, us_option, or all)."""
    streams = list(streams)
    state = GaugeMetricFamily(
        f"{ns}_stream_connection_state",
        "1 for the current state of each stream's connection, 0 for the others.",
        labels=["stream", "state"],
    )
    for st in streams:
        for candidate in ConnectionState:
            state.add_metric(
                [st.name, candidate.value], 1.0 if candidate.value == st.connection_state else 0
            )
    yield state
    families: list[tuple[str, str, type[Metric], Callable[[StreamSnapshot], float]]] = [
        ("stream_disabled", "1 when the stream stopped for good (its lane only).",
         GaugeMetricFamily, lambda st: float(st.disabled)),
        ("stream_silent", "1 while the stream has symbols but got no data for longer than "
         "MDS_DATA_TIMEOUT (0 when that is off).", GaugeMetricFamily, lambda st: float(st.silent)),
        ("stream_subscribed_symbols", "Symbols the venue confirmed, per stream.",
         GaugeMetricFamily, lambda st: st.subscribed_symbols),
        ("stream_desired_symbols", "Symbols routed to the stream.",
         GaugeMetricFamily, lambda st: st.desired_symbols),
        ("stream_reconnects", "Reconnects of the stream since start.",
         CounterMetricFamily, lambda st: st.reconnects),
        ("stream_frames", "WebSocket frames the stream received.",
         CounterMetricFamily, lambda st: st.frames),
        ("stream_messages", "Messages the stream received.",
         CounterMetricFamily, lambda st: st.messages),
    ]  # fmt: skip
    for name, doc, kind, value in families:
        family = kind(f"{ns}_{name}", doc, labels=["stream"])  # type: ignore[call-arg]
        for st in streams:
            family.add_metric([st.name], value(st))  # type: ignore[attr-defined]
        yield family
