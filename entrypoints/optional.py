"""Optional features fail alone: the HTTP API's supervisor.

The HTTP API serves operators, not prices: when its server task dies mid-run (an accept loop
that fails, a bug in the server), prices keep flowing. :func:`serve_http_alone` reports it once
(one ERROR line, ``FeatureHealth`` → ``/health`` degraded and ``mds_feature_failing``),
restarts the server on the same address after a doubling delay (1 s to 30 s) and says when it
serves again. Only the first start is different: its failure (an address that cannot be bound,
``OSError``) is raised as is, and the service stops with one line naming MDS_HTTP_PORT.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc

from domain.features import HTTP_API, FeatureHealth

log = logging.getLogger(__name__)

Serve = Callable[..., Awaitable[None]]  # serve(host, port, *, task_status) like serve_http


class _Started:
    """A task status that hands ``started`` to a callback (the server is restarted in place,
    without a task group of its own, so its errors arrive as they are)."""

    def __init__(self, on_started: Callable[[list[str]], None]) -> None:
        self._on_started = on_started

    def started(self, value: Any = None) -> None:
        self._on_started(value)


async def serve_http_alone(
    serve: Serve,
    host: str,
    port: int,
    features: FeatureHealth,
    *,
    min_retry_s: float = 1.0,
    max_retry_s: float = 30.0,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve(host, port)`` until cancelled, restarting it when it fails (see the module
    docstring). ``started`` receives the first start's bound URLs; a restart binds the same
    port (the real one, when ``port`` was 0)."""
    urls: list[str] = []
    delay = min_retry_s

    def on_started(bound: list[str]) -> None:
        nonlocal delay, port
        delay = min_retry_s
        if not urls:
            urls.extend(bound)
            port = urlsplit(bound[0]).port or port
            task_status.started(bound)
        elif features.recover(HTTP_API):
            log.warning("HTTP API serving again on %s", ", ".join(bound))

    while True:
        try:
            await serve(host, port, task_status=_Started(on_started))
            error = "the server stopped by itself"
        except Exception as e:
            if not urls:
                raise  # the first start: the caller decides (a port taken is a start-up error)
            error = f"{type(e).__name__}: {e}"
            if features.fail(HTTP_API, error):
                log.error(
                    "HTTP API stopped (prices are not affected): %s; restarting",
                    error,
                    exc_info=not isinstance(e, OSError),
                )
        else:
            if features.fail(HTTP_API, error):
                log.error("HTTP API stopped (prices are not affected): %s; restarting", error)
        await anyio.sleep(delay)
        delay = min(delay * 2, max_retry_s)
