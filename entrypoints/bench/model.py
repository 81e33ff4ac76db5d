"""What ``mds bench`` measures and reports: options, targets, per-phase results, the machine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent.parent


SHARED_REDIS_PORT: Final = 6379


START_TIMEOUT_S: Final = 30.0


SAMPLE_EVERY_S: Final = 0.1


MDS: Final = "mds"


BASELINE_MODES: Final = ("naive", "pipeline", "batched")


SUSTAINED_SHARE: Final = 0.95


class BenchError(RuntimeError):
    """A benchmark process could not be started or misbehaved."""


@dataclass(frozen=True, slots=True)
class Options:
    formats: tuple[str, ...] = ("json", "msgpack")
    batches: tuple[int, ...] = (10, 100)
    symbols: tuple[int, ...] = (100, 1000)
    rates: tuple[int, ...] = (1_000, 10_000)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    runs: int = 3
    baseline_modes: tuple[str, ...] = ("naive", "batched")
    floors: bool = True
    profile_dir: Path | None = None
    keep_logs: bool = False
    http_flood: int = 0  # connections flooding /prices/<symbol> in extra fixed-rate phases
    log: Callable[[str], None] = field(default=lambda _msg: None, compare=False)


@dataclass(frozen=True, slots=True)
class Target:
    """A system under test in one configuration."""

    impl: str  # "mds" or "alpaca-py/<mode>"
    fmt: str
    batch: int
    symbols: int

    @property
    def label(self) -> str:
        return f"{self.impl} {self.fmt} batch {self.batch} symbols {self.symbols}"


@dataclass(slots=True)
class PhaseResult:
    """One measured phase of one run. Rates are per second; latencies in ms."""

    impl: str
    fmt: str
    batch: int
    symbols: int
    phase: str  # "max" or the fixed rate as text
    rate: int  # 0 = unthrottled
    run: int
    window_s: float = 0.0
    throughput: float = 0.0  # prices/s received by the subscriber
    quotes_in: float = 0.0  # quotes/s handled by the process under test
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    cpu_us_per_quote: float | None = None
    # Cores used over the window: process (under test; process-sys: its kernel part), server,
    # redis, subscriber, machine (everything), others (machine minus ours: outside load).
    cpu_share: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    # RSS at the start and at the end of the window (MB): flat memory shows as equal numbers.
    rss_window_mb: tuple[float, float] | None = None
    conflated: int = 0
    dropped: int = 0
    refused_older: int = 0
    published: int = 0
    received: int = 0
    missing: int = 0
    exact_violations: int = 0
    order_violations: int = 0
    bad_messages: int = 0
    examples: list[str] = field(default_factory=list)
    sustained: bool | None = None
    error: str | None = None
    # Under an HTTP flood (--http-flood N): its connections, requests/s answered, share of 503.
    http_flood: int = 0
    http_rps: float | None = None
    http_503_share: float | None = None


@dataclass(slots=True)
class Machine:
    nproc: int
    cpu_model: str
    python: str
    redis: str
    kernel: str
    load_before: tuple[float, float, float]

    def describe(self) -> str:
        load = ", ".join(f"{x:.2f}" for x in self.load_before)
        return (
            f"{self.nproc} vCPU {self.cpu_model}, Linux {self.kernel}, Python {self.python}, "
            f"Redis {self.redis} on loopback (load average before the run: {load})"
        )
