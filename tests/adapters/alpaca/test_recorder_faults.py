"""The frame recorder fails alone (issue 11, defect 5): a full disk stops the recording, never
the caller; it says so once, drops and counts frames, and resumes when space comes back.

The disk is really full: a 64 KiB tmpfs (root only; skipped elsewhere) or ``/dev/full``
(every write fails with ENOSPC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.alpaca.recorder import FrameRecorder, read_recording
from entrypoints.testbed.disk import small_disk

FRAME = '[{"T":"q","S":"AAPL","bp":150.25,"ap":150.27,"t":"2024-07-24T07:56:53.639713735Z"}]'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.recoveries = 0

    def failed(self, why: str) -> None:
        self.failures.append(why)

    def recovered(self) -> None:
        self.recoveries += 1


def failure(recorder: FrameRecorder) -> str | None:
    return recorder.failure  # read through a call: the value changes between asserts


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", 64 * 1024) as mounted:
        if mounted is None:
            pytest.skip("cannot mount a tmpfs here (not root)")
        yield mounted


def test_a_full_disk_stops_recording_once_and_it_resumes_when_space_returns(disk: Path) -> None:
    clock, events = Clock(), Events()
    path = disk / "frames.jsonl"
    recorder = FrameRecorder(
        path,
        flush_bytes=4096,
        retry_s=5.0,
        monotonic=clock,
        on_failure=events.failed,
        on_recovery=events.recovered,
    )
    for i in range(2_000):  # ~230 KB of frames into 64 KiB: the disk fills up
        recorder.write(i, FRAME)
    assert "No space left on device" in str(failure(recorder))
    assert len(events.failures) == 1  # one report per outage, not one per failed write
    assert recorder.dropped_frames > 0
    dropped = recorder.dropped_frames
    recorder.write(1, FRAME)  # still stopped before the retry time: dropped, no I/O
    assert recorder.dropped_frames == dropped + 1

    path.write_bytes(b"")  # space comes back
    clock.now += 5.0
    recorder.write(2_000_001, FRAME)
    assert failure(recorder) is None and events.recoveries == 1
    recorder.close()
    errors: list[tuple[int, str]] = []
    frames = list(read_recording(path, on_error=lambda n, why: errors.append((n, why))))
    assert [f.received_ns for f in frames] == [2_000_001]
    assert errors == []


def test_dev_full_never_raises_from_write_flush_or_close() -> None:
    events = Events()
    recorder = FrameRecorder(Path("/dev/full"), flush_bytes=1, on_failure=events.failed)
    for i in range(100):
        recorder.write(i, FRAME)
        recorder.write(i, FRAME.encode())
    recorder.flush()
    recorder.close()
    recorder.close()
    assert recorder.frames == 1 and recorder.dropped_frames == 200
    assert len(events.failures) == 1 and "No space left on device" in events.failures[0]


def test_gzip_recording_on_a_full_disk_fails_alone(disk: Path) -> None:
    events = Events()
    recorder = FrameRecorder(disk / "frames.jsonl.gz", flush_bytes=4096, on_failure=events.failed)
    payload = bytes(range(256)) * 64  # incompressible enough to fill the disk
    for i in range(2_000):
        recorder.write(i, payload + i.to_bytes(4, "big"))
    recorder.close()
    assert recorder.failure is not None and len(events.failures) == 1
