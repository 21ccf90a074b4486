"""One retry vocabulary for every place that waits and tries again.

``Backoff`` is the schedule (first delay, doubling, a cap); ``retrying`` runs an async
call under it. The sites differ only in their numbers, each named below beside why:

- a message that failed is hidden for ``MESSAGE`` before SQS delivers it again;
- a delivery retry batch waits ``settings.retry_backoff()`` (FANOUT_RETRY_BASE_DELAY);
- a worker whose receive failed pauses ``RECONNECT`` before polling again;
- entries SQS failed in a SendMessageBatch are resent after ``QUEUE_SEND``;
- a batch whose pushes are out waits a database blip out with ``RECORD_OUTCOME``;
- a failed shard or batch tries to give its lease up with ``RELEASE_LEASE``;
- a claim the database failed is tried again, as the same owner, with ``CLAIM``;
- a push service that cannot be connected to is tried again on ``providers.h2.client.REOPEN``.

Why not tenacity or stamina: most sites need the delay itself, not a retry loop (it
becomes an SQS visibility timeout or DelaySeconds, computed from the receive count SQS
reports), so the schedule is the shared part; the one loop here is ten lines.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of ``first``, ``first * factor``, … seconds, never more than ``cap``. With
    ``jitter`` (0 to 1), each is drawn at random between ``(1 - jitter)`` times that and
    that, so that clients which failed together do not all try again together."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """The wait before try ``attempt + 1``, after ``attempt`` (>= 1) failures."""
        longest = self.longest(attempt)
        return longest - longest * self.jitter * random.random() if self.jitter else longest

    def shortest(self, attempt: int) -> float:
        """The least ``delay(attempt)`` can be."""
        return self.longest(attempt) * (1.0 - self.jitter)

    def longest(self, attempt: int) -> float:
        """The most ``delay(attempt)`` can be (the schedule without its jitter)."""
        exponent = max(0, attempt - 1)
        # Past ~60 doublings the float overflows long after every cap has been reached.
        return min(self.cap, self.first * self.factor ** min(exponent, 60))

    def delays(self, tries: int) -> list[float]:
        """The waits between ``tries`` tries."""
        return [self.delay(attempt) for attempt in range(1, tries)]


# SQS delivers a failed message again after 1, 2, 4 … s, at most a minute apart.
MESSAGE = Backoff(first=1.0, cap=60.0)
# A worker that cannot reach SQS: quick at first, then once a minute, never giving up.
RECONNECT = Backoff(first=1.0, cap=60.0)
# SendMessageBatch entries SQS failed on its side (throttling, internal errors).
QUEUE_SEND = Backoff(first=0.1, cap=1.6)
QUEUE_SEND_TRIES = 5
# 7.75 s in all: long enough for a PostgreSQL restart or failover's reconnect.
RECORD_OUTCOME = Backoff(first=0.25, cap=4.0)
RECORD_OUTCOME_TRIES = 6
# Giving a lease up after a failure: the failure is often the database itself, back within
# a second or two after a restart. Released, the work goes on at the next try (1 s later);
# kept, it waits out the whole lease (60 s at the defaults; bench/chaos.py measured it).
RELEASE_LEASE = Backoff(first=0.25, cap=2.0)
RELEASE_LEASE_TRIES = 6
# A claim (of a shard or a batch) that failed on the database's side: tried again by the
# same owner, so that one that committed while the driver reported the connection lost
# (seen during a PostgreSQL restart) is taken back at once instead of waited out (a 60 s
# lease: bench/chaos.py counted 1,048 and 5,240 duplicates in such runs). 3.75 s in all.
CLAIM = Backoff(first=0.25, cap=2.0)
CLAIM_TRIES = 5


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    tries: int,
    on: tuple[type[BaseException], ...],
    what: str,
) -> T:
    """``call()`` until it returns, waiting ``backoff`` after each failure in ``on``;
    the last failure is raised."""
    for attempt in range(1, tries + 1):
        try:
            return await call()
        except on as exc:
            if attempt == tries:
                raise
            wait = backoff.delay(attempt)
            log.warning("%s failed (%r); again in %.2fs", what, exc, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
