"""Counters a feed keeps about what it received; read by the service status and /metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class FeedStats:
    """Monotonic counters, owned and updated by one feed adapter, read by anyone."""

    frames: int = 0
    bytes: int = 0
    messages: Counter[str] = field(default_factory=Counter)  # by message type: quote, trade, ...
    decode_errors: Counter[str] = field(default_factory=Counter)  # by reason
    errors_by_code: Counter[int] = field(default_factory=Counter)  # venue error codes seen

    @property
    def decode_errors_total(self) -> int:
        return sum(self.decode_errors.values())
