from __future__ import annotations

from typing import Protocol


class Lease(Protocol):
    """A named, expiring lock shared by the instances of one deployment (active/standby).

    The holder is identified by a fencing token: a number that grows with every acquisition, so
    a stale holder can always be told from the current one.
    """

    async def acquire(self, ttl_s: float) -> int | None:
        """Take the lease for ``ttl_s`` if nobody holds it; the new fencing token, or None.

        Raises ``ConnectionError`` when the store cannot be reached (not holding it then).
        """
        ...

    async def renew(self, token: int, ttl_s: float) -> bool:
        """Extend the lease to ``ttl_s`` from now if ``token`` still holds it; False if lost.

        Raises ``ConnectionError`` when the store cannot be reached: the caller must then
        assume the lease ends ``ttl_s`` after its last successful renewal.
        """
        ...

    async def release(self, token: int) -> None:
        """Give the lease up at once if ``token`` holds it (so a standby need not wait)."""
        ...
