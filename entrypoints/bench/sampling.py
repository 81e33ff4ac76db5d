"""Resource sampling of a process under test: RSS over time, CPU seconds, machine load."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence

from entrypoints.bench.model import SAMPLE_EVERY_S


class RssSampler:
    """Samples a process's RSS every 100 ms on a thread; ``peak`` in bytes, ``samples`` as
    (monotonic time, bytes) for :meth:`growth`."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rss = int(self._proc.memory_info().rss)
            except Exception:  # the process is gone
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(SAMPLE_EVERY_S)

    def growth(self, start: float, end: float) -> tuple[float, float] | None:
        """RSS (MB) at the start and at the end of the window [start, end]: the median of the
        samples of its first and of its last second (one sample alone is noise)."""
        return rss_growth(self.samples, start, end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def rss_growth(
    samples: Sequence[tuple[float, int]], start: float, end: float, edge_s: float = 1.0
) -> tuple[float, float] | None:
    """Median RSS in MB over ``[start, start + edge_s]`` and over ``[end - edge_s, end]``, or
    None when either edge has no sample (a window shorter than the edges is one edge)."""
    first = [rss for t, rss in samples if start <= t <= start + edge_s]
    last = [rss for t, rss in samples if end - edge_s <= t <= end]
    if not first or not last:
        return None
    return statistics.median(first) / 2**20, statistics.median(last) / 2**20


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, since boot)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def process_sys_seconds(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).cpu_times().system)
    except Exception:
        return 0.0


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except Exception:
        return 0.0
    return float(t.user + t.system)
