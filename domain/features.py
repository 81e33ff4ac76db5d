"""Optional features that are failing now: the bookkeeping behind "optional features fail alone".

Recording, metrics, the HTTP API (and its live stream) and position sync are optional: when
one fails, prices keep flowing, the feature stops or degrades, and it is reported here (one
entry per failing feature, a failure count per feature). ``/health`` (status ``degraded`` and
a detail) and ``/metrics`` (``mds_feature_failing{feature}``,
``mds_feature_failures_total{feature}``) read it.
The adapter or use case that owns a feature logs its one error line when :meth:`fail` says the
failure is new, and one line when :meth:`recover` says it is over.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

RECORDING: Final = "recording"
METRICS: Final = "metrics"
HTTP_API: Final = "http_api"
POSITION_SYNC: Final = "position_sync"
LIVE_STREAM: Final = "live_stream"  # /prices/stream's in-process feed on the streaming instance
FEATURES: Final = (RECORDING, METRICS, HTTP_API, POSITION_SYNC, LIVE_STREAM)


class FeatureHealth:
    """Which optional features fail now and why; how many failures each had. Not thread-safe:
    update it from the event loop's thread (adapters running in threads report through it
    from the loop)."""

    __slots__ = ("failing", "failures")

    def __init__(self) -> None:
        self.failing: dict[str, str] = {}  # feature -> what is wrong, while it is wrong
        self.failures: Counter[str] = Counter()  # every failure, also repeated ones

    def fail(self, feature: str, error: str) -> bool:
        """``feature`` failed with ``error``; True when it was working until now (log then)."""
        self.failures[feature] += 1
        new = feature not in self.failing
        self.failing[feature] = error
        return new

    def recover(self, feature: str) -> bool:
        """``feature`` works again; True when it had been failing (log then)."""
        return self.failing.pop(feature, None) is not None

    def detail(self) -> str | None:
        """One line for ``/health``: each failing feature and why; None when all work."""
        if not self.failing:
            return None
        return "; ".join(f"{name} failing: {why}" for name, why in sorted(self.failing.items()))
