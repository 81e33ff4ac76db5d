"""RedisLease against a real server: one holder at a time, growing tokens, expiry, release."""

from __future__ import annotations

import anyio
import pytest

from adapters.redis import RedisConnection
from adapters.redis.lease import RedisLease
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis


async def test_one_holder_renewal_expiry_and_release(own_redis_server: RedisServer) -> None:
    conn = RedisConnection(own_redis_server.url)
    try:
        a, b = RedisLease(conn, name="t1"), RedisLease(conn, name="t1")
        token = await a.acquire(0.3)
        assert token is not None
        assert await b.acquire(0.3) is None  # held
        assert await a.renew(token, 0.3)
        assert not await b.renew(token + 1, 0.3)  # a wrong token cannot renew
        with anyio.fail_after(5):
            while (second := await b.acquire(0.3)) is None:  # noqa: ASYNC110 - server expiry
                await anyio.sleep(0.05)
        assert second > token  # fencing tokens only grow
        assert not await a.renew(token, 0.3)  # the old leader has lost it
        await a.release(token)  # a stale release does not free the new holder's lease
        assert await b.acquire(0.3) is None
        await b.release(second)
        assert await a.acquire(5) is not None  # released: free at once
    finally:
        conn.close()


async def test_unreachable_store_raises_connection_error(own_redis_server: RedisServer) -> None:
    conn = RedisConnection(own_redis_server.url)
    try:
        lease = RedisLease(conn, name="t2")
        own_redis_server.kill9()
        with pytest.raises(ConnectionError):
            await lease.acquire(1)
    finally:
        conn.close()
