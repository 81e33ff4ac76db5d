"""Frame recordings: every raw frame with its receive time, one JSON line per frame.

Format (``.jsonl``, or gzip-compressed when the name ends in ``.gz``)::

    {"t": 1721807813639713735, "text": "[{\\"T\\":\\"q\\",...}]"}     # a text (JSON) frame
    {"t": 1721807813640000000, "b64": "kYqhVKFx..."}                 # a binary (msgpack) frame

``t`` is the receive wall time in nanoseconds since the epoch. Control frames (``connected``,
``authenticated``, ``subscription``) are recorded like any other; readers skip what they do not
need. Appending to an existing file is allowed (gzip writes a new member; readers handle both).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple

import orjson

log = logging.getLogger(__name__)


class RecordedFrame(NamedTuple):
    received_ns: int
    data: str | bytes


class FrameRecorder:
    """Appends frames to a recording, buffered in memory and written every ``flush_bytes``.

    :meth:`write` is synchronous and cheap (no I/O until the buffer is full), so the stream's
    read loop can call it. :meth:`close` (or leaving the ``with`` block) flushes everything and
    closes the file; a later :meth:`write` opens it again (appending), so one recorder serves a
    feed's successive sessions. Frames buffered when the process dies without closing are lost.

    **Recording is optional: it fails alone.** An ``OSError`` while writing, flushing, closing
    or re-opening (disk full, quota, I/O error, file system gone read-only) never reaches the
    caller: the frames buffered are dropped and counted (``dropped_frames``), one ERROR line
    says recording stopped, ``on_failure(reason)`` is called, and writes are dropped (counted)
    until ``retry_s`` later, when the file is opened again; once that open and a flush
    succeed, one line says recording resumed and ``on_recovery()`` is called. A plain
    recording gets a line break first (a half-written line is then one malformed line that
    readers skip); a gzip recording cut by a full disk is readable up to the cut. Only the
    first open, in the constructor, raises.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_bytes: int = 256 * 1024,
        retry_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], object] | None = None,
        on_recovery: Callable[[], object] | None = None,
    ) -> None:
        self.path = path
        self.frames = 0
        self.dropped_frames = 0
        self.failure: str | None = None  # why recording is stopped, while it is
        self._flush_bytes = flush_bytes
        self._retry_s = retry_s
        self._monotonic = monotonic
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self._retry_at = 0.0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffered_frames = 0
        self._file: gzip.GzipFile | io.BufferedWriter | None = self._open()

    def _open(self) -> gzip.GzipFile | io.BufferedWriter:
        if self.path.name.endswith(".gz"):
            return gzip.GzipFile(self.path, "ab")
        return open(self.path, "ab")

    def write(self, received_ns: int, frame: str | bytes) -> None:
        """Append one frame received at ``received_ns`` (wall time, ns). Never raises OSError."""
        if self._file is None and not self._reopen():
            self.dropped_frames += 1
            return
        if isinstance(frame, str):
            line = orjson.dumps({"t": received_ns, "text": frame})
        else:
            line = orjson.dumps({"t": received_ns, "b64": base64.b64encode(frame).decode("ascii")})
        self._buffer.append(line)
        self._buffer.append(b"\n")
        self._buffered += len(line) + 1
        self._buffered_frames += 1
        self.frames += 1
        if self._buffered >= self._flush_bytes:
            self.flush()

    def _reopen(self) -> bool:
        """Open the file again (after :meth:`close`, or after a failure once ``retry_s`` has
        passed); False while recording stays stopped."""
        if self.failure is not None and self._monotonic() < self._retry_at:
            return False
        try:
            self._file = self._open()
            if self.failure is not None:
                if not self.path.name.endswith(".gz"):
                    self._file.write(b"\n")  # end a line the failure may have cut
                self._file.flush()  # proves the disk takes writes again
        except OSError as e:
            self._fail(e)
            return False
        if self.failure is not None:
            log.warning(
                "recording to %s resumed (%d frames were dropped while it was stopped)",
                self.path,
                self.dropped_frames,
            )
            self.failure = None
            if self._on_recovery is not None:
                self._on_recovery()
        return True

    def flush(self) -> None:
        """Write what is buffered; a failure stops recording (see the class docstring)."""
        if self._file is None:
            return
        try:
            if self._buffer:
                self._file.write(b"".join(self._buffer))
            self._file.flush()
        except OSError as e:
            self._fail(e)  # what was buffered counts as dropped (part of it may be on disk)
            return
        self._buffer.clear()
        self._buffered = 0
        self._buffered_frames = 0

    def _fail(self, error: OSError) -> None:
        self.dropped_frames += self._buffered_frames
        self._buffer.clear()
        self._buffered = 0
        self._buffered_frames = 0
        file, self._file = self._file, None
        if file is not None:
            with suppress(OSError):  # closing flushes what is left, which fails the same way
                file.close()
        self._retry_at = self._monotonic() + self._retry_s
        first = self.failure is None
        self.failure = f"cannot write {self.path}: {error.strerror or error}"
        if first:
            log.error(
                "recording stopped (prices are not affected): %s; retrying every %g s "
                "(MDS_RECORD_FILE)",
                self.failure,
                self._retry_s,
            )
            if self._on_failure is not None:
                self._on_failure(self.failure)

    def close(self) -> None:
        """Flush and close; idempotent; never raises OSError. A later write opens it again."""
        if self._file is None:
            return
        self.flush()
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as e:
                self._file = file  # let _fail count and report it
                self._fail(e)

    def __enter__(self) -> FrameRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_text(source: Path | Traversable) -> IO[bytes]:
    raw = source.open("rb")
    if source.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def read_recording(
    source: Path | Traversable,
    on_error: Callable[[int, str], None] | None = None,
) -> Iterator[RecordedFrame]:
    """The frames of a recording, in file order, read lazily.

    A line that is not a recorded frame is skipped and reported as ``on_error(line_no, why)``
    (line numbers start at 1); blank lines are ignored. Raises ``OSError`` if the file cannot be
    read and ``EOFError`` / ``gzip.BadGzipFile`` for a corrupt or truncated gzip file.
    """
    with _open_text(source) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                t = obj["t"]
                if type(t) is not int:
                    raise TypeError(f"t is not an integer: {t!r}")
                if "text" in obj:
                    data: str | bytes = obj["text"]
                    if type(data) is not str:
                        raise TypeError("text is not a string")
                else:
                    data = base64.b64decode(obj["b64"], validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                if on_error is not None:
                    on_error(line_no, f"{type(e).__name__}: {e}")
                continue
            yield RecordedFrame(t, data)
