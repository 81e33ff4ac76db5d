from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Acquired:
    """A lease just taken.

    ``token`` identifies this holder and this term uniquely (instance id + random nonce), never
    a counter: a store that loses its data (``FLUSHALL``, an empty restart, a failover to a
    replica that had not the key yet) cannot hand the same token to two holders.
    ``unknown_history`` is true when the store had no record of any earlier holder: the first
    term of a deployment, or the store lost its data, in which case an earlier holder may still
    believe it leads until its next renewal fails.
    """

    token: str
    unknown_history: bool = False


class Lease(Protocol):
    """A named, expiring lock shared by the instances of one deployment (active/standby).

    The holder is identified by its token (identity, compared on every renew and release).
    """

    async def acquire(self, ttl_s: float) -> Acquired | None:
        """Take the lease for ``ttl_s`` if nobody holds it; None when somebody does.

        Raises ``ConnectionError`` when the store cannot be reached (not holding it then).
        """
        ...

    async def renew(self, token: str, ttl_s: float) -> bool:
        """Extend the lease to ``ttl_s`` from now if ``token`` still holds it; False if lost
        (another holder, or the store lost the lease).

        Raises ``ConnectionError`` when the store cannot be reached: the caller must then
        assume the lease ends ``ttl_s`` after its last successful renewal.
        """
        ...

    async def release(self, token: str) -> None:
        """Give the lease up at once if ``token`` holds it, and wake one instance waiting in
        :meth:`wait_released` (so a standby takes over without waiting for its next poll)."""
        ...

    async def wait_released(self, timeout_s: float) -> None:
        """Return as soon as a holder releases the lease, or after ``timeout_s`` (a standby's
        pause between polls). A release made while nobody waited wakes the next waiter at once
        for a short while. Raises ``ConnectionError`` when the store cannot be reached."""
        ...
