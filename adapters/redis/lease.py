"""RedisLease: the active/standby lease (``ports.lease.Lease``) as one Redis key with a TTL.

``{mds}:leader`` holds the fencing token of the current leader and expires ``ttl`` after its
last renewal; ``{mds}:leader:token`` counts acquisitions, so tokens only grow. Both keys share
a hash tag, so each script touches one slot and also works on a cluster. Acquire, renew and
release are Lua scripts: check and change are one atomic step on the server. The server's own
expiry decides when a standby may take over; the leader stops on its own, earlier (see
``application.leadership``).
"""

from __future__ import annotations

from typing import Any

from adapters.redis.connection import RedisConnection

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLease:
    def __init__(self, connection: RedisConnection, *, name: str = "mds") -> None:
        self._conn = connection
        self.key = f"{{{name}}}:leader"
        self.counter_key = f"{{{name}}}:leader:token"

    def _eval(self, script: str, keys: list[str], *args: Any) -> Any:
        client = self._conn.client()
        return client.eval(script, len(keys), *keys, *args)

    async def acquire(self, ttl_s: float) -> int | None:
        ms = max(1, int(ttl_s * 1000))
        result = await self._conn.call(
            "lease acquire", lambda: self._eval(_ACQUIRE, [self.key, self.counter_key], ms)
        )
        return None if result is None else int(result)

    async def renew(self, token: int, ttl_s: float) -> bool:
        ms = max(1, int(ttl_s * 1000))
        result = await self._conn.call(
            "lease renew", lambda: self._eval(_RENEW, [self.key], str(token), ms)
        )
        return bool(result)

    async def release(self, token: int) -> None:
        await self._conn.call("lease release", lambda: self._eval(_RELEASE, [self.key], str(token)))
