"""Leases: how a shard or a batch is held by one invocation at a time, and given up.

A lease is a time in PostgreSQL (``lease_until``) that the holder renews while it works.
A failure gives it up at once, so the message's next try (or another copy of it) can
take the work instead of finding it busy and burning a receive. When the database is
what failed, giving up is tried for a few seconds (a restarted PostgreSQL is usually back
by then); if it still cannot be told, ``LeaseKept`` tells the runtime to bring the message
back no sooner than the lease ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from fanout import retry
from fanout.errors import FanoutError

log = logging.getLogger(__name__)

# Giving a lease up is one short statement; past this the database is not answering.
_RELEASE_TIMEOUT_SECONDS = 5.0


class LeaseKept(FanoutError):
    """The work failed and its lease could not be given up; retry after ``seconds``."""

    def __init__(self, cause: BaseException, seconds: float) -> None:
        super().__init__(describe(cause))
        self.cause = cause
        self.seconds = seconds


def describe(failure: BaseException) -> str:
    """The reason a unit of work failed, as recorded and shown to operators."""
    if isinstance(failure, LeaseKept):
        return describe(failure.cause)
    return f"{type(failure).__name__}: {failure}"[:1000]


async def give_up(
    release: Callable[[str], Awaitable[object]], failure: BaseException, lease_seconds: float
) -> NoReturn:
    """Release the lease after ``failure`` and raise it again (or ``LeaseKept``)."""
    reason = describe(failure)

    async def release_once() -> object:
        return await asyncio.wait_for(release(reason), _RELEASE_TIMEOUT_SECONDS)

    try:
        await retry.retrying(
            release_once,
            backoff=retry.RELEASE_LEASE,
            tries=retry.RELEASE_LEASE_TRIES,
            on=(Exception,),
            what="giving a lease up",
        )
    except Exception as exc:
        log.warning("could not give up a lease after %s: %r", describe(failure), exc)
        if isinstance(failure, Exception):
            raise LeaseKept(failure, lease_seconds) from failure
    raise failure
