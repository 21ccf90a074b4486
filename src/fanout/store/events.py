"""Events: read by the stages, locked while a shard ends, claimed by the reconciler when
overdue, their progress summed; their states are moved by ``lifecycle`` alone.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from fanout.store.fragments import SUPERSEDED, claim_due
from fanout.store.lifecycle import EventState

# Index: events_idempotency_key (the key leads; the scopes sharing it are filtered).
EVENT_BY_IDEMPOTENCY_KEY = """
SELECT id, request_fingerprint FROM events
WHERE idempotency_key = $2 AND app_id = $3 AND api_key_id IS NOT DISTINCT FROM $1
"""

# Index: events_idempotency_key. EVENT_BY_IDEMPOTENCY_KEY for several keys at once, in the
# order asked ($4: their positions, returned as ``ord``); a key no event has is left out.
EVENTS_BY_IDEMPOTENCY_KEYS = """
SELECT k.ord, e.id, e.request_fingerprint
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::integer[])
    AS k(api_key_id, idempotency_key, app_id, ord)
JOIN events AS e ON e.idempotency_key = k.idempotency_key AND e.app_id = k.app_id
                AND e.api_key_id IS NOT DISTINCT FROM k.api_key_id
"""

# Index: events_pkey (and events_by_live_activity for an update: SUPERSEDED).
LOAD_EVENT = f"""
SELECT id, app_id, topic_id, user_id, live_activity_id, notification, status, created_at,
       quiet_hours, deliver_at_local IS NOT NULL AS in_waves,
       cancelled_at IS NOT NULL AS cancelled, expires_at <= now() AS expired,
       {SUPERSEDED.format(e="events")} AS superseded, throttle_per_minute, source_prefix,
       tag_filter IS NOT NULL AS tag_filtered
FROM events WHERE id = $1
"""

# Index: events_pkey. A paced event's checkpoint reserves its devices' time on the event's
# pace clock (stages/pacing.py): from the end of what is scheduled, or now if that is past,
# $2 devices at the event's rate. The row stays locked until the checkpoint's transaction
# ends, so the shards of every worker take their slots one after the other, none twice;
# a checkpoint refused (its lease lost) rolls its reservation back with it.
RESERVE_PACE = """
UPDATE events
SET paced_until = greatest(paced_until, now())
                  + make_interval(secs => $2 * 60.0 / throttle_per_minute),
    paced_devices = coalesce(paced_devices, 0) + $2
WHERE id = $1 AND throttle_per_minute IS NOT NULL
RETURNING paced_until - make_interval(secs => $2 * 60.0 / throttle_per_minute) AS slot_start,
          paced_until
"""

# Index: events_pkey. The end of what is scheduled of a paced event (NULL: nothing yet).
PACED_UNTIL = "SELECT paced_until FROM events WHERE id = $1"

# Index: events_pkey. Serialises the "was this the last shard?" check between shards.
LOCK_EVENT = "SELECT 1 FROM events WHERE id = $1 FOR UPDATE"

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

# Overdue work, claimed by the reconciler (fragments.claim_due). Index: events_due.
CLAIM_DUE_EVENTS = claim_due(
    table="events", key=("id",), event="id", returning=("id", "status", "resends")
)

# Indexes: events_pkey, fanout_shards_pkey, delivery_batches_pkey (a few hundred rows per
# million devices: counters are summed on read, so no hot counter row is ever updated),
# event_waves_pkey, deferred_recipients_pkey (one row per deferred recipient); for a Live
# Activity update, live_activities_pkey and events_by_live_activity (Apple's budget of
# priority-10 updates: those of the activity in the hour up to this one).
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
       coalesce(k.held_by_breaker, '{}'::jsonb) AS held_by_breaker,
       la.activity_key AS live_activity_key, e.notification -> 'live_activity' AS live_activity,
       coalesce(e.notification ->> 'priority', 'high') AS priority, la.priority_10_last_hour,
       e.throttle_per_minute, e.paced_until, coalesce(e.paced_devices, 0) AS paced_devices
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
LEFT JOIN LATERAL (
    SELECT a.activity_key, (
        SELECT count(*) FROM events AS x
        WHERE x.live_activity_id = a.id AND x.id <= e.id
          AND x.created_at > e.created_at - interval '1 hour'
          AND coalesce(x.notification ->> 'priority', 'high') = 'high'
    ) AS priority_10_last_hour
    FROM live_activities AS a WHERE a.id = e.live_activity_id
) AS la ON true
WHERE e.id = $1
"""

# Index: events_pkey. EVENT_PROGRESS of an event of the app $2 only: another app's event
# is not found, the same answer as an event that never existed.
EVENT_PROGRESS_IN_APP = EVENT_PROGRESS.rstrip() + " AND e.app_id = $2\n"

# Index: events_open (partial: only the open events). The event-level gauges of the API's
# /metrics: how many events are in each unfinished state, and the oldest one's age.
EVENTS_OPEN = """
SELECT status, count(*) AS events,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds
FROM events
WHERE status IN ('pending', 'enqueued', 'fanning_out', 'fanned_out')
GROUP BY status
"""


# The held-back reason of a Live Activity update's tokens that a newer update reached
# first: never lost, and not a failure (the event can still end delivered).
SUPERSEDED_REASON = "superseded"


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the fan-out reads it: its audience (a topic, one user, or a Live
    Activity's tokens) and what to send."""

    id: int
    app_id: int
    topic_id: int | None
    user_id: int | None
    live_activity_id: int | None
    notification: dict[str, Any]
    status: EventState
    created_at: datetime  # its commit: what the publish-to-push latency is measured from
    quiet_hours: str  # defer | drop | ignore
    in_waves: bool  # deliver_at_local: fanned out wave by wave (event_waves)
    cancelled: bool
    expired: bool  # expires_at has passed
    superseded: bool  # a Live Activity update with a newer one of its activity published
    throttle_per_minute: int | None = None  # paced: at most this many devices a minute
    # Read from a source (issue #25): the audience is the event's members, not the topic's
    # subscriptions (the source's prefix as it was when the event was planned).
    source_prefix: str | None = None
    # Published with a tag filter: its pages decide the filter for the page at once.
    tag_filtered: bool = False

    @property
    def stopped(self) -> str | None:
        """Why nothing more is to be sent, as the held-back reason its devices are counted
        under (cancelled, expired: the state the event will end in; superseded), or None."""
        if self.cancelled:
            return EventState.CANCELLED.value
        if self.expired:
            return EventState.EXPIRED.value
        return SUPERSEDED_REASON if self.superseded else None


@dataclass(frozen=True, slots=True)
class FirstUse:
    """The event an idempotency key was first used for, and what that request was."""

    id: int
    request_fingerprint: bytes | None


@dataclass(frozen=True, slots=True)
class DueEvent:
    """An event past its due_at, claimed by the reconciler (its due_at moved on)."""

    id: int
    status: EventState
    resends: int


async def hold_event_until_next_release(conn: asyncpg.Connection, *, event_id: int) -> None:
    """A fanning-out event with waves or deferred recipients held is due when the first is
    (``HOLD_EVENT_UNTIL_NEXT_RELEASE``)."""
    await conn.execute(HOLD_EVENT_UNTIL_NEXT_RELEASE, event_id)


async def event_by_idempotency_key(
    conn: asyncpg.Connection, *, app_id: int, api_key_id: int | None, idempotency_key: str
) -> FirstUse | None:
    """The event this scope's (the app's, the API key's) idempotency key was first used for
    (``EVENT_BY_IDEMPOTENCY_KEY``)."""
    row = await conn.fetchrow(EVENT_BY_IDEMPOTENCY_KEY, api_key_id, idempotency_key, app_id)
    return None if row is None else FirstUse(**row)


@dataclass(frozen=True, slots=True)
class IdempotencyScope:
    """An idempotency key in its scope (the app, the API key; None: the internal one)."""

    app_id: int
    api_key_id: int | None
    idempotency_key: str


async def events_by_idempotency_keys(
    conn: asyncpg.Connection, *, scopes: Sequence[IdempotencyScope]
) -> list[FirstUse | None]:
    """``event_by_idempotency_key`` for each of ``scopes``, in one statement: the first
    use of each, None where there is none (``EVENTS_BY_IDEMPOTENCY_KEYS``)."""
    rows = await conn.fetch(
        EVENTS_BY_IDEMPOTENCY_KEYS,
        [s.api_key_id for s in scopes],
        [s.idempotency_key for s in scopes],
        [s.app_id for s in scopes],
        list(range(len(scopes))),
    )
    found: list[FirstUse | None] = [None] * len(scopes)
    for row in rows:
        found[row["ord"]] = FirstUse(row["id"], row["request_fingerprint"])
    return found


async def load_event(conn: asyncpg.Connection, *, event_id: int) -> Event | None:
    """The event, or None if there is no such event (``LOAD_EVENT``)."""
    row = await conn.fetchrow(LOAD_EVENT, event_id)
    return None if row is None else event_of(row)


def event_of(row: asyncpg.Record) -> Event:
    """The event a ``LOAD_EVENT`` row describes."""
    return Event(**{**row, "status": EventState(row["status"])})


async def load_events(conn: asyncpg.Connection, *, event_ids: Sequence[int]) -> list[Event]:
    """``load_event`` for each of ``event_ids`` in one pipelined round trip; those that
    exist, in the order asked (``LOAD_EVENT``)."""
    rows = await conn.fetchmany(LOAD_EVENT, [(event_id,) for event_id in event_ids])
    return [event_of(row) for row in rows]


async def lock_events(conn: asyncpg.Connection, *, event_ids: Sequence[int]) -> None:
    """``lock_event`` for each of ``event_ids``, in the order given (callers sort them, so
    two groups never wait on each other), in one pipelined round trip (``LOCK_EVENT``)."""
    await conn.executemany(LOCK_EVENT, [(event_id,) for event_id in event_ids])


async def hold_events_until_next_release(
    conn: asyncpg.Connection, *, event_ids: Sequence[int]
) -> None:
    """``hold_event_until_next_release`` for each of ``event_ids``, in one pipelined round
    trip (``HOLD_EVENT_UNTIL_NEXT_RELEASE``)."""
    if event_ids:
        await conn.executemany(
            HOLD_EVENT_UNTIL_NEXT_RELEASE, [(event_id,) for event_id in event_ids]
        )


@dataclass(frozen=True, slots=True)
class PaceSlot:
    """Where a checkpoint's devices start on the pace clock, and where the clock is now."""

    slot_start: datetime
    paced_until: datetime


async def reserve_pace(conn: asyncpg.Connection, *, event_id: int, devices: int) -> PaceSlot:
    """Reserve ``devices`` on the paced event's clock, locking its row until the
    transaction ends (``RESERVE_PACE``)."""
    row = await conn.fetchrow(RESERVE_PACE, event_id, devices)
    assert row is not None, f"event {event_id} is not paced"
    return PaceSlot(**row)


async def paced_until(conn: asyncpg.Connection, *, event_id: int) -> datetime | None:
    """The end of what is scheduled of a paced event, or None (``PACED_UNTIL``)."""
    until: datetime | None = await conn.fetchval(PACED_UNTIL, event_id)
    return until


async def lock_event(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Lock the event's row until the transaction ends: serialises the shards' "was this
    the last one?" check (``LOCK_EVENT``)."""
    await conn.execute(LOCK_EVENT, event_id)


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


async def event_progress_in_app(
    conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int, event_id: int
) -> asyncpg.Record | None:
    """``event_progress`` of the app's event; None for another app's
    (``EVENT_PROGRESS_IN_APP``)."""
    row: asyncpg.Record | None = await conn.fetchrow(EVENT_PROGRESS_IN_APP, event_id, app_id)
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
    return [DueEvent(row["id"], EventState(row["status"]), row["resends"]) for row in rows]
