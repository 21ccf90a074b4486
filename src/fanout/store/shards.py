"""Fan-out shards: ranges of an event's subscribers, planned once, each claimed with a
lease, checkpointed after every send, finished or given up.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

import asyncpg

from fanout.store.fragments import EVENT_STOPPED, claim_due

# Index: subscriptions_pkey, index-only scan. Skips `shard_size` subscribers from `lo`
# to find where the next shard starts; planning a topic reads its index once.
NEXT_SHARD_BOUNDARY = """
SELECT user_id FROM subscriptions
WHERE topic_id = $1 AND user_id >= $2
ORDER BY user_id
OFFSET $3 LIMIT 1
"""

# Index: users_by_app, index-only. NEXT_SHARD_BOUNDARY over every user of an app (an
# event with a tag filter and no topic).
NEXT_APP_USER_BOUNDARY = """
SELECT id FROM users
WHERE app_id = $1 AND id >= $2
ORDER BY id
OFFSET $3 LIMIT 1
"""

# Index: fanout_shards_pkey. Re-planning after a crash inserts nothing twice. A shard not
# claimed within $5 seconds (its message lost) is sent again by the reconciler. $6: the wave
# it fans out (NULL: the whole audience).
INSERT_SHARDS = """
INSERT INTO fanout_shards (event_id, shard_no, lo_user_id, hi_user_id, due_at, wave_no)
SELECT $1, shard_no, lo, hi, now() + make_interval(secs => $5), $6
FROM unnest($2::integer[], $3::bigint[], $4::bigint[]) AS s (shard_no, lo, hi)
ON CONFLICT DO NOTHING
"""

# Index: fanout_shards_pkey.
UNFINISHED_SHARDS = """
SELECT shard_no FROM fanout_shards
WHERE event_id = $1 AND status <> 'done'
ORDER BY shard_no
"""

# Index: fanout_shards_pkey. Takes the shard for its owner $5 (the claiming invocation)
# if nobody else holds a live lease on it. The owner's own live lease is taken again: its
# claim committed while the driver reported a failure (a PostgreSQL restart), and its
# retry must not wait the lease out. It is due $4 seconds after its lease ends: if its
# holder died and its message is gone too.
CLAIM_SHARD = """
UPDATE fanout_shards
SET status = 'running', lease_owner = $5, lease_until = now() + make_interval(secs => $3),
    due_at = now() + make_interval(secs => $3::float8 + $4::float8), attempts = attempts + 1
WHERE event_id = $1 AND shard_no = $2
  AND (status = 'pending'
       OR (status = 'running' AND (lease_until < now() OR lease_owner = $5)))
RETURNING lo_user_id, hi_user_id, cursor_user_id, recipients, devices, batches, held_back,
          wave_no
"""

# Index: fanout_shards_pkey. A failed invocation gives its lease up, so the retry of its
# message (or another copy) can take the shard at once rather than find it busy. Only its
# own ($5): a no-op if its claim never committed, or if another has taken the shard since.
RELEASE_SHARD = """
UPDATE fanout_shards
SET lease_until = now(), lease_owner = NULL, due_at = now() + make_interval(secs => $3),
    last_error = $4
WHERE event_id = $1 AND shard_no = $2 AND status = 'running' AND lease_owner = $5
"""

# Index: fanout_shards_pkey. A paced event's shard far enough ahead of its pace clock stops
# at its checkpoint and waits, pending, until $4 (stages/pacing.resume_at): the reconciler
# sends its task then, and it resumes from its cursor. Its resends start over: waiting for
# the clock is no failure. By the lease's owner ($3) only.
PARK_SHARD = """
UPDATE fanout_shards
SET status = 'pending', lease_until = NULL, lease_owner = NULL, due_at = $4, resends = 0
WHERE event_id = $1 AND shard_no = $2 AND status = 'running' AND lease_owner = $3
RETURNING true
"""

# Index: fanout_shards_pkey. With the seconds left on its lease, when held.
SHARD_STATUS = """
SELECT status, greatest(0, extract(epoch FROM lease_until - now()))::float8 AS lease_left
FROM fanout_shards WHERE event_id = $1 AND shard_no = $2
"""

# Indexes: delivery_batches_pkey, fanout_shards_pkey. After each SendMessageBatch, in one
# statement: the batches SQS accepted are recorded ('queued', with the range of users to
# re-read should their message be lost: one row per batch, never per device), and the
# shard checkpoints its cursor and renews its lease (a shard that checkpoints is alive).
# A batch re-packed after a crash has the same key and is not recorded twice.
# The recipients held back so far ($14, {reason: count}) are totals, like the others, so
# a shard resumed from this checkpoint counts nobody twice. The users of the batches
# ($16; empty unless a frequency cap applies to the event's category $15) are appended
# to user_sends: these pushes count toward the caps from now on (no index but the
# table's own: user_sends_by_user and user_sends_by_time are maintained). Returns why the
# shard must stop ('cancelled', 'expired') or NULL: the per-page check costs nothing.
# Only the lease's owner ($17) moves the shard on ('held'). One whose lease lapsed and was
# taken is refused: its batches are on SQS, so they are still recorded (another owner
# re-packs them with the same keys: recorded once), but its cursor, totals and pushes
# are not (the holder reads those users again and counts them itself).
# A paced event's batches ($18: each one's not_before, NULL when not paced) are not on SQS:
# they are recorded with no due_at (the pacer sends them when due: delivery_batches_paced),
# only by the lease's owner, and, if the event has stopped meanwhile, done at once, held
# back for that reason (nothing else would finish them: the cancel settled those before).
CHECKPOINT_SHARD = f"""
WITH stop AS (
    SELECT {EVENT_STOPPED}
), renewed AS (
    UPDATE fanout_shards
    SET cursor_user_id = $3, recipients = $4, devices = $5, batches = $6, held_back = $14,
        lease_until = now() + make_interval(secs => $7),
        due_at = now() + make_interval(secs => $7::float8 + $8::float8)
    WHERE event_id = $1 AND shard_no = $2 AND lease_owner = $17
    RETURNING shard_no
), recorded AS (
    INSERT INTO delivery_batches (event_id, batch_key, attempt, status, devices, shard_no,
                                  first_user_id, last_user_id, due_at, not_before, finished_at,
                                  held_back)
    SELECT $1, b.key, 0, CASE WHEN b.not_before IS NOT NULL AND stop.stopped IS NOT NULL
                              THEN 'done' ELSE 'queued' END,
           b.devices, $2, b.first_user, b.last_user,
           CASE WHEN b.not_before IS NULL THEN now() + make_interval(secs => $9) END,
           b.not_before,
           CASE WHEN b.not_before IS NOT NULL AND stop.stopped IS NOT NULL THEN now() END,
           CASE WHEN b.not_before IS NOT NULL AND stop.stopped IS NOT NULL
                THEN jsonb_build_object(stop.stopped, b.devices) ELSE '{{}}'::jsonb END
    FROM unnest($10::text[], $11::integer[], $12::bigint[], $13::bigint[], $18::timestamptz[])
         AS b (key, devices, first_user, last_user, not_before)
    CROSS JOIN stop
    WHERE b.not_before IS NULL OR EXISTS (SELECT FROM renewed)
    ON CONFLICT (event_id, batch_key) DO NOTHING
), counted AS (
    INSERT INTO user_sends (user_id, event_id, category)
    SELECT u, $1, $15::text FROM unnest($16::bigint[]) AS u
    WHERE EXISTS (SELECT FROM renewed)
)
SELECT EXISTS (SELECT FROM renewed) AS held, (SELECT stopped FROM stop) AS stopped
"""

# Index: fanout_shards_pkey. By the lease's owner ($7) only; the owner stays on the row.
FINISH_SHARD = """
UPDATE fanout_shards
SET status = 'done', finished_at = now(), lease_until = NULL, due_at = NULL,
    recipients = $3, devices = $4, batches = $5, held_back = $6
WHERE event_id = $1 AND shard_no = $2 AND lease_owner = $7
RETURNING true
"""

# Indexes: subscriptions_pkey (index-only). A shard stopped by a cancel or the event's
# expiry: the subscribers it did not read, counted (not their devices) as held back.
SUBSCRIBERS_LEFT = """
SELECT count(*) FROM subscriptions WHERE topic_id = $1 AND user_id > $2 AND user_id < $3
"""

# Index: users_by_app (index-only). SUBSCRIBERS_LEFT over every user of an app.
APP_USERS_LEFT = "SELECT count(*) FROM users WHERE app_id = $1 AND id > $2 AND id < $3"

# Index: fanout_shards_pkey. The wave a shard fans out (NULL: the whole audience); a batch
# re-read from PostgreSQL is read with its shard's filter.
SHARD_WAVE = "SELECT wave_no FROM fanout_shards WHERE event_id = $1 AND shard_no = $2"

# Index: fanout_shards_pkey. Shard numbers go on across waves.
NEXT_SHARD_NO = """
SELECT coalesce(max(shard_no), -1) + 1 FROM fanout_shards WHERE event_id = $1
"""

# Overdue work, claimed by the reconciler (fragments.claim_due). Index: fanout_shards_due.
CLAIM_DUE_SHARDS = claim_due(
    table="fanout_shards",
    key=("event_id", "shard_no"),
    event="event_id",
    returning=("event_id", "shard_no", "resends", "last_error"),
)

# Index: fanout_shards_pkey. A shard resent too often: given up, so its event can end. Its
# owner, if one still lives, is struck off: its checkpoints and finish (by owner) are refused.
GIVE_UP_SHARD = """
UPDATE fanout_shards SET status = 'failed', due_at = NULL, lease_until = NULL,
                         lease_owner = NULL, finished_at = now(), last_error = $3
WHERE event_id = $1 AND shard_no = $2 AND status <> 'done'
"""


@dataclass(frozen=True, slots=True)
class ShardClaim:
    """A shard this invocation now holds: its [lo, hi) range of users, its checkpoint
    (None: not started) and its totals so far."""

    lo_user_id: int
    hi_user_id: int
    cursor_user_id: int | None
    recipients: int
    devices: int
    batches: int
    held_back: dict[str, int]  # recipients filtered out so far, by reason
    wave_no: int | None  # the wave it fans out; None: the whole audience


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint found: ``held`` False when the lease's owner is another invocation
    now (nothing but the batches was kept); ``stopped``: 'cancelled', 'expired' or None."""

    held: bool
    stopped: str | None


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """A shard's or a batch's status, and the seconds left on its lease when it is held."""

    status: str
    lease_left: float


@dataclass(frozen=True, slots=True)
class DueShard:
    """A shard past its due_at, claimed by the reconciler (its due_at moved on)."""

    event_id: int
    shard_no: int
    resends: int
    last_error: str | None


class AcceptedBatch(Protocol):
    """A batch SQS accepted, as a checkpoint records it (``stages.batching.PackedBatch``)."""

    @property
    def key(self) -> str: ...
    @property
    def devices(self) -> int: ...
    @property
    def first_user(self) -> int: ...
    @property
    def last_user(self) -> int: ...


async def next_shard_boundary(
    conn: asyncpg.Connection, *, topic_id: int, from_user_id: int, shard_size: int
) -> int | None:
    """The user id ``shard_size`` subscribers of the topic on from ``from_user_id``: where
    the next shard starts; None when fewer are left (``NEXT_SHARD_BOUNDARY``)."""
    boundary: int | None = await conn.fetchval(
        NEXT_SHARD_BOUNDARY, topic_id, from_user_id, shard_size
    )
    return boundary


async def next_app_user_boundary(
    conn: asyncpg.Connection, *, app_id: int, from_user_id: int, shard_size: int
) -> int | None:
    """``next_shard_boundary`` over every user of the app (``NEXT_APP_USER_BOUNDARY``)."""
    boundary: int | None = await conn.fetchval(
        NEXT_APP_USER_BOUNDARY, app_id, from_user_id, shard_size
    )
    return boundary


async def insert_shards(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    bounds: Sequence[tuple[int, int]],
    overdue_after: float,
    first_shard: int = 0,
    wave_no: int | None = None,
) -> None:
    """Write the event's shards (of one wave, with ``wave_no``), numbered from
    ``first_shard``, one per [lo, hi) range of user ids, each due ``overdue_after`` seconds
    on unless claimed; none twice (``INSERT_SHARDS``)."""
    await conn.execute(
        INSERT_SHARDS,
        event_id,
        list(range(first_shard, first_shard + len(bounds))),
        [lo for lo, _ in bounds],
        [hi for _, hi in bounds],
        overdue_after,
        wave_no,
    )


async def insert_user_shards(
    conn: asyncpg.Connection, *, event_users: Sequence[tuple[int, int]], overdue_after: float
) -> None:
    """``insert_shards`` for 1:1 events planned for the first time: each (event, user) its
    shard 0 over [user, user + 1), in one pipelined round trip (``INSERT_SHARDS``)."""
    await conn.executemany(
        INSERT_SHARDS,
        [
            (event_id, [0], [user], [user + 1], overdue_after, None)
            for event_id, user in event_users
        ],
    )


async def next_shard_no(conn: asyncpg.Connection, *, event_id: int) -> int:
    """The number the event's next shard takes: they go on across waves (``NEXT_SHARD_NO``)."""
    number: int = await conn.fetchval(NEXT_SHARD_NO, event_id)
    return number


async def shard_wave(conn: asyncpg.Connection, *, event_id: int, shard: int) -> int | None:
    """The wave the shard fans out; None: the whole audience, or no such shard
    (``SHARD_WAVE``)."""
    wave: int | None = await conn.fetchval(SHARD_WAVE, event_id, shard)
    return wave


async def subscribers_left(
    conn: asyncpg.Connection, *, topic_id: int, after_user_id: int, before_user_id: int
) -> int:
    """How many of the topic's subscribers lie between the two user ids, both excluded: what
    a stopped shard did not read (``SUBSCRIBERS_LEFT``)."""
    count: int = await conn.fetchval(SUBSCRIBERS_LEFT, topic_id, after_user_id, before_user_id)
    return count


async def app_users_left(
    conn: asyncpg.Connection, *, app_id: int, after_user_id: int, before_user_id: int
) -> int:
    """``subscribers_left`` over every user of the app (``APP_USERS_LEFT``)."""
    count: int = await conn.fetchval(APP_USERS_LEFT, app_id, after_user_id, before_user_id)
    return count


async def unfinished_shards(conn: asyncpg.Connection, *, event_id: int) -> list[int]:
    """The numbers of the event's shards not done, in order (``UNFINISHED_SHARDS``)."""
    return [row["shard_no"] for row in await conn.fetch(UNFINISHED_SHARDS, event_id)]


async def claim_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> ShardClaim | None:
    """Take the shard for ``owner`` for ``lease_seconds`` unless it is done or another
    owner holds a live lease on it (then None); ``owner``'s own lease is taken again. It
    is due ``overdue_after`` seconds after the lease ends (``CLAIM_SHARD``)."""
    row = await conn.fetchrow(CLAIM_SHARD, event_id, shard, lease_seconds, overdue_after, owner)
    return None if row is None else ShardClaim(**row)


async def claim_first_shards(
    conn: asyncpg.Connection,
    *,
    event_ids: Sequence[int],
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
) -> int:
    """``claim_shard`` of shard 0 of each of ``event_ids`` in one pipelined round trip; how
    many were claimed (``CLAIM_SHARD``)."""
    rows = await conn.fetchmany(
        CLAIM_SHARD, [(event_id, 0, lease_seconds, overdue_after, owner) for event_id in event_ids]
    )
    return len(rows)


async def park_shard(
    conn: asyncpg.Connection, *, event_id: int, shard: int, owner: UUID, resume_at: datetime
) -> bool:
    """Give ``owner``'s running shard back, pending until ``resume_at`` (a paced event's
    shard ahead of its clock); False if ``owner`` no longer holds it (``PARK_SHARD``)."""
    parked: bool | None = await conn.fetchval(PARK_SHARD, event_id, shard, owner, resume_at)
    return bool(parked)


async def shard_status(
    conn: asyncpg.Connection, *, event_id: int, shard: int
) -> LeaseStatus | None:
    """The shard's status and lease, or None if there is no such shard (``SHARD_STATUS``)."""
    row = await conn.fetchrow(SHARD_STATUS, event_id, shard)
    return None if row is None else LeaseStatus(**row)


async def release_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    owner: UUID,
    overdue_after: float,
    reason: str,
) -> None:
    """Give ``owner``'s lease on a running shard up after a failure, with the reason, so
    another copy of its message can take it at once; due ``overdue_after`` seconds on. A
    no-op when ``owner`` does not hold it (``RELEASE_SHARD``)."""
    await conn.execute(RELEASE_SHARD, event_id, shard, overdue_after, reason, owner)


async def checkpoint_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    cursor: int,
    recipients: int,
    devices: int,
    batches: int,
    held_back: dict[str, int],
    accepted: Sequence[AcceptedBatch],
    category: str | None,
    counted_users: Sequence[int],
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
    not_before: Sequence[datetime | None] | None = None,
) -> Checkpoint:
    """In one statement, record the batches SQS ``accepted`` since the last checkpoint
    (each due ``overdue_after`` seconds on) and, if ``owner`` holds the shard's lease, the
    pushes of ``category`` to ``counted_users`` that the frequency caps count, and move the
    shard's cursor and totals (``held_back``: recipients filtered out, by reason) on and
    renew its lease for ``lease_seconds`` (due ``overdue_after`` after it ends). Says
    whether ``owner`` held it, and why the shard must stop, if it must. A paced event's
    batches come with their ``not_before`` and are recorded unsent (``CHECKPOINT_SHARD``)."""
    row = await conn.fetchrow(
        CHECKPOINT_SHARD,
        *checkpoint_arguments(
            event_id=event_id,
            shard=shard,
            cursor=cursor,
            recipients=recipients,
            devices=devices,
            batches=batches,
            held_back=held_back,
            accepted=accepted,
            category=category,
            counted_users=counted_users,
            owner=owner,
            lease_seconds=lease_seconds,
            overdue_after=overdue_after,
            not_before=not_before,
        ),
    )
    return Checkpoint(**row)


def checkpoint_arguments(
    *,
    event_id: int,
    shard: int,
    cursor: int,
    recipients: int,
    devices: int,
    batches: int,
    held_back: dict[str, int],
    accepted: Sequence[AcceptedBatch],
    category: str | None,
    counted_users: Sequence[int],
    owner: UUID,
    lease_seconds: float,
    overdue_after: float,
    not_before: Sequence[datetime | None] | None = None,
) -> tuple[object, ...]:
    """``CHECKPOINT_SHARD``'s parameters (``checkpoint_shard`` says what they mean)."""
    return (
        event_id,
        shard,
        cursor,
        recipients,
        devices,
        batches,
        lease_seconds,
        overdue_after,
        overdue_after,
        [b.key for b in accepted],
        [b.devices for b in accepted],
        [b.first_user for b in accepted],
        [b.last_user for b in accepted],
        held_back,
        category,
        list(counted_users),
        owner,
        list(not_before) if not_before is not None else [None] * len(accepted),
    )


async def checkpoint_shards(
    conn: asyncpg.Connection, *, each: Sequence[tuple[object, ...]]
) -> list[Checkpoint]:
    """``checkpoint_shard`` for each ``checkpoint_arguments`` tuple, in one pipelined round
    trip (the statement answers one row each, in order)."""
    return [Checkpoint(**row) for row in await conn.fetchmany(CHECKPOINT_SHARD, each)]


async def finish_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    recipients: int,
    devices: int,
    batches: int,
    held_back: dict[str, int],
    owner: UUID,
) -> bool:
    """Mark the shard done with its final totals if ``owner`` holds its lease; False (and
    nothing changed) if another does (``FINISH_SHARD``)."""
    done: bool | None = await conn.fetchval(
        FINISH_SHARD, event_id, shard, recipients, devices, batches, held_back, owner
    )
    return bool(done)


async def finish_shards(
    conn: asyncpg.Connection,
    *,
    each: Sequence[tuple[int, int, int, int, int, dict[str, int]]],
    owner: UUID,
) -> int:
    """``finish_shard`` for each (event, shard, recipients, devices, batches, held back), in
    one pipelined round trip; how many ``owner`` finished (``FINISH_SHARD``)."""
    rows = await conn.fetchmany(FINISH_SHARD, [(*args, owner) for args in each])
    return len(rows)


async def give_up_shard(
    conn: asyncpg.Connection, *, event_id: int, shard: int, reason: str
) -> None:
    """Mark a shard resent too often failed, with the reason, so its event can end
    (``GIVE_UP_SHARD``)."""
    await conn.execute(GIVE_UP_SHARD, event_id, shard, reason)


async def claim_due_shards(
    conn: asyncpg.Connection,
    *,
    limit: int,
    overdue_after: float,
    look_ahead: float = 0.0,
    event_id: int | None = None,
) -> list[DueShard]:
    """Up to ``limit`` overdue shards (of one event, with ``event_id``), each due again
    after ``overdue_after`` seconds doubled per resend; ``look_ahead`` seconds count as
    passed (``CLAIM_DUE_SHARDS``)."""
    rows = await conn.fetch(CLAIM_DUE_SHARDS, limit, overdue_after, look_ahead, event_id)
    return [DueShard(**row) for row in rows]
