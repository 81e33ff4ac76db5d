"""Process-level helpers: stop on SIGINT/SIGTERM, unwrap exception groups at the top."""

from __future__ import annotations

import logging
import signal

import anyio
import anyio.abc

log = logging.getLogger(__name__)


async def cancel_on_signals(
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM (the single place shutdown starts)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return
