"""Replay of recorded Alpaca frames as a QuoteFeed: demos, reproducible tests, benchmarks."""

from adapters.replay.feed import ReplayQuoteFeed, ReplaySession, sample_recording

__all__ = ["ReplayQuoteFeed", "ReplaySession", "sample_recording"]
