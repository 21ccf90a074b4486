"""Where the shared provider budgets live: PostgreSQL (the default) or Redis.

Each lease is one atomic operation on one credential's bucket, computing
``quota.grant``: an ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` on the credential's row,
or a Lua script on the credential's hash.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from fanout.config import Settings
from fanout.providers.quota import Budget, Grant, QuotaStore
from fanout.store import acquire, quotas


class PostgresQuotaStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def lease(self, credential: str, *, want: int, budget: Budget, now: float) -> Grant:
        async with acquire(self.pool) as conn:
            granted, left, paused = await quotas.lease_quota(
                conn, credential=credential, want=want, rate=budget.rate, burst=budget.burst,
                now=now,
            )  # fmt: skip
        return Grant(granted, left, paused)

    async def pause(self, credential: str, *, until: float) -> None:
        async with acquire(self.pool) as conn:
            await quotas.pause_quota(conn, credential=credential, until=until)


# quota.grant() in Lua, run atomically by Redis. Floats go back as strings: Redis turns a
# Lua number into an integer reply. They are written with %.17g, exactly: Lua's tostring
# keeps 14 digits, which rounded a clock of ~2e9 s to 0.1 ms, and each lease then refilled
# up to 0.2 tokens too many at 2,000/s (one token over the budget in 5 s of leases).
# The hash expires an hour after its last use.
LEASE_SCRIPT = """
local want, rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at', 'paused_until')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
local paused = tonumber(state[3]) or 0
local available = math.min(burst, tokens + math.max(0, now - updated) * rate)
local granted = 0
if paused <= now then granted = math.min(want, math.floor(available)) end
local left = available - granted
local function exact(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'tokens', exact(left), 'updated_at', exact(math.max(updated, now)))
redis.call('EXPIRE', KEYS[1], 3600)
return {granted, exact(left), exact(paused)}
"""

PAUSE_SCRIPT = """
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if tonumber(ARGV[1]) > paused then
    redis.call('HSET', KEYS[1], 'paused_until', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], 3600)
return 0
"""


class RedisQuotaStore:
    """Buckets as Redis hashes ``fanout:quota:<credential>``."""

    def __init__(self, client: Any, *, prefix: str = "fanout:quota:") -> None:
        self.client = client
        self.prefix = prefix
        self._lease = client.register_script(LEASE_SCRIPT)
        self._pause = client.register_script(PAUSE_SCRIPT)

    async def lease(self, credential: str, *, want: int, budget: Budget, now: float) -> Grant:
        keys = [self.prefix + credential]
        granted, left, paused = await self._lease(
            keys=keys, args=[want, repr(budget.rate), repr(budget.burst), repr(now)]
        )
        return Grant(int(granted), float(left), float(paused))

    async def pause(self, credential: str, *, until: float) -> None:
        await self._pause(keys=[self.prefix + credential], args=[repr(until)])


@contextlib.asynccontextmanager
async def open_quota_store(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[QuotaStore]:
    """Redis when ``FANOUT_REDIS_URL`` is set, else the database behind ``pool``."""
    if settings.redis_url is None:
        yield PostgresQuotaStore(pool)
        return
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        yield RedisQuotaStore(client)
    finally:
        await client.aclose()
