"""Domain errors, one base per concern.

Feed errors are classified by the reaction they call for, so the application never inspects
vendor codes:

- :class:`RetryableFeedError`: reconnect with backoff (drops, 406, 407, HTTP 429, 500, stalls).
- :class:`FatalFeedError`: retrying cannot help (402 bad credentials, 409 plan); stop and say why.
- :class:`SymbolsRejected`: some symbols cannot be had (405 symbol limit, 400 on a subscribe);
  drop those symbols, report them, keep the session.

Store errors: an outage is a builtin ``ConnectionError`` (retry); :class:`FatalStoreError` is a
setting no retry can fix (exit 2, naming the setting).
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error raised by the domain."""


class InvalidSymbol(DomainError, ValueError):
    """A symbol that is not in Alpaca's format; the message names it."""

    SHOWN_CHARS = 40  # a 500-character "symbol" is named by its start, not echoed in full

    def __init__(self, symbol: object, why: str) -> None:
        self.symbol = symbol
        self.why = why
        shown = repr(symbol)
        if len(shown) > self.SHOWN_CHARS:
            shown = f"{shown[: self.SHOWN_CHARS]}… ({len(str(symbol))} characters)"
        super().__init__(f"invalid symbol {shown}: {why}")


class IllegalTransition(DomainError):
    """A connection-state change the state machine does not allow."""

    def __init__(self, current: object, target: object) -> None:
        self.current = current
        self.target = target
        super().__init__(f"illegal connection-state transition {current} -> {target}")


class FeedError(DomainError):
    """Base of the errors a QuoteFeed raises. ``code`` is the venue's code when there is one."""

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason if code is None else f"{reason} (code {code})")


class RetryableFeedError(FeedError):
    """The session is gone or could not be opened; reconnecting with backoff can fix it.

    ``min_delay`` lets the adapter ask for a longer wait than the policy's next delay (for example
    while another session still holds the single connection slot). ``slot_taken``: the venue
    refused because another session holds the account's single connection slot (Alpaca 406);
    see :class:`domain.backoff.SlotRetry`.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        min_delay: float = 0.0,
        slot_taken: bool = False,
    ) -> None:
        super().__init__(reason, code=code)
        self.min_delay = min_delay
        self.slot_taken = slot_taken


class FeedDisconnected(RetryableFeedError):
    """An open session ended: the server closed it, the network dropped, or a ping timed out."""


class FeedUnavailable(RetryableFeedError):
    """A session could not be opened: refused, HTTP 429, connection limit, server error."""


class FeedStalled(RetryableFeedError):
    """No message arrived for longer than the data watchdog allows while subscribed."""


class FatalFeedError(FeedError):
    """Retrying cannot fix this (bad credentials, plan without the feed, insecure URL refused).

    ``setting`` names the configuration variable an operator should check. ``lane_only`` says
    the failure concerns this stream alone (a plan without this feed, reconnect attempts used
    up): with several streams (stocks, crypto, options) only this one stops. Without it (bad
    credentials) the whole service stops.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        setting: str | None = None,
        lane_only: bool = False,
    ) -> None:
        super().__init__(reason, code=code)
        self.setting = setting
        self.lane_only = lane_only

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.setting is None else f"{text}; check {self.setting}"


class SymbolsRejected(FeedError):
    """The venue refused a subscription change for these symbols; the session goes on.

    ``limit_exceeded`` is true for a symbol-limit refusal (Alpaca 405): the venue's set is left
    as it was before the request.
    """

    def __init__(
        self,
        reason: str,
        symbols: frozenset[str],
        *,
        code: int | None = None,
        limit_exceeded: bool = False,
    ) -> None:
        super().__init__(reason, code=code)
        self.symbols = symbols
        self.limit_exceeded = limit_exceeded


class PositionSourceError(DomainError):
    """Positions could not be read. Never to be taken as "no positions"."""


class FatalStoreError(DomainError):
    """The price store refuses us for a reason retrying cannot fix (wrong password, missing
    permission): stop, and say which ``setting`` to check. Not a ``ConnectionError``: an outage
    is retried, this is not."""

    def __init__(self, reason: str, *, setting: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.setting = setting

    def __str__(self) -> str:
        return f"{self.reason}; check {self.setting}"
