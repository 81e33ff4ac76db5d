"""Process-level helpers: stop on SIGINT/SIGTERM/SIGHUP, unwrap exception groups at the top."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

import anyio
import anyio.abc

log = logging.getLogger(__name__)

# SIGHUP too: a closed terminal or a supervisor's "hang up" must leave like SIGTERM does (close
# frame to the venue, pending prices flushed), not by the default action (die on the spot).
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def cancel_on_signals(
    scope: anyio.CancelScope,
    *,
    pending: Callable[[], int] | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel ``scope`` on the first SIGINT, SIGTERM or SIGHUP (the single place shutdown
    starts). A second one during the shutdown exits at once (status 128 + signal number), after
    one log line saying how many prices (``pending()``) were dropped unwritten.

    How: plain handlers that exit at once are installed *before* the signal receiver opens, so
    they are what the receiver restores when it closes after the first signal, and what a
    second signal already queued meets when trio re-delivers it. Cancelled without a signal
    (tests running the service in-process), it puts the previous handlers back.
    """
    previous = {sig: signal.getsignal(sig) for sig in SHUTDOWN_SIGNALS}
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, _exit_now_handler(pending))
    received = False
    try:
        with anyio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                received = True
                log.info(
                    "received %s: shutting down (a second signal exits at once)",
                    signal.Signals(signum).name,
                )
                break
    finally:
        if not received:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    scope.cancel()


def _exit_now_handler(
    pending: Callable[[], int] | None,
) -> Callable[[int, FrameType | None], None]:
    def exit_now(signum: int, frame: FrameType | None) -> None:
        log.error(
            "received %s during shutdown: exiting at once; %s prices dropped unwritten",
            signal.Signals(signum).name,
            _read(pending),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(128 + signum)

    return exit_now


def _read(pending: Callable[[], int] | None) -> int | str:
    if pending is None:
        return "unknown"
    try:
        return pending()
    except Exception:  # never let the count stop the exit
        return "unknown"
