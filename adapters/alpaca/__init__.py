"""Alpaca market-data stream v2 (stocks): the QuoteFeed adapter, its wire decoding, and frame
recordings. Alpaca's quirks stay in this package; what leaves it is domain types."""

from adapters.alpaca.config import AlpacaFeedConfig, Secret, check_transport
from adapters.alpaca.feed import AlpacaQuoteFeed, AlpacaSession, record_stream
from adapters.alpaca.recorder import FrameRecorder, RecordedFrame, read_recording
from adapters.alpaca.wire import ChannelFilter, RateLimitedErrorLog, decode_frame

__all__ = [
    "AlpacaFeedConfig",
    "AlpacaQuoteFeed",
    "AlpacaSession",
    "ChannelFilter",
    "FrameRecorder",
    "RateLimitedErrorLog",
    "RecordedFrame",
    "Secret",
    "check_transport",
    "decode_frame",
    "read_recording",
    "record_stream",
]
