"""ReplayQuoteFeed: a QuoteFeed that plays back a frame recording (see adapters.alpaca.recorder).

Frames go through the same decoder as the live adapter (:func:`adapters.alpaca.wire.decode_frame`)
and the same confirmed-set filter, so a replay exercises the real decode path. Control frames in
the recording (``connected``, ``authenticated``, ``subscription``, errors) are skipped: the replay
answers subscriptions itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import anyio
import anyio.lowlevel

from adapters.alpaca.recorder import read_recording
from adapters.alpaca.wire import ChannelFilter, RateLimitedErrorLog, decode_frame
from domain.connection import ConnectionState
from domain.errors import FatalFeedError, FeedDisconnected
from domain.market import MarketEvent, SubscriptionAck, Subscriptions
from domain.stats import FeedStats

log = logging.getLogger(__name__)

_NS = 1_000_000_000


class RecordingUnusable(FatalFeedError):
    """The recording cannot be played (``strict`` feeds): unreadable, not a recording, or a
    malformed line. The message names the file and the first bad line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, setting="MDS_REPLAY_FILE")


def _shifted(events: Sequence[MarketEvent], offset_ns: int) -> list[MarketEvent]:
    """``events`` with their venue times moved by ``offset_ns`` (replay as if live)."""
    out: list[MarketEvent] = []
    for event in events:
        if isinstance(event, tuple):  # Quote, Trade: named tuples
            out.append(event._replace(ts_event_ns=event.ts_event_ns + offset_ns))
        else:
            out.append(dataclasses.replace(event, ts_event_ns=event.ts_event_ns + offset_ns))
    return out


def sample_recording() -> Traversable:
    """The recording shipped with the package: a few hundred JSON frames of quotes for AAPL,
    MSFT, SPY and BRK.B, recorded by AlpacaQuoteFeed from the local Alpaca-compatible server."""
    return files("adapters.replay.data") / "sample.jsonl.gz"


class ReplaySession:
    """A session over one pass (or, with ``loop``, endless passes) of the recording."""

    def __init__(self, feed: ReplayQuoteFeed) -> None:
        self._feed = feed
        self._confirmed = Subscriptions()
        self._filter = ChannelFilter(self._confirmed)
        self._closed = False

    @property
    def confirmed(self) -> Subscriptions:
        return self._confirmed

    async def subscribe(self, request: Subscriptions) -> SubscriptionAck:
        """Confirm exactly what is asked (added to the set); nothing is ever missing."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        merged = dict(self._confirmed.by_channel)
        for channel, symbols in request.by_channel.items():
            merged[channel] = merged.get(channel, frozenset()) | symbols
        return self._confirm(Subscriptions(merged))

    async def unsubscribe(self, request: Subscriptions) -> SubscriptionAck:
        await anyio.lowlevel.checkpoint()
        self._check_open()
        merged = {
            channel: symbols - request.symbols(channel)
            for channel, symbols in self._confirmed.by_channel.items()
        }
        return self._confirm(Subscriptions({c: s for c, s in merged.items() if s}))

    def _confirm(self, confirmed: Subscriptions) -> SubscriptionAck:
        self._confirmed = confirmed
        self._filter = ChannelFilter(confirmed)
        return SubscriptionAck(confirmed)

    def _check_open(self) -> None:
        if self._closed:
            raise FeedDisconnected("session closed")

    async def events(self) -> AsyncIterator[Sequence[MarketEvent]]:
        """The recording's data, paced by the recorded receive times divided by ``speed``,
        stamped with the current wall time, filtered to the confirmed set (frames with nothing
        confirmed are skipped but still take their time). Raises ``FeedDisconnected("end of
        recording")`` at the end unless ``loop``; a file that cannot be read raises it too."""
        feed = self._feed
        stats = feed.stats
        passes = 0
        while True:
            passes += 1
            first_ns: int | None = None
            started = anyio.current_time()
            try:
                for frame in read_recording(feed.source, feed._bad_line):
                    if self._closed:
                        raise FeedDisconnected("session closed")
                    if first_ns is None:
                        first_ns = frame.received_ns
                    if feed.paced:
                        due = started + (frame.received_ns - first_ns) / _NS / feed.speed
                        delay = due - anyio.current_time()
                        if delay > 0:
                            await anyio.sleep(delay)
                        else:
                            await anyio.lowlevel.checkpoint()
                    else:
                        await anyio.lowlevel.checkpoint()
                    now_ns = feed.now_ns()
                    events, _controls = decode_frame(frame.data, now_ns, stats, feed._decode_log)
                    if events:
                        wanted = self._filter.apply(events)
                        if wanted:
                            # As if live: each event keeps its recorded age at receipt (at
                            # speed 1 the recording's spacing), so prices are fresh and newer
                            # than anything an earlier run wrote.
                            yield (
                                wanted
                                if feed.keep_times
                                else _shifted(wanted, now_ns - frame.received_ns)
                            )
            except (OSError, EOFError) as e:
                reason = f"cannot read the recording {feed.source}: {e}"
                if feed.strict:
                    raise RecordingUnusable(reason) from None
                raise FeedDisconnected(reason) from e
            if first_ns is None and feed.strict:
                raise RecordingUnusable(f"the recording {feed.source} has no frames")
            if feed.hold_at_end and first_ns is not None and not feed.loop:
                # A service replaying a file: the recording is over, the prices stand.
                log.info("end of recording %s: holding the last prices", feed.name)
                await anyio.sleep_forever()
            if not feed.loop or first_ns is None:
                raise FeedDisconnected(
                    "end of recording" if first_ns is not None else "empty recording"
                )
            log.debug("replay of %s: pass %d done, starting over", feed.name, passes)


class ReplayQuoteFeed:
    """A QuoteFeed over a recording file (``.jsonl`` or ``.jsonl.gz``; a path or a package
    resource such as :func:`sample_recording`).

    ``speed``: 1.0 replays in real time (from the recorded receive times), 10.0 ten times
    faster, 0 or ``inf`` as fast as possible. ``loop``: start over at the end instead of raising
    ``FeedDisconnected("end of recording")``. ``hold_at_end``: stay connected and quiet at the
    end instead (the service's replay mode: the last prices stand). ``now_ns`` stamps receive
    times (pass ``clock.now_ns`` of a ``ports.clock.Clock`` to drive it from a test clock).
    Pacing uses ``anyio.sleep``, so trio's MockClock runs a replay in virtual time. Raises
    ``FileNotFoundError`` at construction when there is no such file. The file is read lazily,
    line by line, in the event loop (recordings are small; a read error ends the session with
    ``FeedDisconnected``). ``strict`` (the service): an unreadable file, a malformed line or a
    recording without frames raises :class:`RecordingUnusable` (fatal: retrying cannot fix the
    file) instead of skipping the line or ending the session. ``keep_times=False`` (the service's
    default) replays as if live: every event's venue time moves by (now - its recorded receive
    time), so it is as old at receipt as when it was recorded; ``True`` keeps the recorded times.
    """

    def __init__(
        self,
        source: Path | Traversable,
        *,
        speed: float = 1.0,
        loop: bool = False,
        hold_at_end: bool = False,
        strict: bool = False,
        keep_times: bool = True,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if math.isnan(speed) or speed < 0:
            raise ValueError(f"speed must be >= 0 (0 or inf: as fast as possible), got {speed}")
        if not source.is_file():
            raise FileNotFoundError(f"no recording at {source}")
        self.source = source
        self.speed = speed
        self.loop = loop
        self.hold_at_end = hold_at_end
        self.strict = strict
        self.keep_times = keep_times
        self.now_ns = now_ns
        self.paced = 0 < speed < math.inf
        self.name = source.name
        self._stats = FeedStats()
        self._decode_log = RateLimitedErrorLog(log, what="recorded frame")
        self.connects = 0

    @classmethod
    def sample(
        cls,
        *,
        speed: float = 1.0,
        loop: bool = False,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> ReplayQuoteFeed:
        """A replay of :func:`sample_recording`."""
        return cls(sample_recording(), speed=speed, loop=loop, now_ns=now_ns)

    @property
    def stats(self) -> FeedStats:
        return self._stats

    def _bad_line(self, line_no: int, why: str) -> None:
        if self.strict:
            raise RecordingUnusable(
                f"{self.source} line {line_no} is not a recorded frame ({why}); "
                "record with `mds record FILE SYMBOL...`"
            )
        self._stats.decode_errors["bad_recording_line"] += 1
        self._decode_log("bad_recording_line", f"{self.name} line {line_no}: {why}")

    @asynccontextmanager
    async def connect(
        self, on_state: Callable[[ConnectionState], None] | None = None
    ) -> AsyncIterator[ReplaySession]:
        """A session with nothing subscribed; no I/O until ``events()`` is iterated."""
        self.connects += 1
        if on_state is not None:
            on_state(ConnectionState.CONNECTING)
        await anyio.lowlevel.checkpoint()
        if on_state is not None:
            on_state(ConnectionState.AUTHENTICATING)
        session = ReplaySession(self)
        try:
            yield session
        finally:
            session._closed = True
