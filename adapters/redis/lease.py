"""RedisLease: the active/standby lease (``ports.lease.Lease``) as one Redis key with a TTL.

``{mds}:leader`` holds the current holder's token and expires ``ttl`` after its last renewal.
A token is the instance's id (host, pid, random) plus a random nonce per term: identity, not a
counter, so a Redis that loses its data (``FLUSHALL``, a restart without persistence, a
failover to a replica that had not the key yet) can never hand the same token to two instances
(a counter restarts at 1, and two holders of "token 1" both renewed: split brain).
``{mds}:leader:last`` (no TTL) remembers the last holder: when it is missing at acquisition
the store has no history (first term, or data loss) and the election waits one renewal period
before streaming (see ``application.leadership``). Renew and release compare the stored token
with the caller's (Lua compare-and-set: check and change are one atomic step on the server), so
after a data loss the old holder's renewal fails and it stops. Both keys share a hash tag, so
each script touches one slot and works on a cluster too. A release also pushes a signal on
``{mds}:leader:released`` (a list, expiring after 2 s): a standby blocked on it (``BLPOP``, in
place of its pause between polls) takes over at once instead of at its next poll.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

import anyio

from adapters.redis.connection import RedisConnection
from ports.lease import Acquired

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local last = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
if last then return 1 end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# How long a release signal waits for a standby that was not blocked on it at that moment.
_SIGNAL_MS = 2000


def instance_id() -> str:
    """This process, recognisably (host and pid, for operators) and uniquely (random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisLease:
    def __init__(
        self, connection: RedisConnection, *, name: str = "mds", instance: str | None = None
    ) -> None:
        self._conn = connection
        self.key = f"{{{name}}}:leader"
        self.last_key = f"{{{name}}}:leader:last"
        self.released_key = f"{{{name}}}:leader:released"
        self.instance = instance or instance_id()

    def _eval(self, script: str, keys: list[str], *args: Any) -> Any:
        client = self._conn.client()
        return client.eval(script, len(keys), *keys, *args)

    async def acquire(self, ttl_s: float) -> Acquired | None:
        ms = max(1, int(ttl_s * 1000))
        token = f"{self.instance}:{secrets.token_hex(8)}"
        result = await self._conn.call(
            "lease acquire", lambda: self._eval(_ACQUIRE, [self.key, self.last_key], token, ms)
        )
        if result is None:
            return None
        return Acquired(token, unknown_history=int(result) == 0)

    async def renew(self, token: str, ttl_s: float) -> bool:
        ms = max(1, int(ttl_s * 1000))
        result = await self._conn.call(
            "lease renew", lambda: self._eval(_RENEW, [self.key], token, ms)
        )
        return bool(result)

    async def release(self, token: str) -> None:
        keys = [self.key, self.released_key]
        await self._conn.call(
            "lease release", lambda: self._eval(_RELEASE, keys, token, _SIGNAL_MS)
        )

    async def wait_released(self, timeout_s: float) -> None:
        """``BLPOP`` on the release signal, each block at most half the socket timeout (a
        longer one would read as a dead server), until ``timeout_s`` has passed."""
        deadline = anyio.current_time() + timeout_s
        cap = self._conn.options.socket_timeout_s / 2
        # Redis counts blocking timeouts in seconds (0 would block for ever): at least 10 ms.
        while (left := deadline - anyio.current_time()) >= 0.01:
            block = min(left, cap)

            def pop(block: float = block) -> Any:
                return self._conn.client().blpop([self.released_key], timeout=block)

            if await self._conn.call("lease wait", pop) is not None:
                return

    async def holder(self) -> str | None:
        """The current holder's token (for operators and tests), or None."""

        def get() -> Any:
            return self._conn.client().get(self.key)

        value = await self._conn.call("lease holder", get)
        return None if value is None else bytes(value).decode()
