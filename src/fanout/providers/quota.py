"""A provider's rate budget shared by every worker and Lambda: leased in slices.

A push service's quota belongs to a credential (an FCM project: 600,000 messages a
minute by default), not to a process; ten workers each held to the quota send ten times
it, then a retry storm. So the budget is one token bucket per credential in shared state
(PostgreSQL, or Redis when ``FANOUT_REDIS_URL`` is set), and each worker *leases* a slice
of it (``want`` tokens, sized to about ``LEASE_SECONDS`` of its own sending) and spends the
slice locally, one token a push. The shared state then costs a worker a few operations a
second, not one per push.

A 429 with Retry-After pauses the credential in the shared state: every worker sees the
pause on its next lease (within ``LEASE_SECONDS``) and waits it out.

The bucket's arithmetic is ``grant`` below; the PostgreSQL statement (``LEASE_QUOTA``)
and the Redis script (``quota_stores.LEASE_SCRIPT``) compute the same thing atomically.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from fanout.metrics import PROVIDER_QUOTA_WAIT_SECONDS

log = logging.getLogger(__name__)

# A busy worker leases about this often: 5 shared-state operations a second, whatever
# its push rate. Shorter is fairer between workers and costs more operations.
LEASE_SECONDS = 0.2
# The shared bucket holds at most this much of a second's budget: the most all workers
# together can send at once after a quiet spell. Push services meter per minute (FCM) or
# per second, so half a second of budget at once stays inside what they accept.
BURST_SECONDS = 0.5
# Tokens leased but not spent within this are dropped: a worker that stalled (GC, a slow
# database) must not spend an old slice on top of what others leased since.
LEASE_TTL_SECONDS = 1.0
# A lease that failed (shared state unreachable) waits this long before the next try and
# meanwhile lets the worker spend its last slice again: fail open, at the last known pace.
STORE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Budget:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    rate: float
    burst: float

    @classmethod
    def per_minute(cls, quota: int) -> Budget:
        rate = quota / 60
        return cls(rate=rate, burst=max(1.0, rate * BURST_SECONDS))

    @property
    def largest_lease(self) -> int:
        """No worker takes more than half the bucket at once, so two busy workers share."""
        return max(1, math.floor(self.burst / 2))


@dataclass(frozen=True)
class BucketState:
    tokens: float
    updated_at: float  # seconds since the epoch, by the workers' clocks
    paused_until: float = 0.0


@dataclass(frozen=True)
class Grant:
    granted: int
    tokens_left: float
    paused_until: float


def grant(
    state: BucketState | None, *, want: int, budget: Budget, now: float
) -> tuple[BucketState, Grant]:
    """Refill the bucket to ``now``, then take up to ``want`` whole tokens (none while paused).

    A new credential starts with a full bucket. A clock behind the last writer's earns no
    tokens and does not move the bucket back in time.
    """
    if state is None:
        state = BucketState(tokens=budget.burst, updated_at=now)
    available = min(budget.burst, state.tokens + max(0.0, now - state.updated_at) * budget.rate)
    granted = 0 if state.paused_until > now else min(want, math.floor(available))
    after = BucketState(available - granted, max(state.updated_at, now), state.paused_until)
    return after, Grant(granted, after.tokens, after.paused_until)


class QuotaStore(Protocol):
    """Where the buckets live; each call one atomic operation on one credential's bucket."""

    async def lease(self, credential: str, *, want: int, budget: Budget, now: float) -> Grant: ...

    async def pause(self, credential: str, *, until: float) -> None: ...


class MemoryQuotaStore:
    """The buckets in this process: for unit tests, and the arithmetic's reference."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self.operations = 0

    async def lease(self, credential: str, *, want: int, budget: Budget, now: float) -> Grant:
        self.operations += 1
        self.buckets[credential], result = grant(
            self.buckets.get(credential), want=want, budget=budget, now=now
        )
        return result

    async def pause(self, credential: str, *, until: float) -> None:
        self.operations += 1
        state = self.buckets.get(credential) or BucketState(tokens=0.0, updated_at=until)
        paused = max(state.paused_until, until)
        self.buckets[credential] = BucketState(state.tokens, state.updated_at, paused)


class SharedQuota:
    """One credential's budget as one worker sees it: ``take()`` before each push.

    Coroutines spend the worker's current slice; when it is gone (or older than
    ``LEASE_TTL_SECONDS``) one of them leases the next while the others wait behind it.
    The slice doubles while a worker spends it in under ``LEASE_SECONDS`` and halves when
    it lasts over twice that, up to ``Budget.largest_lease``.
    """

    # The ``app`` label of its wait histogram (FANOUT_METRICS_APP_LABEL): set with its
    # provider's by ``providers_of_credential``.
    app_label = ""

    def __init__(
        self,
        store: QuotaStore,
        credential: str,
        budget: Budget,
        *,
        provider: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.credential = credential
        self.budget = budget
        self.provider = provider
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._allowance = 0
        self._expires = 0.0
        self._leased_at = 0.0
        self._want = max(1, budget.largest_lease // 4)
        self._last_want = self._want
        self._store_failed_until = 0.0
        self.paused_until = 0.0
        self.leases = 0
        self.granted = 0
        self._pauses: set[asyncio.Task[None]] = set()

    async def take(self) -> None:
        """Wait until this worker may send one push with this credential."""
        if self._spend():
            return
        started = self._clock()
        while not self._spend():
            async with self._lock:
                if self._spend():
                    break
                wait = await self._lease()
                if wait > 0:
                    await self._sleep(wait)
        PROVIDER_QUOTA_WAIT_SECONDS.labels(self.provider, self.app_label).observe(
            self._clock() - started
        )

    def _spend(self) -> bool:
        now = self._clock()
        if now < self.paused_until or self._allowance <= 0:
            return False
        if now >= self._expires:
            self._allowance = 0
            return False
        self._allowance -= 1
        return True

    def next_want(self, now: float) -> int:
        """How many tokens to ask for: sized to ``LEASE_SECONDS`` of this worker's pace."""
        if self._leased_at:
            lasted = now - self._leased_at
            if lasted < LEASE_SECONDS:
                self._want = min(self.budget.largest_lease, self._want * 2)
            elif lasted > 2 * LEASE_SECONDS:
                self._want = max(1, self._want // 2)
        return self._want

    async def _lease(self) -> float:
        """Lease the next slice; the seconds to wait before trying again (0: got some)."""
        now = self._clock()
        if now < self.paused_until:
            return self.paused_until - now
        if now < self._store_failed_until:
            return self._fail_open(now)
        want = self.next_want(now)
        try:
            result = await self.store.lease(self.credential, want=want, budget=self.budget, now=now)
        except Exception as exc:
            log.warning(
                "%s quota: shared state unreachable (%r); sending at the last slice's pace",
                self.provider,
                exc,
            )
            self._store_failed_until = now + STORE_RETRY_SECONDS
            return self._fail_open(now)
        self.leases += 1
        self.paused_until = max(self.paused_until, result.paused_until)
        if now < self.paused_until:
            return self.paused_until - now
        if result.granted:
            self.granted += result.granted
            self._last_want = want
            return self._fill(result.granted, now)
        # Nothing left: back when the bucket holds this slice again, and at most one lease
        # period on (others' leases may leave it short again; the slice then shrinks).
        refill = (want - result.tokens_left) / self.budget.rate
        return min(LEASE_SECONDS, max(0.001, refill))

    def _fail_open(self, now: float) -> float:
        """Without the shared state, go on at the last slice every ``LEASE_SECONDS``: the
        pace this worker had, rather than stopping every push on a database blip."""
        next_slice = self._leased_at + LEASE_SECONDS
        if now < next_slice:
            return next_slice - now
        return self._fill(self._last_want, now)

    def _fill(self, tokens: int, now: float) -> float:
        self._allowance = tokens
        self._expires = now + LEASE_TTL_SECONDS
        self._leased_at = now
        return 0.0

    def pause(self, seconds: float) -> None:
        """The service said 429, Retry-After ``seconds``: this worker stops at once, and
        the pause is written to the shared state for every other worker's next lease."""
        until = self._clock() + seconds
        if until <= self.paused_until:
            return  # already known (the other pushes in flight got the same 429)
        self.paused_until = until
        self._allowance = 0
        task = asyncio.get_running_loop().create_task(self._share_pause(until))
        self._pauses.add(task)
        task.add_done_callback(self._pauses.discard)

    async def _share_pause(self, until: float) -> None:
        try:
            await self.store.pause(self.credential, until=until)
        except Exception as exc:
            log.warning("%s quota: could not share a pause (%r)", self.provider, exc)
