"""A small, really full-able disk for fault tests and the chaos soak: a tmpfs of a few KiB
mounted on a directory (needs root; CI and the developers' machines run as root). Writing past
its size fails with ``OSError(ENOSPC)`` exactly as a full disk does; deleting or truncating a
file frees the space again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_disk(directory: Path, size_bytes: int = 64 * 1024) -> Iterator[Path | None]:
    """Mount a tmpfs of ``size_bytes`` on ``directory`` (created) for the block; yields the
    directory, or None when mounting is not permitted here (the caller then falls back, e.g.
    to ``/dev/full``). Unmounts on exit (lazily, if a process still holds a file open)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)
