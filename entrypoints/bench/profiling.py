"""``--profile``: py-spy record of the service, folded into hot spots by function and component."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

from entrypoints.bench.model import BenchError
from entrypoints.bench.processes import Children


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy is not installed (pip install py-spy)")
    return found


def start_profiler(children: Children, pid: int, seconds: float,
                    out: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    return children.spawn(
        "py-spy",
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", "200", "--gil", "--format", "raw", "--output", str(out)],
    )  # fmt: skip


def _frame_key(frame: str) -> str:
    """``function (path/file.py:line)`` -> ``path/file.py:function``."""
    found = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not found:
        return frame
    function, path = found.groups()
    return f"{path}:{function}"


_OURS: Final = ("domain/", "ports/", "application/", "adapters/", "entrypoints/")


_AREAS: Final = (
    ("adapters/alpaca/", "alpaca adapter (decode)"),
    ("adapters/redis/", "redis adapter"),
    ("adapters/", "other adapters"),
    ("application/", "application"),
    ("domain/", "domain (mid, JSON, timestamps)"),
    ("entrypoints/", "entrypoints (metrics, HTTP)"),
    ("trio_websocket/", "trio-websocket + wsproto"),
    ("wsproto/", "trio-websocket + wsproto"),
    ("h11/", "trio-websocket + wsproto"),
    ("redis/", "redis-py client"),
    ("trio/_core/_thread_cache", "thread hop (trio/anyio to_thread)"),
    ("trio/_threads", "thread hop (trio/anyio to_thread)"),
    ("anyio/_backends", "thread hop (trio/anyio to_thread)"),
    ("outcome/", "thread hop (trio/anyio to_thread)"),
    ("trio/", "trio scheduler and sockets"),
    ("anyio/", "anyio"),
    ("hypercorn/", "HTTP server"),
    ("prometheus_client/", "metrics"),
    ("threading.py", "thread hop (trio/anyio to_thread)"),
)


def _area(key: str) -> str:
    for prefix, area in _AREAS:
        if key.startswith(prefix):
            return area
    return "other (stdlib, C extensions)"


def hot_spots(raw: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """From py-spy raw (collapsed) output, in percent of samples: ``self`` (leaf frames by
    file:function), ``ours`` (inclusive, the project's own functions) and ``areas`` (leaf
    frames grouped by component)."""
    self_counts: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";")]
        samples += count
        self_counts[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for key in set(frames):
            if key.startswith(_OURS) and not key.startswith("entrypoints/service.py"):
                ours[key] += count
    if not samples:
        return {"self": [], "ours": [], "areas": []}

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in counter.most_common(n)]

    return {"self": share(self_counts, top), "ours": share(ours, top), "areas": share(areas, 20)}
