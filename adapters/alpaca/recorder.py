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
from collections.abc import Callable, Iterator
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple

import orjson


class RecordedFrame(NamedTuple):
    received_ns: int
    data: str | bytes


class FrameRecorder:
    """Appends frames to a recording, buffered in memory and written every ``flush_bytes``.

    :meth:`write` is synchronous and cheap (no I/O until the buffer is full), so the stream's
    read loop can call it. :meth:`close` (or leaving the ``with`` block) flushes everything;
    frames buffered when the process dies without closing are lost.
    """

    def __init__(self, path: Path, *, flush_bytes: int = 256 * 1024) -> None:
        self.path = path
        self.frames = 0
        self._flush_bytes = flush_bytes
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._file: gzip.GzipFile | io.BufferedWriter = (
            gzip.GzipFile(path, "ab") if path.name.endswith(".gz") else open(path, "ab")  # noqa: SIM115
        )

    def write(self, received_ns: int, frame: str | bytes) -> None:
        """Append one frame received at ``received_ns`` (wall time, ns)."""
        if isinstance(frame, str):
            line = orjson.dumps({"t": received_ns, "text": frame})
        else:
            line = orjson.dumps({"t": received_ns, "b64": base64.b64encode(frame).decode("ascii")})
        self._buffer.append(line)
        self._buffer.append(b"\n")
        self._buffered += len(line) + 1
        self.frames += 1
        if self._buffered >= self._flush_bytes:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0
        self._file.flush()

    def close(self) -> None:
        """Flush and close; idempotent."""
        if self._file.closed:
            return
        try:
            self.flush()
        finally:
            self._file.close()

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
