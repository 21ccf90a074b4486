"""Delivery batches: recorded by the fan-out as SQS accepts them, claimed with a lease by
the delivery, finished with their outcome (or given up), one statement per batch, or one
for all the batches of a bundle (``claim_batches``, ``finish_batches``: issue #26).

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from fanout.store.fragments import EVENT_STOPPED, STOPPED, claim_due
from fanout.store.shards import LeaseStatus

# A claim's conflict: a batch queued, or running on a lapsed lease or its own owner's
# (a retried claim that committed unanswered), is taken; one running under another
# owner, or done, is not. CLAIM_BATCH and CLAIM_BATCHES share it.
_TAKE_IF_FREE = """ON CONFLICT (event_id, batch_key) DO UPDATE
SET status = 'running', lease_until = EXCLUDED.lease_until, due_at = EXCLUDED.due_at,
    lease_owner = EXCLUDED.lease_owner, started_at = now(),
    devices = CASE WHEN EXCLUDED.devices > 0 THEN EXCLUDED.devices
                   ELSE delivery_batches.devices END
WHERE delivery_batches.status = 'queued'
   OR (delivery_batches.status = 'running'
       AND (delivery_batches.lease_until < now()
            OR delivery_batches.lease_owner = EXCLUDED.lease_owner))
"""

# Index: delivery_batches_pkey. Returns a row when this invocation ($7, the lease's owner)
# owns the batch; nothing when it is done or another invocation holds a live lease on it.
# Its own live lease is taken again: its claim committed while the driver reported a
# failure (a PostgreSQL restart), and its retry must not wait the lease out. (A batch the
# fan-out recorded is 'queued'; one sent before that bookkeeping existed is inserted here.)
# It is due $6 seconds after its lease ends. The row says whether the event was cancelled
# or has expired: the check costs no round trip of its own. A message re-read from
# PostgreSQL carries no devices ($4 = 0): the count recorded stays.
CLAIM_BATCH = f"""
INSERT INTO delivery_batches (event_id, batch_key, attempt, devices, status, lease_until, due_at,
                              lease_owner)
VALUES ($1, $2, $3, $4, 'running', now() + make_interval(secs => $5),
        now() + make_interval(secs => $5::float8 + $6::float8), $7)
{_TAKE_IF_FREE}
RETURNING {EVENT_STOPPED}, (SELECT e.app_id FROM events AS e WHERE e.id = $1) AS app_id
"""

# Index: delivery_batches_pkey. A claimed batch whose event was cancelled or expired while
# it waited: done, sending nothing, its devices held back for that reason ($3). By the
# lease's owner ($4) only.
FINISH_BATCH_HELD = """
UPDATE delivery_batches
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    held_back = jsonb_build_object($3::text, devices)
WHERE event_id = $1 AND batch_key = $2 AND lease_owner = $4
RETURNING devices
"""

# Index: delivery_batches_pkey. While a batch is being sent: it is alive, keep it ours.
# Refused (no row) when its owner ($5) no longer holds it: the lease lapsed and another
# invocation took the batch.
RENEW_BATCH_LEASE = """
UPDATE delivery_batches SET lease_until = now() + make_interval(secs => $3),
                            due_at = now() + make_interval(secs => $3::float8 + $4::float8)
WHERE event_id = $1 AND batch_key = $2 AND status = 'running' AND lease_owner = $5
RETURNING true
"""

# Index: delivery_batches_pkey. A failed invocation that sent nothing gives its lease up:
# only its own ($5), so this is a no-op if its claim never committed.
RELEASE_BATCH = """
UPDATE delivery_batches
SET status = 'queued', lease_until = NULL, lease_owner = NULL,
    due_at = now() + make_interval(secs => $3), last_error = $4
WHERE event_id = $1 AND batch_key = $2 AND status = 'running' AND lease_owner = $5
"""

# Index: delivery_batches_pkey. A retry batch is recorded with its device ids (only the
# devices that may still succeed: usually few) in the transaction that finishes its parent,
# before its message is sent; due once its delay and $6 seconds have passed.
RECORD_RETRY_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, device_ids, due_at)
VALUES ($1, $2, $3, 'queued', cardinality($4::bigint[]), $4,
        now() + make_interval(secs => $5::float8 + $6::float8))
ON CONFLICT (event_id, batch_key) DO NOTHING
"""

# Index: delivery_batches_pkey. Devices an open breaker held back: recorded like a retry
# batch (they keep their attempt), with the config error that held them ($7).
RECORD_HELD_BATCH = """
INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, device_ids, due_at,
                              held_reason)
VALUES ($1, $2, $3, 'queued', cardinality($4::bigint[]), $4,
        now() + make_interval(secs => $5::float8 + $6::float8), $7)
ON CONFLICT (event_id, batch_key) DO NOTHING
"""

# Index: delivery_batches_pkey.
BATCH_STATUS = """
SELECT status, greatest(0, extract(epoch FROM lease_until - now()))::float8 AS lease_left
FROM delivery_batches WHERE event_id = $1 AND batch_key = $2
"""

# Index: delivery_batches_pkey. Failure reasons ({reason: devices}) are summed on read. By
# the lease's owner ($9) only; the owner stays on the row, so a finish retried after its
# commit went unanswered finds it again.
FINISH_BATCH = """
UPDATE delivery_batches
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    sent = $3, failed = $4, invalid = $5, skipped = $6, retried = $7, failure_reasons = $8
WHERE event_id = $1 AND batch_key = $2 AND lease_owner = $9
RETURNING true
"""

# Overdue work, claimed by the reconciler (fragments.claim_due). Index: delivery_batches_due.
CLAIM_DUE_BATCHES = claim_due(
    table="delivery_batches",
    key=("event_id", "batch_key"),
    event="event_id",
    returning=(
        "event_id",
        "batch_key",
        "attempt",
        "devices",
        "first_user_id",
        "last_user_id",
        "device_ids",
        "resends",
        "last_error",
    ),
)

# Index: delivery_batches_paced. A paced event's batches whose not_before has passed ($3
# seconds of look-ahead count as passed), the earliest first: each is given a due_at
# ($2 seconds on) as the pacer takes it, so from here it is an ordinary queued batch and,
# should its message be lost, the reconciler sends it again. SKIP LOCKED: the pacers of
# many workers share the batches rather than send one twice.
RELEASE_PACED_BATCHES = """
UPDATE delivery_batches AS u
SET due_at = now() + make_interval(secs => $2)
FROM (
    SELECT event_id, batch_key FROM delivery_batches
    WHERE status = 'queued' AND due_at IS NULL AND not_before IS NOT NULL
      AND not_before <= now() + make_interval(secs => $3)
    ORDER BY not_before LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE u.event_id = due.event_id AND u.batch_key = due.batch_key
RETURNING u.event_id, u.batch_key, u.attempt, u.devices, u.first_user_id, u.last_user_id,
          u.device_ids, u.resends, u.last_error
"""

# Index: delivery_batches_pkey. A batch resent too often: its devices count failed. Its
# owner, if one still lives, is struck off: its finish (by owner) is refused, so a slow
# sender cannot write its counts over the given-up ones after the event has ended.
GIVE_UP_BATCH = """
UPDATE delivery_batches
SET status = 'done', due_at = NULL, lease_until = NULL, lease_owner = NULL,
    finished_at = now(), failed = devices, failure_reasons = jsonb_build_object($3::text, devices)
WHERE event_id = $1 AND batch_key = $2 AND status <> 'done'
"""


# The statements about many batches at once (a bundle's: stages/bundle_delivery.py), each
# the one-batch statement above run over arrays (unnest), so a bundle of a thousand events'
# batches costs one round trip, not one per batch (issue #26: ~6 statements a batch made
# the delivery stage what set a coalesced 1:1 send's latency). The rows are locked in key
# order (the callers sort the keys; MINE orders its lock): two copies of one bundle, or a
# claim beside a finish, never deadlock on a pair of rows taken in opposite orders.

# Indexes: delivery_batches_pkey, events_pkey (per batch: its event exists, has stopped,
# its app). CLAIM_BATCH for each batch of $1..$4 (event, key, attempt, devices), as owner
# $7: a row per batch, ``claimed`` when this owner holds it now (with ``stopped`` and
# ``app_id`` as CLAIM_BATCH returns them), else its ``status`` and ``lease_left`` as
# BATCH_STATUS reads them (done, or held by another owner; NULL status: its event is gone,
# or a concurrent claim inserted it after this statement's snapshot: held elsewhere).
CLAIM_BATCHES = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[])
        WITH ORDINALITY AS w (event_id, batch_key, attempt, devices, n)
), claimed AS (
    INSERT INTO delivery_batches (event_id, batch_key, attempt, devices, status, lease_until,
                                  due_at, lease_owner)
    SELECT w.event_id, w.batch_key, w.attempt, w.devices, 'running',
           now() + make_interval(secs => $5),
           now() + make_interval(secs => $5::float8 + $6::float8), $7
    FROM wanted AS w
    WHERE EXISTS (SELECT 1 FROM events AS e WHERE e.id = w.event_id)
    ORDER BY w.n
    {_TAKE_IF_FREE}
    RETURNING event_id, batch_key
)
SELECT w.event_id, w.batch_key, c.event_id IS NOT NULL AS claimed,
       CASE WHEN c.event_id IS NOT NULL THEN {STOPPED.format(e="e")} END AS stopped,
       e.app_id, b.status,
       greatest(0, extract(epoch FROM b.lease_until - now()))::float8 AS lease_left,
       e.id IS NOT NULL AS event_known
FROM wanted AS w
LEFT JOIN claimed AS c ON c.event_id = w.event_id AND c.batch_key = w.batch_key
LEFT JOIN events AS e ON e.id = w.event_id
LEFT JOIN delivery_batches AS b
  ON c.event_id IS NULL AND b.event_id = w.event_id AND b.batch_key = w.batch_key
ORDER BY w.n
"""

# The rows of batches $1, $2 (events, keys) that owner $3 holds, locked in key order.
_MINE = """mine AS (
    SELECT b.event_id, b.batch_key FROM delivery_batches AS b
    JOIN unnest($1::bigint[], $2::text[]) AS k (event_id, batch_key)
      ON b.event_id = k.event_id AND b.batch_key = k.batch_key
    WHERE b.lease_owner = $3
    ORDER BY b.event_id, b.batch_key
    FOR UPDATE OF b
)"""

# Index: delivery_batches_pkey. RENEW_BATCH_LEASE for each of the batches $1, $2 that owner
# $3 holds and is sending; returns those renewed (a batch missing was taken by another).
RENEW_BATCH_LEASES = f"""
WITH {_MINE}
UPDATE delivery_batches AS b
SET lease_until = now() + make_interval(secs => $4),
    due_at = now() + make_interval(secs => $4::float8 + $5::float8)
FROM mine
WHERE b.event_id = mine.event_id AND b.batch_key = mine.batch_key AND b.status = 'running'
RETURNING b.event_id, b.batch_key
"""

# Index: delivery_batches_pkey. RELEASE_BATCH for each of the batches $1, $2 owner $3 holds.
RELEASE_BATCHES = f"""
WITH {_MINE}
UPDATE delivery_batches AS b
SET status = 'queued', lease_until = NULL, lease_owner = NULL,
    due_at = now() + make_interval(secs => $4), last_error = $5
FROM mine
WHERE b.event_id = mine.event_id AND b.batch_key = mine.batch_key AND b.status = 'running'
"""

# Indexes: delivery_batches_pkey; delivery_failures_by_device, delivery_failures_at.
# FINISH_BATCH and RECORD_BATCH_DETAIL for each of the batches $1, $2 that owner $3 holds:
# its counts ($4..$8), failure reasons ($9) and outcomes per platform ($10), and a row per
# device it did not send to ($11..$16: event, key, device, platform, outcome, reason), written
# only for a batch finished here. Returns the batches finished (one missing: another owner
# took it; it records its own outcome).
FINISH_BATCHES = f"""
WITH {_MINE}, outcome AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $4::int[], $5::int[], $6::int[],
                         $7::int[], $8::int[], $9::jsonb[], $10::jsonb[])
        AS o (event_id, batch_key, sent, failed, invalid, skipped, retried, failure_reasons,
              outcomes)
), finished AS (
    UPDATE delivery_batches AS b
    SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
        sent = o.sent, failed = o.failed, invalid = o.invalid, skipped = o.skipped,
        retried = o.retried, failure_reasons = o.failure_reasons, outcomes = o.outcomes
    FROM mine JOIN outcome AS o USING (event_id, batch_key)
    WHERE b.event_id = mine.event_id AND b.batch_key = mine.batch_key
    RETURNING b.event_id, b.batch_key
), failures AS (
    INSERT INTO delivery_failures (event_id, batch_key, device_id, platform, outcome, reason)
    SELECT f.event_id, f.batch_key, f.device_id, f.platform, f.outcome, f.reason
    FROM unnest($11::bigint[], $12::text[], $13::bigint[], $14::text[], $15::text[],
                $16::text[]) AS f (event_id, batch_key, device_id, platform, outcome, reason)
    JOIN finished AS d ON d.event_id = f.event_id AND d.batch_key = f.batch_key
)
SELECT event_id, batch_key FROM finished
"""


@dataclass(frozen=True, slots=True)
class BatchClaim:
    """A batch this invocation now holds; ``stopped`` says its event was cancelled, has
    expired, or (a Live Activity update) was superseded ('cancelled', 'expired',
    'superseded'): then nothing is to be sent."""

    stopped: str | None
    app_id: int  # the event's app: whose credentials the batch is sent with


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
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> BatchClaim | None:
    """Take the batch for ``owner`` for ``lease_seconds`` (due ``overdue_after`` seconds
    after the lease ends); None when it is done or another owner holds a live lease on it
    (``owner``'s own is taken again). A batch not recorded yet is inserted. Raises
    ``asyncpg.ForeignKeyViolationError`` for an unknown event (``CLAIM_BATCH``)."""
    row = await conn.fetchrow(
        CLAIM_BATCH, event_id, batch_key, attempt, devices, lease_seconds, overdue_after, owner
    )
    return None if row is None else BatchClaim(**row)


async def finish_batch_held(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str, owner: UUID, reason: str
) -> int | None:
    """Mark a batch ``owner`` holds done without sending it, its devices held back for
    ``reason`` (the event was cancelled or expired); how many devices, or None if another
    owner holds it (``FINISH_BATCH_HELD``)."""
    devices: int | None = await conn.fetchval(FINISH_BATCH_HELD, event_id, batch_key, reason, owner)
    return devices


async def batch_status(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str
) -> LeaseStatus | None:
    """The batch's status and lease, or None if there is no such batch (``BATCH_STATUS``)."""
    row = await conn.fetchrow(BATCH_STATUS, event_id, batch_key)
    return None if row is None else LeaseStatus(**row)


async def renew_batch_lease(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> bool:
    """Extend ``owner``'s lease on a running batch by ``lease_seconds`` from now, due
    ``overdue_after`` seconds after it ends; False (refused) if another owner holds it
    (``RENEW_BATCH_LEASE``)."""
    renewed: bool | None = await conn.fetchval(
        RENEW_BATCH_LEASE, event_id, batch_key, lease_seconds, overdue_after, owner
    )
    return bool(renewed)


async def release_batch(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    owner: UUID,
    overdue_after: float,
    reason: str,
) -> None:
    """Give a running batch ``owner`` holds back (queued, with the reason) after a failure;
    due ``overdue_after`` seconds on. A no-op when ``owner`` does not hold it
    (``RELEASE_BATCH``)."""
    await conn.execute(RELEASE_BATCH, event_id, batch_key, overdue_after, reason, owner)


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
        RECORD_RETRY_BATCH,
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
        RECORD_HELD_BATCH,
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
    owner: UUID,
) -> bool:
    """Mark the batch done with its outcome (devices per kind, and the failed ones by
    reason) if ``owner`` holds its lease; False (and nothing changed) if another does
    (``FINISH_BATCH``)."""
    done: bool | None = await conn.fetchval(
        FINISH_BATCH,
        event_id,
        batch_key,
        sent,
        failed,
        invalid,
        skipped,
        retried,
        failure_reasons,
        owner,
    )
    return bool(done)


async def give_up_batch(
    conn: asyncpg.Connection, *, event_id: int, batch_key: str, reason: str
) -> bool:
    """Mark a batch resent too often done, all its devices failed for ``reason``; False
    if it was done already (``GIVE_UP_BATCH``)."""
    status: str = await conn.execute(GIVE_UP_BATCH, event_id, batch_key, reason)
    return status != "UPDATE 0"


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
    rows = await conn.fetch(CLAIM_DUE_BATCHES, limit, overdue_after, look_ahead, event_id)
    return [DueBatch(**row) for row in rows]


async def release_paced_batches(
    conn: asyncpg.Connection, *, limit: int, overdue_after: float, look_ahead: float = 0.0
) -> list[DueBatch]:
    """Up to ``limit`` paced batches whose ``not_before`` has passed (``look_ahead`` seconds
    count as passed), each now due ``overdue_after`` seconds on (``RELEASE_PACED_BATCHES``)."""
    rows = await conn.fetch(RELEASE_PACED_BATCHES, limit, overdue_after, look_ahead)
    return [DueBatch(**row) for row in rows]


BatchId = tuple[int, str]  # (event id, batch key)


@dataclass(frozen=True, slots=True)
class BundleClaim:
    """One batch of a ``claim_batches``: ``claimed`` by this owner now (``stopped`` and
    ``app_id`` as in ``BatchClaim``), or not, with its ``status`` ('done', 'running' held
    by another owner with ``lease_left`` seconds; None: a concurrent claim's, or its event
    is gone: ``event_known``)."""

    event_id: int
    batch_key: str
    claimed: bool
    stopped: str | None
    app_id: int | None
    status: str | None
    lease_left: float | None
    event_known: bool


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What ``finish_batches`` records of one batch: FINISH_BATCH's counts and the
    delivery_failures rows of RECORD_BATCH_DETAIL (its device ids, platforms, kinds,
    reasons, as columns)."""

    event_id: int
    batch_key: str
    sent: int
    failed: int
    invalid: int
    skipped: int
    retried: int
    failure_reasons: dict[str, int] | None
    by_platform: dict[str, dict[str, int]]
    device_ids: Sequence[int] = ()
    platforms: Sequence[str] = ()
    kinds: Sequence[str] = ()
    reasons: Sequence[str | None] = ()


async def claim_batches(
    conn: asyncpg.Connection,
    *,
    batches: Sequence[tuple[int, str, int, int]],
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> list[BundleClaim]:
    """``claim_batch`` for each (event id, key, attempt, devices) of ``batches`` in one
    statement, in their order (sorted by the caller: the rows are locked in it); a batch
    of an unknown event is not inserted (``CLAIM_BATCHES``)."""
    rows = await conn.fetch(
        CLAIM_BATCHES,
        [b[0] for b in batches],
        [b[1] for b in batches],
        [b[2] for b in batches],
        [b[3] for b in batches],
        lease_seconds,
        overdue_after,
        owner,
    )
    return [BundleClaim(**row) for row in rows]


async def renew_batch_leases(
    conn: asyncpg.Connection,
    *,
    batches: Sequence[BatchId],
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> set[BatchId]:
    """``renew_batch_lease`` for each of ``batches`` in one statement; those renewed
    (``RENEW_BATCH_LEASES``)."""
    rows = await conn.fetch(
        RENEW_BATCH_LEASES,
        [b[0] for b in batches],
        [b[1] for b in batches],
        owner,
        lease_seconds,
        overdue_after,
    )
    return {(row["event_id"], row["batch_key"]) for row in rows}


async def release_batches(
    conn: asyncpg.Connection,
    *,
    batches: Sequence[BatchId],
    owner: UUID,
    overdue_after: float,
    reason: str,
) -> None:
    """``release_batch`` for each of ``batches`` in one statement (``RELEASE_BATCHES``)."""
    await conn.execute(
        RELEASE_BATCHES,
        [b[0] for b in batches],
        [b[1] for b in batches],
        owner,
        overdue_after,
        reason,
    )


async def finish_batches(
    conn: asyncpg.Connection, *, outcomes: Sequence[BatchOutcome], owner: UUID
) -> set[BatchId]:
    """``finish_batch`` and ``console.record_batch_detail`` for every batch of ``outcomes``
    in one statement; those finished (the others are held by another owner, which
    records them) (``FINISH_BATCHES``)."""
    failures: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for o in outcomes:
        for row in zip(o.device_ids, o.platforms, o.kinds, o.reasons, strict=True):
            for column, value in zip(failures, (o.event_id, o.batch_key, *row), strict=True):
                column.append(value)
    rows = await conn.fetch(
        FINISH_BATCHES,
        [o.event_id for o in outcomes],
        [o.batch_key for o in outcomes],
        owner,
        [o.sent for o in outcomes],
        [o.failed for o in outcomes],
        [o.invalid for o in outcomes],
        [o.skipped for o in outcomes],
        [o.retried for o in outcomes],
        [o.failure_reasons for o in outcomes],
        [o.by_platform for o in outcomes],
        *failures,
    )
    return {(row["event_id"], row["batch_key"]) for row in rows}
