"""Condition waits shared by every test tier that talks to real processes or threads.

Nothing here sleeps as synchronisation: each helper waits for a condition (polling a predicate
at a short step, or reading items as they arrive) and fails with ``TimeoutError`` after a bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0, step_s: float = 0.01
) -> None:
    """Poll ``predicate`` (sync or async) until it holds; ``TimeoutError`` after ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(step_s)


async def receive(items: AsyncIterator[T], n: int, timeout_s: float = 5.0) -> list[T]:
    """The next ``n`` items of ``items``; ``TimeoutError`` if they do not come in time."""
    got: list[T] = []
    with anyio.fail_after(timeout_s):
        async for item in items:
            got.append(item)
            if len(got) == n:
                break
    return got
