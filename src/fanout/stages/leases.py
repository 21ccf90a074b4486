"""Leases: how a shard or a batch is held by one invocation at a time, and given up.

A lease is a time in PostgreSQL (``lease_until``) that the holder renews while it works,
and an owner (``lease_owner``): a random id each invocation makes (``new_owner``), so that
PostgreSQL knows which try of a message holds the work. Every renewal, checkpoint, finish
and release names its owner; one whose lease lapsed and was taken by another invocation
is refused (``LeaseLost``), and it stops: the holder does the work. A claim that fails on
the database's side is tried again as the same owner (``claim``): one that committed
while the driver reported the connection lost (a PostgreSQL restart) finds the lease its
own and takes it back, instead of waiting it out.

A failure gives the lease up at once (only the failed invocation's own: harmless if its
claim never committed), so the message's next try (or another copy of it) can take the
work instead of finding it busy and burning a receive. When the database is what failed,
giving up is tried for a few seconds (a restarted PostgreSQL is usually back by then); if
it still cannot be told, ``LeaseKept`` tells the runtime to bring the message back no
sooner than the lease ends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from fanout import retry
from fanout.errors import FanoutError
from fanout.metrics import LEASES_LOST
from fanout.store.connection import UNTRUSTWORTHY

log = logging.getLogger(__name__)

# Giving a lease up is one short statement; past this the database is not answering.
_RELEASE_TIMEOUT_SECONDS = 5.0


class LeaseKept(FanoutError):
    """The work failed and its lease could not be given up; retry after ``seconds``."""

    def __init__(self, cause: BaseException, seconds: float) -> None:
        super().__init__(describe(cause))
        self.cause = cause
        self.seconds = seconds


class LeaseLost(FanoutError):
    """This invocation's lease on a shard or batch lapsed and another invocation holds it
    now: a renewal, checkpoint or finish in its name was refused. It stops sending."""

    def __init__(self, unit: str, name: str) -> None:
        super().__init__(f"{unit} {name}: its lease lapsed and another invocation holds it")
        self.unit = unit


T = TypeVar("T")


def new_owner() -> uuid.UUID:
    """The owner id of one invocation's leases: random, never reused."""
    return uuid.uuid4()


def lost(unit: str, name: str) -> LeaseLost:
    """A ``LeaseLost`` for the ``unit`` ('shard', 'batch') named ``name``, counted."""
    LEASES_LOST.labels(unit).inc()
    return LeaseLost(unit, name)


async def claim(take: Callable[[], Awaitable[T]], what: str) -> T:
    """``take()`` (a claim, in one owner's name, on a connection of its own), tried again
    while the database fails as after a restart: a claim that committed unanswered is
    then taken back by its owner (issue #27)."""
    return await retry.retrying(
        take, backoff=retry.CLAIM, tries=retry.CLAIM_TRIES, on=UNTRUSTWORTHY, what=what
    )


async def while_renewing(work: Awaitable[T], renewing: Coroutine[Any, Any, None]) -> T:
    """``work``'s result, ``renewing`` (a loop that renews the work's leases until it
    raises) run beside it. Whichever ends first stops the other: a renewal that raised
    (``LeaseLost``, or a failure) stops the work there and is raised."""
    work_task = asyncio.ensure_future(work)
    renew_task = asyncio.create_task(renewing)
    try:
        await asyncio.wait((work_task, renew_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, renew_task):
            task.cancel()
        await asyncio.gather(work_task, renew_task, return_exceptions=True)
    if not work_task.cancelled():
        return work_task.result()
    renew_task.result()  # raises what stopped the renewals: LeaseLost, or a failure
    raise AssertionError("the renewals stop only by raising")


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
