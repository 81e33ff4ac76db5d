"""RedisLease against a real server: one holder at a time, identity tokens, expiry, release,
and no split brain after the server loses its data."""

from __future__ import annotations

import anyio
import pytest

from adapters.redis import RedisConnection
from adapters.redis.lease import RedisLease
from tests.conditions import wait_for
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.redis

NEVER_S = 3600.0  # a wait that only a release can end within the test's guard


async def test_one_holder_renewal_expiry_and_release(own_redis_server: RedisServer) -> None:
    conn = RedisConnection(own_redis_server.url)
    try:
        a, b = RedisLease(conn, name="t1"), RedisLease(conn, name="t1")
        first = await a.acquire(0.3)
        assert first is not None and first.unknown_history  # nobody held it before
        token = first.token
        assert a.instance in token  # names its holder
        assert await a.holder() == token
        assert await b.acquire(0.3) is None  # held
        assert await a.renew(token, 0.3)
        assert not await b.renew(token + "x", 0.3)  # another identity cannot renew
        with anyio.fail_after(5):
            while (second := await b.acquire(0.3)) is None:  # noqa: ASYNC110 - server expiry
                await anyio.sleep(0.05)
        assert second.token != token and not second.unknown_history  # a's term is on record
        assert not await a.renew(token, 0.3)  # the old leader has lost it
        await a.release(token)  # a stale release does not free the new holder's lease
        assert await b.acquire(0.3) is None
        await b.release(second.token)
        assert await a.acquire(5) is not None  # released: free at once
    finally:
        conn.close()


@pytest.mark.parametrize("loss", ["flushall", "empty restart"])
async def test_after_the_server_loses_its_data_the_old_holder_cannot_renew(
    own_redis_server: RedisServer, loss: str
) -> None:
    """Issue 11, defect 6: A holds the lease; Redis loses everything; B acquires. A counter
    token restarted at 1, so A and B both held "token 1" and both renewed (split brain). With
    identity tokens A's renewal fails, B's succeeds, and B learns the store had no history."""
    conn = RedisConnection(own_redis_server.url)
    try:
        a, b = RedisLease(conn, name="t3"), RedisLease(conn, name="t3")
        held = await a.acquire(5)
        assert held is not None
        if loss == "flushall":
            with own_redis_server.client() as r:
                r.flushall()
        else:
            await anyio.to_thread.run_sync(own_redis_server.restart)
        taken = await b.acquire(5)
        assert taken is not None
        assert taken.unknown_history
        assert not await a.renew(held.token, 5)
        assert await b.renew(taken.token, 5)
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


async def test_a_release_wakes_a_waiting_standby_at_once(own_redis_server: RedisServer) -> None:
    """Issue 11 (HA hand-over): the holder's release pushes a signal that a standby blocks on
    (``BLPOP``, in place of its pause between polls), so it takes over at once instead of at its
    next poll. A release nobody waited for still wakes the next waiter (the signal lives 2 s);
    a stale release (not the holder's token) signals nothing."""
    conn = RedisConnection(own_redis_server.url)
    try:
        a, b = RedisLease(conn, name="t4"), RedisLease(conn, name="t4")
        held = await a.acquire(30)
        assert held is not None

        def blocked() -> bool:
            with own_redis_server.client() as r:
                return any(c.get("cmd") == "blpop" for c in r.client_list())

        async def b_is_blocked() -> bool:
            return await anyio.to_thread.run_sync(blocked)

        woke: list[float] = []

        async def standby() -> None:
            await b.wait_released(NEVER_S)
            woke.append(anyio.current_time())

        with anyio.fail_after(10):  # a wake-up, not the hour's timeout
            async with anyio.create_task_group() as tg:
                tg.start_soon(standby)
                await wait_for(b_is_blocked, timeout_s=5)
                await a.release(held.token)
        assert woke

        again = await a.acquire(30)
        assert again is not None
        await b.release(again.token + "x")  # not the holder: no signal
        with own_redis_server.client() as r:
            assert r.llen(b.released_key) == 0
        await a.release(again.token)  # nobody waits now
        with anyio.fail_after(10):
            await b.wait_released(NEVER_S)  # the signal was kept for the next waiter
        await b.wait_released(0.05)  # consumed: an ordinary pause, which ends
    finally:
        conn.close()
