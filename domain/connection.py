"""Connection states and the transitions allowed between them.

::

    DISCONNECTED -> CONNECTING -> AUTHENTICATING -> CONNECTED -> DISCONNECTED -> CONNECTING ...
                        \\______________\\__________________________/
                          (a failure at any step goes to DISCONNECTED)
    any state but FAILED -> FAILED   (terminal: an error retrying cannot fix)
"""

from __future__ import annotations

from enum import StrEnum

from domain.errors import IllegalTransition


class ConnectionState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    FAILED = "failed"


_ALLOWED: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.DISCONNECTED: frozenset({ConnectionState.CONNECTING, ConnectionState.FAILED}),
    ConnectionState.CONNECTING: frozenset(
        {ConnectionState.AUTHENTICATING, ConnectionState.DISCONNECTED, ConnectionState.FAILED}
    ),
    ConnectionState.AUTHENTICATING: frozenset(
        {ConnectionState.CONNECTED, ConnectionState.DISCONNECTED, ConnectionState.FAILED}
    ),
    ConnectionState.CONNECTED: frozenset({ConnectionState.DISCONNECTED, ConnectionState.FAILED}),
    ConnectionState.FAILED: frozenset(),
}


def can_transition(current: ConnectionState, target: ConnectionState) -> bool:
    return target in _ALLOWED[current]


class ConnectionStateMachine:
    """Holds the current state; :meth:`to` raises :class:`IllegalTransition` for a bad move."""

    __slots__ = ("state",)

    def __init__(self, state: ConnectionState = ConnectionState.DISCONNECTED) -> None:
        self.state = state

    def to(self, target: ConnectionState) -> ConnectionState:
        if not can_transition(self.state, target):
            raise IllegalTransition(self.state, target)
        previous, self.state = self.state, target
        return previous

    @property
    def failed(self) -> bool:
        return self.state is ConnectionState.FAILED
