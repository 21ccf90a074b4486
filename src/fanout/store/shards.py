"""Fan-out shards: ranges of an event's subscribers, planned once, each claimed with a
lease, checkpointed after every send, finished or given up.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from fanout.store import queries


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
        queries.NEXT_SHARD_BOUNDARY, topic_id, from_user_id, shard_size
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
        queries.INSERT_SHARDS,
        event_id,
        list(range(first_shard, first_shard + len(bounds))),
        [lo for lo, _ in bounds],
        [hi for _, hi in bounds],
        overdue_after,
        wave_no,
    )


async def next_shard_no(conn: asyncpg.Connection, *, event_id: int) -> int:
    """The number the event's next shard takes: they go on across waves (``NEXT_SHARD_NO``)."""
    number: int = await conn.fetchval(queries.NEXT_SHARD_NO, event_id)
    return number


async def shard_wave(conn: asyncpg.Connection, *, event_id: int, shard: int) -> int | None:
    """The wave the shard fans out; None: the whole audience, or no such shard
    (``SHARD_WAVE``)."""
    wave: int | None = await conn.fetchval(queries.SHARD_WAVE, event_id, shard)
    return wave


async def subscribers_left(
    conn: asyncpg.Connection, *, topic_id: int, after_user_id: int, before_user_id: int
) -> int:
    """How many of the topic's subscribers lie between the two user ids, both excluded: what
    a stopped shard did not read (``SUBSCRIBERS_LEFT``)."""
    count: int = await conn.fetchval(
        queries.SUBSCRIBERS_LEFT, topic_id, after_user_id, before_user_id
    )
    return count


async def unfinished_shards(conn: asyncpg.Connection, *, event_id: int) -> list[int]:
    """The numbers of the event's shards not done, in order (``UNFINISHED_SHARDS``)."""
    return [row["shard_no"] for row in await conn.fetch(queries.UNFINISHED_SHARDS, event_id)]


async def claim_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    lease_seconds: float,
    overdue_after: float,
) -> ShardClaim | None:
    """Take the shard for ``lease_seconds`` unless it is done or someone holds a live
    lease on it (then None); it is due ``overdue_after`` seconds after the lease ends
    (``CLAIM_SHARD``)."""
    row = await conn.fetchrow(queries.CLAIM_SHARD, event_id, shard, lease_seconds, overdue_after)
    return None if row is None else ShardClaim(**row)


async def shard_status(
    conn: asyncpg.Connection, *, event_id: int, shard: int
) -> LeaseStatus | None:
    """The shard's status and lease, or None if there is no such shard (``SHARD_STATUS``)."""
    row = await conn.fetchrow(queries.SHARD_STATUS, event_id, shard)
    return None if row is None else LeaseStatus(**row)


async def release_shard(
    conn: asyncpg.Connection, *, event_id: int, shard: int, overdue_after: float, reason: str
) -> None:
    """Give a running shard's lease up after a failure, with the reason, so another copy of
    its message can take it at once; due ``overdue_after`` seconds on (``RELEASE_SHARD``)."""
    await conn.execute(queries.RELEASE_SHARD, event_id, shard, overdue_after, reason)


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
    lease_seconds: float,
    overdue_after: float,
) -> str | None:
    """In one statement, record the batches SQS ``accepted`` since the last checkpoint
    (each due ``overdue_after`` seconds on) and the pushes of ``category`` to
    ``counted_users`` that the frequency caps count, and move the shard's cursor and
    totals (``held_back``: recipients filtered out, by reason) on and renew its lease for
    ``lease_seconds`` (due ``overdue_after`` after it ends). Returns why the shard must
    stop, 'cancelled' or 'expired', or None (``CHECKPOINT_SHARD``)."""
    stopped: str | None = await conn.fetchval(
        queries.CHECKPOINT_SHARD,
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
        counted_users,
    )
    return stopped


async def finish_shard(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    shard: int,
    recipients: int,
    devices: int,
    batches: int,
    held_back: dict[str, int],
) -> None:
    """Mark the shard done with its final totals (``FINISH_SHARD``)."""
    await conn.execute(
        queries.FINISH_SHARD, event_id, shard, recipients, devices, batches, held_back
    )


async def give_up_shard(
    conn: asyncpg.Connection, *, event_id: int, shard: int, reason: str
) -> None:
    """Mark a shard resent too often failed, with the reason, so its event can end
    (``GIVE_UP_SHARD``)."""
    await conn.execute(queries.GIVE_UP_SHARD, event_id, shard, reason)


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
    rows = await conn.fetch(queries.CLAIM_DUE_SHARDS, limit, overdue_after, look_ahead, event_id)
    return [DueShard(**row) for row in rows]
