"""Delivery batches: recorded by the fan-out as SQS accepts them, claimed with a lease by
the delivery, finished with their outcome (or given up), one statement per batch.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from fanout.store import queries
from fanout.store.shards import LeaseStatus


@dataclass(frozen=True, slots=True)
class BatchClaim:
    """A batch this invocation now holds; ``stopped`` says its event was cancelled or has
    expired ('cancelled', 'expired'): then nothing is to be sent."""

    stopped: str | None


@dataclass(frozen=True, slots=True)
class DueBatch:
    """A batch past its due_at, claimed by the reconciler (its due_at moved on), with what
    re-reads its devices: a fan-out batch's range of users, or a retry batch's device ids."""

    event_id: int
    batch_key: str
    attempt: int
    devices: int
    first_user_id: int | None
    last_user_id: int | None
    device_ids: list[int] | None
    resends: int
    last_error: str | None


async def claim_batch(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    attempt: int,
    devices: int,
    lease_seconds: float,
    overdue_after: float,
) -> BatchClaim | None:
    """Take the batch for ``lease_seconds`` (due ``overdue_after`` seconds after the lease
    ends); None when it is done or someone holds a live lease on it. A batch not
    recorded yet is inserted. Raises ``asyncpg.ForeignKeyViolationError`` for an unknown
    event (``CLAIM_BATCH``)."""
    row = await conn.fetchrow(
        queries.CLAIM_BATCH, event_id, batch_key, attempt, devices, lease_seconds, overdue_after
    )
    return None if row is None else BatchClaim(**row)


async def finish_batch_held(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str, reason: str
) -> int:
    """Mark a claimed batch done without sending it, its devices held back for ``reason``
    (the event was cancelled or expired); how many devices (``FINISH_BATCH_HELD``)."""
    devices: int = await conn.fetchval(queries.FINISH_BATCH_HELD, event_id, batch_key, reason)
    return devices


async def batch_status(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str
) -> LeaseStatus | None:
    """The batch's status and lease, or None if there is no such batch (``BATCH_STATUS``)."""
    row = await conn.fetchrow(queries.BATCH_STATUS, event_id, batch_key)
    return None if row is None else LeaseStatus(**row)


async def renew_batch_lease(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    lease_seconds: float,
    overdue_after: float,
) -> None:
    """Extend a running batch's lease by ``lease_seconds`` from now, due ``overdue_after``
    seconds after it ends (``RENEW_BATCH_LEASE``)."""
    await conn.execute(queries.RENEW_BATCH_LEASE, event_id, batch_key, lease_seconds, overdue_after)


async def release_batch(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str, overdue_after: float, reason: str
) -> None:
    """Give a running batch back (queued, with the reason) after a failure that sent
    nothing; due ``overdue_after`` seconds on (``RELEASE_BATCH``)."""
    await conn.execute(queries.RELEASE_BATCH, event_id, batch_key, overdue_after, reason)


async def record_retry_batch(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    attempt: int,
    device_ids: Sequence[int],
    delay_seconds: float,
    overdue_after: float,
) -> None:
    """Record a retry batch by its device ids before its message is sent; it is due once
    ``delay_seconds`` and ``overdue_after`` seconds have passed (``RECORD_RETRY_BATCH``)."""
    await conn.execute(
        queries.RECORD_RETRY_BATCH,
        event_id,
        batch_key,
        attempt,
        device_ids,
        delay_seconds,
        overdue_after,
    )


async def record_held_batch(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    attempt: int,
    device_ids: Sequence[int],
    delay_seconds: float,
    overdue_after: float,
    reason: str,
) -> None:
    """Record a batch of devices an open breaker held back, by their ids and the config
    error that held them; due once ``delay_seconds`` and ``overdue_after`` seconds have
    passed (``RECORD_HELD_BATCH``)."""
    await conn.execute(
        queries.RECORD_HELD_BATCH,
        event_id,
        batch_key,
        attempt,
        device_ids,
        delay_seconds,
        overdue_after,
        reason,
    )


async def finish_batch(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    sent: int,
    failed: int,
    invalid: int,
    skipped: int,
    retried: int,
    failure_reasons: dict[str, int] | None,
) -> None:
    """Mark the batch done with its outcome: devices per kind, and the failed ones by
    reason (``FINISH_BATCH``)."""
    await conn.execute(
        queries.FINISH_BATCH,
        event_id,
        batch_key,
        sent,
        failed,
        invalid,
        skipped,
        retried,
        failure_reasons,
    )


async def give_up_batch(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str, reason: str
) -> None:
    """Mark a batch resent too often done, all its devices failed for ``reason``
    (``GIVE_UP_BATCH``)."""
    await conn.execute(queries.GIVE_UP_BATCH, event_id, batch_key, reason)


async def claim_due_batches(
    conn: asyncpg.Connection,
    *,
    limit: int,
    overdue_after: float,
    look_ahead: float = 0.0,
    event_id: int | None = None,
) -> list[DueBatch]:
    """Up to ``limit`` overdue batches (of one event, with ``event_id``), each due again
    after ``overdue_after`` seconds doubled per resend; ``look_ahead`` seconds count as
    passed (``CLAIM_DUE_BATCHES``)."""
    rows = await conn.fetch(queries.CLAIM_DUE_BATCHES, limit, overdue_after, look_ahead, event_id)
    return [DueBatch(**row) for row in rows]
