"""Provider budgets shared for real: two workers (two pools, or two Redis clients) lease
from one bucket in PostgreSQL or Redis, on an injected clock, and together never take
more than the budget; a 429's pause written by one stops the other."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from fanout.config import Settings
from fanout.providers.quota import LEASE_TTL_SECONDS, Budget, QuotaStore, SharedQuota
from fanout.providers.quota_stores import PostgresQuotaStore, RedisQuotaStore
from fanout.store import create_pool

BUDGET = Budget.per_minute(120_000)  # 2,000/s


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def two_stores(
    kind: str, settings: Settings, redis_url: str
) -> AsyncIterator[list[QuotaStore]]:
    """Two independent connections to the same shared state, as two workers have."""
    if kind == "postgres":
        pools = [await create_pool(settings, max_size=2) for _ in range(2)]
        try:
            yield [PostgresQuotaStore(pool) for pool in pools]
        finally:
            for pool in pools:
                await pool.close()
    else:
        prefix = f"fanout-test:{secrets.token_hex(4)}:"
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
        try:
            yield [RedisQuotaStore(client, prefix=prefix) for client in clients]
        finally:
            for client in clients:
                await client.aclose()


def _workers(stores: list[QuotaStore], clock: Clock) -> list[SharedQuota]:
    return [
        SharedQuota(store, "fcm:project", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
        for store in stores
    ]


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_two_workers_never_take_more_than_the_shared_budget(
    kind: str, settings: Settings, redis_url: str
) -> None:
    clock = Clock()
    start, seconds = clock.now, 5.0
    async with two_stores(kind, settings, redis_url) as stores:
        workers = _workers(stores, clock)
        sent = [0, 0]
        # The two take turns, a push each: left to run side by side, which one's lease
        # came back first depended on real database latency (on a loaded machine one of
        # them took nearly all of the budget), not on the quota's arithmetic.
        while clock.now < start + seconds:
            for i, worker in enumerate(workers):
                await worker.take()
                sent[i] += 1
                clock.now += 0.00002  # each push costs 20 µs of the injected clock
    elapsed = clock.now - start
    granted = sum(w.granted for w in workers)
    assert sum(sent) <= granted <= BUDGET.burst + BUDGET.rate * elapsed
    assert granted >= 0.9 * BUDGET.rate * elapsed
    assert all(w.granted > 0.2 * granted for w in workers)  # both got a share
    assert sum(w.leases for w in workers) < granted / 20  # leases, not one trip per push


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_a_429_pause_is_honoured_by_the_other_worker(
    kind: str, settings: Settings, redis_url: str
) -> None:
    clock = Clock()
    async with two_stores(kind, settings, redis_url) as stores:
        got_429, other = _workers(stores, clock)
        await got_429.take()
        await other.take()
        got_429.pause(30.0)
        paused_at = clock.now
        while not await _paused_in_shared_state(stores[1], paused_at):
            await asyncio.sleep(0.01)  # the pause is written in the background
        clock.now += LEASE_TTL_SECONDS  # the other's current slice runs out
        await other.take()
    assert other.paused_until == pytest.approx(paused_at + 30.0)
    assert clock.now >= paused_at + 30.0


async def _paused_in_shared_state(store: QuotaStore, now: float) -> bool:
    """Asks for nothing (want 0), so the bucket is only read."""
    result = await store.lease("fcm:project", want=0, budget=BUDGET, now=now)
    return result.paused_until > now
