"""Ports for tests, without the race of "find a free port, close it, use it later".

A port found free and then closed can be taken by any other process before the test uses it
(another test's server binding port 0 gets exactly such ports). So: servers bind port 0 and
report the port they got; a port that must refuse connections is held, bound and never
listening, for as long as the test needs it (the kernel answers every connect with RST).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses every connection while the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))  # bound, never listening: connects get ECONNREFUSED
        yield held.getsockname()[1]
