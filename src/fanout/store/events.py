"""Events: written by the publisher, moved on by the stages, ended once nothing is open.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import asyncpg

from fanout.store import queries


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the fan-out reads it: its audience (a topic or one user) and what to send."""

    id: int
    topic_id: int | None
    user_id: int | None
    notification: dict[str, Any]
    status: str
    created_at: datetime  # its commit: what the publish-to-push latency is measured from
    quiet_hours: str  # defer | drop | ignore
    in_waves: bool  # deliver_at_local: fanned out wave by wave (event_waves)
    cancelled: bool
    expired: bool  # expires_at has passed

    @property
    def stopped(self) -> str | None:
        """Why nothing more is to be sent ('cancelled', 'expired'), or None."""
        return "cancelled" if self.cancelled else "expired" if self.expired else None


@dataclass(frozen=True, slots=True)
class FirstUse:
    """The event an idempotency key was first used for, and what that request was."""

    id: int
    request_fingerprint: bytes | None


@dataclass(frozen=True, slots=True)
class DueEvent:
    """An event past its due_at, claimed by the reconciler (its due_at moved on)."""

    id: int
    status: str
    resends: int


async def insert_event(
    conn: asyncpg.Connection,
    *,
    topic_id: int | None,
    user_id: int | None,
    notification: dict[str, Any],
    api_key_id: int | None,
    idempotency_key: str | None,
    request_fingerprint: bytes | None,
    overdue_after: float,
    send_at: datetime | None = None,
    deliver_at_local: time | None = None,
    quiet_hours: str = "defer",
    expires_at: datetime | None = None,
    held_until: datetime | None = None,
) -> int | None:
    """Commit a pending event, due ``overdue_after`` seconds on, or with ``held_until`` a
    scheduled one, due then; its id, or None when this scope (``api_key_id``) used the
    idempotency key before (``INSERT_EVENT``)."""
    event_id: int | None = await conn.fetchval(
        queries.INSERT_EVENT,
        topic_id,
        user_id,
        notification,
        api_key_id,
        idempotency_key,
        request_fingerprint,
        overdue_after,
        send_at,
        deliver_at_local,
        quiet_hours,
        expires_at,
        held_until,
    )
    return event_id


async def cancel_event(conn: asyncpg.Connection, *, event_id: int) -> str | None:
    """Cancel the event: one not yet fanning out ends 'cancelled' at once; one under way is
    marked, and stops at its next page and batch. Its status after; None for an unknown
    event or one that has already ended otherwise (``CANCEL_EVENT``)."""
    status: str | None = await conn.fetchval(queries.CANCEL_EVENT, event_id)
    return status


async def hold_event_until_next_release(conn: asyncpg.Connection, *, event_id: int) -> None:
    """A fanning-out event with waves or deferred recipients held is due when the first is
    (``HOLD_EVENT_UNTIL_NEXT_RELEASE``)."""
    await conn.execute(queries.HOLD_EVENT_UNTIL_NEXT_RELEASE, event_id)


async def event_by_idempotency_key(
    conn: asyncpg.Connection, *, api_key_id: int | None, idempotency_key: str
) -> FirstUse | None:
    """The event this scope's idempotency key was first used for (``EVENT_BY_IDEMPOTENCY_KEY``)."""
    row = await conn.fetchrow(queries.EVENT_BY_IDEMPOTENCY_KEY, api_key_id, idempotency_key)
    return None if row is None else FirstUse(**row)


async def mark_event_enqueued(
    conn: asyncpg.Connection, *, event_id: int, overdue_after: float
) -> None:
    """Its fan-out message is on the queue: a pending event becomes enqueued, due again
    ``overdue_after`` seconds on should its fan-out not start (``MARK_EVENT_ENQUEUED``)."""
    await conn.execute(queries.MARK_EVENT_ENQUEUED, event_id, overdue_after)


async def load_event(conn: asyncpg.Connection, *, event_id: int) -> Event | None:
    """The event, or None if there is no such event (``LOAD_EVENT``)."""
    row = await conn.fetchrow(queries.LOAD_EVENT, event_id)
    return None if row is None else Event(**row)


async def lock_event(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Lock the event's row until the transaction ends: serialises the shards' "was this
    the last one?" check (``LOCK_EVENT``)."""
    await conn.execute(queries.LOCK_EVENT, event_id)


async def mark_event_fanning_out(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Its shards are written: from here they carry the deadlines (``MARK_EVENT_FANNING_OUT``)."""
    await conn.execute(queries.MARK_EVENT_FANNING_OUT, event_id)


async def mark_event_fanned_out(
    conn: asyncpg.Connection, *, event_id: int, overdue_after: float
) -> bool:
    """Mark the event fanned out if every shard is done or given up, due ``overdue_after``
    seconds on (to check it has ended); True if this call did (``MARK_EVENT_FANNED_OUT``)."""
    status: str = await conn.execute(queries.MARK_EVENT_FANNED_OUT, event_id, overdue_after)
    return status.endswith(" 1")


async def finish_event(conn: asyncpg.Connection, *, event_id: int) -> str | None:
    """End a fanned-out event with no batch left open; the status it ended with, or None
    if it has not ended (``FINISH_EVENT``)."""
    status: str | None = await conn.fetchval(queries.FINISH_EVENT, event_id)
    return status


async def fail_event(conn: asyncpg.Connection, *, event_id: int, reason: str) -> None:
    """End an event that can never be fanned out as failed, with the reason (``FAIL_EVENT``)."""
    await conn.execute(queries.FAIL_EVENT, event_id, reason)


@dataclass(frozen=True, slots=True)
class OpenEvents:
    """The events in one unfinished state: how many, and how long the oldest has been."""

    status: str
    events: int
    oldest_seconds: float


async def open_events(conn: asyncpg.Connection | asyncpg.Pool) -> list[OpenEvents]:
    """The unfinished events by state (``EVENTS_OPEN``)."""
    return [OpenEvents(**row) for row in await conn.fetch(queries.EVENTS_OPEN)]


async def event_progress(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> asyncpg.Record | None:
    """The event's status and its shards' and batches' counters summed, as one row of the
    columns ``stages.progress.EventStatus`` is built from (``EVENT_PROGRESS``)."""
    row: asyncpg.Record | None = await conn.fetchrow(queries.EVENT_PROGRESS, event_id)
    return row


async def claim_due_events(
    conn: asyncpg.Connection,
    *,
    limit: int,
    overdue_after: float,
    look_ahead: float = 0.0,
    event_id: int | None = None,
) -> list[DueEvent]:
    """Up to ``limit`` overdue events (of one, with ``event_id``), each due again after
    ``overdue_after`` seconds doubled per resend; ``look_ahead`` seconds count as passed
    (``CLAIM_DUE_EVENTS``)."""
    rows = await conn.fetch(queries.CLAIM_DUE_EVENTS, limit, overdue_after, look_ahead, event_id)
    return [DueEvent(**row) for row in rows]
