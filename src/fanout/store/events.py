"""Events: written by the publisher, moved on by the stages, ended once nothing is open.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import asyncpg

from fanout.store.fragments import claim_due

# Index: events_idempotency_key (unique, partial). Returns nothing when this scope (the API
# key $4; NULL: the CLI and internal callers) used the idempotency key $5 before. Due $7
# seconds on: if its fan-out message is not on the queue by then, the reconciler sends it
# (the transactional outbox). Held ($12, its first release: send_at or its first wave): it
# is 'scheduled', due then; the reconciler's due scan releases it.
INSERT_EVENT = """
INSERT INTO events
    (topic_id, user_id, notification, api_key_id, idempotency_key, request_fingerprint, due_at,
     status, send_at, deliver_at_local, quiet_hours, expires_at)
VALUES ($1, $2, $3, $4, $5, $6,
        coalesce($12, now() + make_interval(secs => $7)),
        CASE WHEN $12::timestamptz IS NULL THEN 'pending' ELSE 'scheduled' END,
        $8, $9, $10, $11)
ON CONFLICT (idempotency_key, api_key_id) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# Index: events_idempotency_key (the key leads; the scopes sharing it are filtered).
EVENT_BY_IDEMPOTENCY_KEY = """
SELECT id, request_fingerprint FROM events
WHERE idempotency_key = $2 AND api_key_id IS NOT DISTINCT FROM $1
"""

# Index: events_pkey. The fan-out message is on the queue: if the event has not started
# fanning out by due_at ($2 seconds on), the reconciler sends it again.
MARK_EVENT_ENQUEUED = """
UPDATE events SET status = 'enqueued', enqueued_at = now(),
                  due_at = now() + make_interval(secs => $2)
WHERE id = $1 AND status IN ('pending', 'scheduled')
"""

# Indexes: events_pkey, event_waves_held, deferred_recipients_waiting. Cancel: an event not
# yet fanning out ends here; one under way is marked, and its shards (at their next page)
# and batches (when claimed) stop; it is due now, so the reconciler plans it once more and
# it ends once nothing is open. Held waves and waiting recipients are dropped. Returns the
# status after; nothing for an unknown event or one that has ended otherwise (delivered,
# failed ...: too late to cancel).
CANCEL_EVENT = """
WITH waves AS (
    UPDATE event_waves SET status = 'dropped' WHERE event_id = $1 AND status = 'held'
), deferred AS (
    UPDATE deferred_recipients SET wave_no = -1 WHERE event_id = $1 AND wave_no IS NULL
)
UPDATE events
SET cancelled_at = coalesce(cancelled_at, now()),
    status = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN 'cancelled'
                  ELSE status END,
    finished_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN now()
                       ELSE finished_at END,
    due_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN NULL
                  WHEN status IN ('fanning_out', 'fanned_out') THEN now()
                  ELSE due_at END
WHERE id = $1
  AND status IN ('scheduled', 'pending', 'enqueued', 'fanning_out', 'fanned_out', 'cancelled')
RETURNING status
"""

# Index: events_pkey.
LOAD_EVENT = """
SELECT id, topic_id, user_id, notification, status, created_at, quiet_hours,
       deliver_at_local IS NOT NULL AS in_waves,
       cancelled_at IS NOT NULL AS cancelled, expires_at <= now() AS expired
FROM events WHERE id = $1
"""

# Index: events_pkey. From here the shards are the units with deadlines.
MARK_EVENT_FANNING_OUT = """
UPDATE events SET status = 'fanning_out', due_at = NULL
WHERE id = $1 AND status IN ('pending', 'enqueued')
"""

# Index: events_pkey. Serialises the "was this the last shard?" check between shards.
LOCK_EVENT = "SELECT 1 FROM events WHERE id = $1 FOR UPDATE"

# Index: events_pkey, fanout_shards_pkey. Once every shard is done (or given up). The
# event is then due $2 seconds on, when the reconciler checks it has ended, in case the
# last batch and the last shard finished at once and neither saw the other's commit.
MARK_EVENT_FANNED_OUT = """
UPDATE events SET status = 'fanned_out', fanned_out_at = now(),
                  due_at = now() + make_interval(secs => $2)
WHERE id = $1 AND status IN ('pending', 'enqueued', 'fanning_out')
  AND NOT EXISTS (
      SELECT 1 FROM fanout_shards WHERE event_id = $1 AND status NOT IN ('done', 'failed'))
  AND NOT EXISTS (SELECT 1 FROM event_waves WHERE event_id = $1 AND status = 'held')
  AND NOT EXISTS (SELECT 1 FROM deferred_recipients WHERE event_id = $1 AND wave_no IS NULL)
"""

# Indexes: event_waves_held, deferred_recipients_waiting. An event fanning out with a wave
# or deferred recipients still held is due when the first of them is: the reconciler then
# sends it to be planned again (PLAN_DUE_WAVES, RELEASE_DEFERRED), or at its expiry if that
# comes first (its holds are then dropped). With nothing held it is not due (its shards
# carry the deadlines).
HOLD_EVENT_UNTIL_NEXT_RELEASE = """
UPDATE events AS e
SET due_at = CASE WHEN h.next IS NOT NULL THEN least(h.next, e.expires_at) END, resends = 0
FROM (
    SELECT least(
        (SELECT min(release_at) FROM event_waves WHERE event_id = $1 AND status = 'held'),
        (SELECT min(release_at) FROM deferred_recipients
         WHERE event_id = $1 AND wave_no IS NULL)) AS next
) AS h
WHERE e.id = $1 AND e.status = 'fanning_out'
"""

# Indexes: events_pkey, delivery_batches_open, fanout_shards_pkey. The event ends once it
# is fanned out and no batch is open; called when a batch or a shard finishes, and by the
# reconciler. cancelled: cancelled (whatever was sent before is in its counts); expired:
# expires_at passed with nothing sent; delivered: every device reached but dead tokens;
# partially_delivered: some sent, some not (failed, skipped for want of a provider, a shard
# given up, or expired); failed: nothing sent; no_recipients: nobody to send to. Returns
# the status set, if any.
FINISH_EVENT = """
WITH batches AS (
    SELECT coalesce(sum(sent), 0) AS sent, coalesce(sum(failed), 0) AS failed,
           coalesce(sum(skipped), 0) AS skipped,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired
    FROM delivery_batches WHERE event_id = $1 AND status = 'done'
), shards AS (
    SELECT coalesce(sum(devices), 0) AS devices,
           count(*) FILTER (WHERE status = 'failed') AS given_up,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired,
           (SELECT count(*) FROM event_waves WHERE event_id = $1 AND status = 'dropped')
           + (SELECT count(*) FROM deferred_recipients WHERE event_id = $1 AND wave_no = -1)
           AS dropped
    FROM fanout_shards WHERE event_id = $1
)
UPDATE events AS e
SET status = CASE
        WHEN e.cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN e.expires_at <= now() AND b.sent = 0 THEN 'expired'
        WHEN s.given_up = 0 AND s.devices = 0 THEN 'no_recipients'
        WHEN b.sent = 0 THEN 'failed'
        WHEN s.given_up = 0 AND b.failed = 0 AND b.skipped = 0
             AND b.expired + s.expired + s.dropped = 0 THEN 'delivered'
        ELSE 'partially_delivered'
    END,
    finished_at = now(), due_at = NULL
FROM batches AS b, shards AS s
WHERE e.id = $1 AND e.status = 'fanned_out'
  AND NOT EXISTS (SELECT 1 FROM delivery_batches WHERE event_id = $1 AND status <> 'done')
RETURNING e.status
"""

# Index: events_pkey. An event that can never be fanned out (its notification cannot fit a
# batch, its fan-out message was given up): it ends failed, with the reason.
FAIL_EVENT = """
UPDATE events SET status = 'failed', finished_at = now(), due_at = NULL, last_error = $2
WHERE id = $1 AND status IN ('pending', 'enqueued', 'fanning_out')
"""

# Overdue work, claimed by the reconciler (fragments.claim_due). Index: events_due.
CLAIM_DUE_EVENTS = claim_due(
    table="events", key=("id",), event="id", returning=("id", "status", "resends")
)

# Indexes: events_pkey, fanout_shards_pkey, delivery_batches_pkey (a few hundred rows per
# million devices: counters are summed on read, so no hot counter row is ever updated),
# event_waves_pkey, deferred_recipients_pkey (one row per deferred recipient).
EVENT_PROGRESS = """
SELECT e.id, e.status, e.created_at, e.fanned_out_at, e.finished_at, e.last_error,
       coalesce(f.shards, 0) AS shards, coalesce(f.shards_done, 0) AS shards_done,
       coalesce(f.shards_failed, 0) AS shards_failed,
       coalesce(f.recipients, 0) AS recipients, coalesce(f.devices, 0) AS devices,
       coalesce(b.batches, 0) AS batches, coalesce(b.batches_done, 0) AS batches_done,
       coalesce(b.sent, 0) AS sent, coalesce(b.failed, 0) AS failed,
       coalesce(b.invalid, 0) AS invalid, coalesce(b.skipped, 0) AS skipped,
       b.last_finished_at, coalesce(r.reasons, '{}'::jsonb) AS failure_reasons,
       coalesce(h.held_back, '{}'::jsonb) AS held_back,
       coalesce(hd.devices, 0) AS held_back_devices,
       e.send_at, e.deliver_at_local, e.quiet_hours, e.expires_at, e.cancelled_at,
       coalesce(w.waves, '[]'::jsonb) AS waves,
       coalesce(dr.waiting, 0) AS deferred_waiting, coalesce(dr.released, 0) AS deferred_released,
       coalesce(dr.dropped, 0) AS deferred_dropped,
       dr.next_release_at AS deferred_next_release_at,
       dr.last_release_at AS deferred_last_release_at,
       coalesce(k.held_by_breaker, '{}'::jsonb) AS held_by_breaker
FROM events AS e
LEFT JOIN LATERAL (
    SELECT count(*) AS shards, count(*) FILTER (WHERE status = 'done') AS shards_done,
           count(*) FILTER (WHERE status = 'failed') AS shards_failed,
           sum(recipients) AS recipients, sum(devices) AS devices
    FROM fanout_shards WHERE event_id = e.id
) AS f ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS batches, count(*) FILTER (WHERE status = 'done') AS batches_done,
           sum(sent) FILTER (WHERE status = 'done') AS sent,
           sum(failed) FILTER (WHERE status = 'done') AS failed,
           sum(invalid) FILTER (WHERE status = 'done') AS invalid,
           sum(skipped) FILTER (WHERE status = 'done') AS skipped,
           max(finished_at) AS last_finished_at
    FROM delivery_batches WHERE event_id = e.id
) AS b ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(reason, devices) AS reasons
    FROM (
        SELECT r.key AS reason, sum(r.value::bigint) AS devices
        FROM delivery_batches AS d, jsonb_each_text(d.failure_reasons) AS r
        WHERE d.event_id = e.id AND d.failure_reasons IS NOT NULL
        GROUP BY r.key
    ) AS by_reason
) AS r ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(reason, n) AS held_back
    FROM (
        SELECT h.key AS reason, sum(h.value::bigint) AS n
        FROM (
            SELECT held_back FROM fanout_shards WHERE event_id = e.id
            UNION ALL
            SELECT held_back FROM delivery_batches WHERE event_id = e.id
        ) AS u, jsonb_each_text(u.held_back) AS h
        GROUP BY h.key
    ) AS by_reason
) AS h ON true
LEFT JOIN LATERAL (
    SELECT sum(h.value::bigint) AS devices
    FROM delivery_batches AS d, jsonb_each_text(d.held_back) AS h
    WHERE d.event_id = e.id
) AS hd ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'wave', wave_no, 'kind', kind, 'release_at', release_at, 'zones', zones,
               'catch_all', catch_all, 'status', status) ORDER BY wave_no) AS waves
    FROM event_waves WHERE event_id = e.id
) AS w ON true
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE wave_no IS NULL) AS waiting,
           count(*) FILTER (WHERE wave_no > 0) AS released,
           count(*) FILTER (WHERE wave_no = -1) AS dropped,
           min(release_at) FILTER (WHERE wave_no IS NULL) AS next_release_at,
           max(release_at) AS last_release_at
    FROM deferred_recipients WHERE event_id = e.id
) AS dr ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(held_reason, devices) AS held_by_breaker
    FROM (
        SELECT held_reason, sum(devices) AS devices
        FROM delivery_batches
        WHERE event_id = e.id AND status <> 'done' AND held_reason IS NOT NULL
        GROUP BY held_reason
    ) AS by_reason
) AS k ON true
WHERE e.id = $1
"""

# Index: events_open (partial: only the open events). The event-level gauges of the API's
# /metrics: how many events are in each unfinished state, and the oldest one's age.
EVENTS_OPEN = """
SELECT status, count(*) AS events,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM events
WHERE status IN ('pending', 'enqueued', 'fanning_out', 'fanned_out')
GROUP BY status
"""


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
        INSERT_EVENT,
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
    status: str | None = await conn.fetchval(CANCEL_EVENT, event_id)
    return status


async def hold_event_until_next_release(conn: asyncpg.Connection, *, event_id: int) -> None:
    """A fanning-out event with waves or deferred recipients held is due when the first is
    (``HOLD_EVENT_UNTIL_NEXT_RELEASE``)."""
    await conn.execute(HOLD_EVENT_UNTIL_NEXT_RELEASE, event_id)


async def event_by_idempotency_key(
    conn: asyncpg.Connection, *, api_key_id: int | None, idempotency_key: str
) -> FirstUse | None:
    """The event this scope's idempotency key was first used for (``EVENT_BY_IDEMPOTENCY_KEY``)."""
    row = await conn.fetchrow(EVENT_BY_IDEMPOTENCY_KEY, api_key_id, idempotency_key)
    return None if row is None else FirstUse(**row)


async def mark_event_enqueued(
    conn: asyncpg.Connection, *, event_id: int, overdue_after: float
) -> None:
    """Its fan-out message is on the queue: a pending event becomes enqueued, due again
    ``overdue_after`` seconds on should its fan-out not start (``MARK_EVENT_ENQUEUED``)."""
    await conn.execute(MARK_EVENT_ENQUEUED, event_id, overdue_after)


async def load_event(conn: asyncpg.Connection, *, event_id: int) -> Event | None:
    """The event, or None if there is no such event (``LOAD_EVENT``)."""
    row = await conn.fetchrow(LOAD_EVENT, event_id)
    return None if row is None else Event(**row)


async def lock_event(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Lock the event's row until the transaction ends: serialises the shards' "was this
    the last one?" check (``LOCK_EVENT``)."""
    await conn.execute(LOCK_EVENT, event_id)


async def mark_event_fanning_out(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Its shards are written: from here they carry the deadlines (``MARK_EVENT_FANNING_OUT``)."""
    await conn.execute(MARK_EVENT_FANNING_OUT, event_id)


async def mark_event_fanned_out(
    conn: asyncpg.Connection, *, event_id: int, overdue_after: float
) -> bool:
    """Mark the event fanned out if every shard is done or given up, due ``overdue_after``
    seconds on (to check it has ended); True if this call did (``MARK_EVENT_FANNED_OUT``)."""
    status: str = await conn.execute(MARK_EVENT_FANNED_OUT, event_id, overdue_after)
    return status.endswith(" 1")


async def finish_event(conn: asyncpg.Connection, *, event_id: int) -> str | None:
    """End a fanned-out event with no batch left open; the status it ended with, or None
    if it has not ended (``FINISH_EVENT``)."""
    status: str | None = await conn.fetchval(FINISH_EVENT, event_id)
    return status


async def fail_event(conn: asyncpg.Connection, *, event_id: int, reason: str) -> None:
    """End an event that can never be fanned out as failed, with the reason (``FAIL_EVENT``)."""
    await conn.execute(FAIL_EVENT, event_id, reason)


@dataclass(frozen=True, slots=True)
class OpenEvents:
    """The events in one unfinished state: how many, and how long the oldest has been."""

    status: str
    events: int
    oldest_seconds: float


async def open_events(conn: asyncpg.Connection | asyncpg.Pool) -> list[OpenEvents]:
    """The unfinished events by state (``EVENTS_OPEN``)."""
    return [OpenEvents(**row) for row in await conn.fetch(EVENTS_OPEN)]


async def event_progress(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> asyncpg.Record | None:
    """The event's status and its shards' and batches' counters summed, as one row of the
    columns ``stages.progress.EventStatus`` is built from (``EVENT_PROGRESS``)."""
    row: asyncpg.Record | None = await conn.fetchrow(EVENT_PROGRESS, event_id)
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
    rows = await conn.fetch(CLAIM_DUE_EVENTS, limit, overdue_after, look_ahead, event_id)
    return [DueEvent(**row) for row in rows]
