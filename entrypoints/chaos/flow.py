"""The chaos soak's per-symbol flow invariant (pure: the engine passes the times in).

Every symbol that is being quoted must keep being *published*, not only cached: issue 11's
defect 9 cached the prices of symbols on the cluster masters that stayed up and never published
them while another master was dead, and freshness checks of the cache could not see it. So,
while the soak expects prices to flow, no expected symbol's published stream may stay quiet for
longer than a gap bound. The engine says when it expects what:

- between faults (after the service settled), and through faults that do not interrupt prices
  (a slow or broken position source, a full disk, malformed or future-stamped frames, FLUSHALL,
  SCRIPT FLUSH): every symbol;
- during a fault that touches one cluster shard (a master killed, a slot migrating): every
  symbol whose key and channel live elsewhere, for as long as the rest of the cluster serves
  (a killed master turns the whole cluster down once its node timeout passes);
- during a fault that legitimately interrupts every price (the feed, Redis, signals, HA) and
  while settling after any fault: none (the settle step checks that every symbol is published
  again after the faults cleared).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class FlowWatch:
    """Per-symbol time of the last published price, and what is expected to flow."""

    last: dict[str, float] = field(default_factory=dict)
    since: float | None = None
    """When the current expectation started (a symbol counts as published then); None:
    nothing is expected."""
    exempt: frozenset[str] = frozenset()
    gap_s: float = 0.0
    until: float | None = None
    """The expectation ends by itself then (a killed master: the cluster goes down)."""

    def published(self, symbol: str, now: float) -> None:
        self.last[symbol] = now

    def expect(
        self,
        now: float,
        gap_s: float,
        *,
        exempt: Iterable[str] = (),
        until: float | None = None,
    ) -> None:
        """From ``now`` on, every symbol not in ``exempt`` is published at least every
        ``gap_s`` (until ``until``, if given)."""
        self.since = now
        self.gap_s = gap_s
        self.exempt = frozenset(exempt)
        self.until = until

    def pause(self) -> None:
        """Nothing is expected to flow (an interrupting fault, or settling)."""
        self.since = None

    @property
    def expecting(self) -> bool:
        return self.since is not None

    def quiet(self, symbols: Iterable[str], now: float) -> dict[str, float]:
        """The expected symbols whose published stream has been quiet for longer than the gap
        bound at ``now``, with how long (empty when nothing is expected)."""
        since = self.since
        if since is None or (self.until is not None and now > self.until):
            return {}
        out: dict[str, float] = {}
        for symbol in symbols:
            if symbol in self.exempt:
                continue
            quiet = now - max(self.last.get(symbol, since), since)
            if quiet > self.gap_s:
                out[symbol] = quiet
        return out

    def unpublished_since(self, symbols: Iterable[str], t: float) -> list[str]:
        """The symbols with no published price after ``t``."""
        return [s for s in symbols if self.last.get(s, float("-inf")) <= t]
