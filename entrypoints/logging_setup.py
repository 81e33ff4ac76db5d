"""Process-wide logging: JSON lines for machines, rich for people, secrets redacted in both.

``configure_logging`` installs one handler on the root logger (replacing the one it installed
before, so calling it twice is safe) and leaves library modules to use
``logging.getLogger(__name__)`` as usual.

JSON format: one object per line, ``{"ts", "level", "logger", "msg", ...extra fields,
"exc"}``; ``ts`` is UTC ISO-8601 with microseconds; fields passed with ``extra=`` keep their
names; values JSON cannot hold are rendered with ``str``.

Length: every line is capped (:class:`LineCapFilter`): the message at
:data:`MAX_MESSAGE_CHARS`, each string extra field at :data:`MAX_FIELD_CHARS`, a traceback at
:data:`MAX_TRACEBACK_CHARS` (its head and its tail, where the error is), each cut marked with
how much was cut. A message built from 10,000 symbols is one readable line, not 80 KB.

Redaction (belt and braces: secrets should never be logged in the first place): every
configured secret of 4 characters or more is replaced by ``***`` in the message, its arguments,
string extra fields and the formatted traceback, before any formatter sees the record.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Final, Literal

import orjson
from rich.console import Console
from rich.logging import RichHandler

LogFormat = Literal["json", "console"]

MIN_SECRET_LENGTH: Final = 4
MAX_MESSAGE_CHARS: Final = 4_000
MAX_FIELD_CHARS: Final = 1_000
MAX_TRACEBACK_CHARS: Final = 8_000
REDACTED: Final = "***"
_MARK: Final = "_mds_handler"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}

# Libraries whose INFO lines add noise or may carry URLs with tokens (httpx logs every request).
_QUIET: Final = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "hpack": logging.WARNING}


class RedactingFilter(logging.Filter):
    """Replaces secrets in a record before it is formatted; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._pattern: re.Pattern[str] | None = None
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        kept = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw parts, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


def cap(text: str, limit: int, *, keep_tail: int = 0) -> str:
    """``text`` cut to about ``limit`` characters, saying how many were cut; with
    ``keep_tail``, the last ``keep_tail`` characters are kept too."""
    if len(text) <= limit:
        return text
    head = max(0, limit - keep_tail)
    cut = len(text) - head - keep_tail
    tail = text[len(text) - keep_tail :] if keep_tail else ""
    return f"{text[:head]}… [{cut} characters cut] …{tail}"


class LineCapFilter(logging.Filter):
    """Caps the length of a record's message, string extras and traceback (see the module
    docstring); never drops a record. Runs after redaction, so no secret is cut in two."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw parts
            message = f"{record.msg!s} {record.args!r}"
        if len(message) > MAX_MESSAGE_CHARS or record.args:
            record.msg = cap(message, MAX_MESSAGE_CHARS)
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > MAX_TRACEBACK_CHARS:
            record.exc_text = cap(
                record.exc_text, MAX_TRACEBACK_CHARS, keep_tail=MAX_TRACEBACK_CHARS * 3 // 4
            )
        if record.stack_info and len(record.stack_info) > MAX_TRACEBACK_CHARS:
            record.stack_info = cap(
                record.stack_info, MAX_TRACEBACK_CHARS, keep_tail=MAX_TRACEBACK_CHARS * 3 // 4
            )
        for key, value in list(vars(record).items()):
            if (
                key not in _STANDARD_ATTRS
                and isinstance(value, str)
                and len(value) > (MAX_FIELD_CHARS)
            ):
                setattr(record, key, cap(value, MAX_FIELD_CHARS))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, encoded by orjson."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    fmt: LogFormat,
    level: str | int = "INFO",
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> RedactingFilter:
    """Send every log record to ``stream`` (default stderr) in ``fmt``, at ``level`` and above,
    with ``secrets`` redacted. Returns the filter, whose secrets can be changed later."""
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', got {fmt!r}")
    out = stream if stream is not None else sys.stderr
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter())
    elif not _is_terminal(out):
        # Piped or redirected: rich would wrap each message at its 80-column default and pad
        # the lines; one plain line per record reads (and greps) better.
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s"))
    else:
        console = Console(file=out, soft_wrap=True)
        # rich_tracebacks=False: tracebacks then come from the (redacted) formatted text.
        handler = RichHandler(
            console=console,
            show_path=False,
            rich_tracebacks=False,
            markup=False,
            log_time_format="%H:%M:%S.%f",
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    handler.addFilter(LineCapFilter())
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet = root.getEffectiveLevel() > logging.DEBUG
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(quiet_level if quiet else logging.NOTSET)
    logging.captureWarnings(True)
    return redactor
