"""Alpaca adapter tests: real WebSockets on loopback, the real clock, each under fail_after.

``fake_server.py`` scripts exact frames (error codes, malformed input); ``proxy.py`` freezes a
connection without closing it. Logs are captured with a plain handler (all loggers, DEBUG) so
tests can assert what was, and what was never, logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

SECRET = "sEcReT-6f1c2b9e-do-not-log"
KEY = "PKTESTKEY-7d3a"


class LogRecords(logging.Handler):
    """Every record, formatted with its exception text, for asserting on content."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(logging.Formatter("%(levelname)s %(name)s %(message)s").format(record))

    def at(self, level: int) -> list[str]:
        return [t for r, t in zip(self.records, self.texts, strict=True) if r.levelno == level]

    def everything(self) -> str:
        return "\n".join(self.texts)


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
