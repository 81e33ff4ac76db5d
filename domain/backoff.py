"""Reconnect backoff: exponential, capped, optionally fully jittered, reset after health.

Without jitter the n-th delay (n = 1, 2, …) is ``min(cap, base * factor ** (n - 1))``: with the
defaults 5, 10, 20, 40, … 300 s, so a connection lost at 0 s is retried at 5, 15, 35, 75 s.
With full jitter the delay is ``rng() * that`` (``rng`` returns a float in [0, 1)), which spreads
a fleet's reconnects. A retry that asks for a longer wait (``min_delay``) gets it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float = 5.0
    factor: float = 2.0
    cap_s: float = 300.0
    max_attempts: int | None = None
    jitter: bool = False
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.factor < 1:
            raise ValueError(
                f"bad backoff policy: base {self.base_s}, cap {self.cap_s}, factor {self.factor}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before retry ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        # Stop multiplying once past the cap so huge attempt numbers cannot overflow.
        delay = self.base_s
        for _ in range(attempt - 1):
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return min(delay, self.cap_s)

    def next_delay(
        self, attempt: int, rng: Callable[[], float] | None = None, min_delay: float = 0.0
    ) -> float | None:
        """The delay before retry ``attempt``, or None when ``max_attempts`` is used up.

        ``min_delay`` (the venue's own floor, e.g. Retry-After) wins even over ``cap_s``: the
        cap bounds the policy's doubling, not what the venue demands (adapters cap that).
        """
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        ceiling = self.ceiling(attempt)
        delay = ceiling * rng() if self.jitter and rng is not None else ceiling
        return max(delay, min_delay)


@dataclass(slots=True)
class ReconnectBackoff:
    """The running state of one reconnect loop under a :class:`BackoffPolicy`.

    ``attempts`` counts retries since the last healthy period; a connection that stays up for
    ``reset_after_s`` (checked with :meth:`healthy_at`) resets it, so a flapping link keeps
    backing off while a long-lived one starts again from ``base_s``.
    """

    policy: BackoffPolicy
    attempts: int = 0
    connected_at: float | None = None

    def on_failure(
        self, rng: Callable[[], float] | None = None, min_delay: float = 0.0
    ) -> float | None:
        """Record a failed connect or a lost connection; the delay to wait, or None to give up."""
        self.connected_at = None
        self.attempts += 1
        return self.policy.next_delay(self.attempts, rng, min_delay)

    def on_connected(self, now: float) -> None:
        """Record that a session is up (connected, authenticated, subscribed) at ``now``."""
        self.connected_at = now

    def healthy_at(self, now: float) -> bool:
        """Reset the attempt count if the connection has been up for ``reset_after_s``."""
        if self.connected_at is not None and now - self.connected_at >= self.policy.reset_after_s:
            self.attempts = 0
            return True
        return False


@dataclass(frozen=True, slots=True)
class SlotRetry:
    """How a NEW session owner retries "the single connection slot is taken" (Alpaca 406).

    A reconnect after our own session keeps the venue's long floor (``min_delay``, 15 s): the
    holder is most likely our own previous session, which the venue frees on its own schedule,
    and hammering it gains nothing. But an owner that has had no session yet (a process that
    just started, an instance that just became leader) meets a holder that froze or died without
    closing (a SIGSTOPped leader, a killed process): the venue frees that slot when it notices,
    at a moment we cannot know, and every second waited past it is a second without prices. So
    such an owner retries every ``cadence_s``, for at most ``window_s`` from its start (about
    Alpaca's ~90 s reap of a dead connection), then falls back to the floor: at most
    ``window_s / cadence_s`` extra attempts per start.
    """

    cadence_s: float = 1.0
    window_s: float = 90.0

    def __post_init__(self) -> None:
        if not 0 < self.cadence_s <= self.window_s:
            raise ValueError(f"bad slot retry: cadence {self.cadence_s}, window {self.window_s}")

    def delay(self, *, slot_taken: bool, had_session: bool, since_start_s: float) -> float | None:
        """The short delay to use instead of the backoff's, or None for the usual backoff."""
        if slot_taken and not had_session and since_start_s < self.window_s:
            return self.cadence_s
        return None
