"""Replay of recorded Alpaca frames as a QuoteFeed: demos, reproducible tests, benchmarks."""

from adapters.replay.feed import (
    RecordingUnusable,
    ReplayQuoteFeed,
    ReplaySession,
    sample_recording,
)

__all__ = ["RecordingUnusable", "ReplayQuoteFeed", "ReplaySession", "sample_recording"]
