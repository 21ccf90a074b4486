"""The shared provider budget's arithmetic, on an injected clock: what a bucket grants,
how a worker sizes its slices, and a 429's pause reaching another worker."""

from __future__ import annotations

import asyncio

import pytest

from fanout.providers.quota import (
    LEASE_SECONDS,
    LEASE_TTL_SECONDS,
    BucketState,
    Budget,
    MemoryQuotaStore,
    SharedQuota,
    grant,
)

BUDGET = Budget.per_minute(60_000)  # 1,000/s, at most 500 at once


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def test_budget_per_minute_is_a_rate_with_half_a_second_of_burst() -> None:
    assert BUDGET.rate == pytest.approx(1000)
    assert BUDGET.burst == pytest.approx(500)
    assert BUDGET.largest_lease == 250
    assert Budget.per_minute(1).largest_lease == 1


def test_a_new_credential_starts_full() -> None:
    state, result = grant(None, want=100, budget=BUDGET, now=10.0)
    assert result.granted == 100
    assert state.tokens == pytest.approx(400)


def test_grants_never_exceed_what_the_bucket_holds() -> None:
    state, result = grant(None, want=10_000, budget=BUDGET, now=10.0)
    assert result.granted == 500
    state, result = grant(state, want=10, budget=BUDGET, now=10.0)
    assert result.granted == 0
    state, result = grant(state, want=10_000, budget=BUDGET, now=10.25)
    assert result.granted == 250  # a quarter second at 1,000/s


def test_refill_is_capped_at_the_burst() -> None:
    state = BucketState(tokens=0.0, updated_at=0.0)
    _, result = grant(state, want=10_000, budget=BUDGET, now=3600.0)
    assert result.granted == 500


def test_a_clock_behind_the_last_writer_earns_nothing_and_moves_nothing_back() -> None:
    state = BucketState(tokens=0.0, updated_at=100.0)
    after, result = grant(state, want=5, budget=BUDGET, now=99.0)
    assert result.granted == 0
    assert after.updated_at == 100.0


def test_a_paused_credential_grants_nothing_until_the_pause_ends() -> None:
    state = BucketState(tokens=500.0, updated_at=10.0, paused_until=20.0)
    _, during = grant(state, want=5, budget=BUDGET, now=19.9)
    _, after = grant(state, want=5, budget=BUDGET, now=20.0)
    assert (during.granted, during.paused_until) == (0, 20.0)
    assert after.granted == 5


async def _busy_worker(quota: SharedQuota, clock: Clock, until: float, sent: list[int]) -> None:
    """Sends as fast as its quota lets it: each push costs 10 µs of the clock."""
    while clock.now < until:
        await quota.take()
        sent[0] += 1
        clock.now += 0.00001
        await asyncio.sleep(0)


async def test_two_workers_together_stay_inside_one_budget() -> None:
    clock, store = Clock(), MemoryQuotaStore()
    start, seconds = clock.now, 20.0
    workers = [
        SharedQuota(store, "fcm:p", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
        for _ in range(2)
    ]
    sent = [[0], [0]]
    await asyncio.gather(
        *(_busy_worker(w, clock, start + seconds, s) for w, s in zip(workers, sent, strict=True))
    )
    elapsed = clock.now - start
    granted = sum(w.granted for w in workers)
    assert granted <= BUDGET.burst + BUDGET.rate * elapsed
    assert granted >= 0.95 * BUDGET.rate * elapsed  # and the budget is used, not wasted
    assert sum(s[0] for s in sent) <= granted
    # A few shared-state operations a second per worker, not one per push.
    for worker in workers:
        assert worker.leases <= elapsed * (3 / LEASE_SECONDS)
    assert store.operations < granted / 20


async def test_a_busy_worker_doubles_its_slice_and_an_idle_one_halves_it() -> None:
    clock = Clock()
    quota = SharedQuota(MemoryQuotaStore(), "fcm:p", BUDGET, provider="fcm", clock=clock)
    first = quota.next_want(clock.now)
    await quota.take()
    clock.now += LEASE_SECONDS / 10
    assert quota.next_want(clock.now) == min(BUDGET.largest_lease, first * 2)
    clock.now += 3 * LEASE_SECONDS
    assert quota.next_want(clock.now) == min(BUDGET.largest_lease, first * 2) // 2


async def test_an_old_slice_is_dropped_not_spent_on_top_of_newer_leases() -> None:
    clock, store = Clock(), MemoryQuotaStore()
    quota = SharedQuota(store, "fcm:p", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
    await quota.take()
    leases = quota.leases
    clock.now += LEASE_TTL_SECONDS
    await quota.take()
    assert quota.leases == leases + 1


async def test_a_429_pause_reaches_the_other_worker_on_its_next_lease() -> None:
    clock, store = Clock(), MemoryQuotaStore()
    got_429 = SharedQuota(store, "fcm:p", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
    other = SharedQuota(store, "fcm:p", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
    await got_429.take()
    await other.take()
    got_429.pause(30.0)
    await asyncio.sleep(0)  # the pause is written in the background
    assert store.buckets["fcm:p"].paused_until == clock.now + 30.0
    paused_at = clock.now
    clock.now += LEASE_TTL_SECONDS  # the other worker's slice runs out
    await other.take()
    assert clock.now >= paused_at + 30.0
    assert other.paused_until == paused_at + 30.0


async def test_an_unreachable_store_fails_open_at_the_last_slices_size() -> None:
    class Down(MemoryQuotaStore):
        async def lease(self, credential: str, **kwargs: object) -> object:  # type: ignore[override]
            raise ConnectionError("down")

    clock = Clock()
    quota = SharedQuota(Down(), "fcm:p", BUDGET, provider="fcm", clock=clock, sleep=clock.sleep)
    start, sent = clock.now, 0
    while clock.now < start + 2.0:  # sends rather than blocking every push on a lost database
        await quota.take()
        sent += 1
        clock.now += 0.00001
    assert quota.leases == 0
    slice_size = max(1, BUDGET.largest_lease // 4)
    assert sent <= slice_size * (2.0 / LEASE_SECONDS + 1)  # at the last slice's pace
