"""An event's life: its states, and every transition between them.

This module is the only code that writes ``events.status``: each transition is one
function running one statement, and where a transition ends an event it is counted in
``fanout_events_finished`` here, whichever stage or the reconciler made it. The stages say
what happened (``lifecycle.finish(conn, event_id=…)``), never which state comes next.

    scheduled ─┐
               ├─► enqueued ─► fanning_out ─► fanned_out ─► delivered | partially_delivered
    pending ───┘                                            | failed | no_recipients
                                                            | cancelled | expired
    scheduled, pending, enqueued ─► cancelled (cancel)
    pending, enqueued, fanning_out ─► failed (fail)

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from enum import StrEnum
from typing import Any, NamedTuple

import asyncpg
import orjson

from fanout.metrics import EVENTS_FINISHED, app_label
from fanout.store.fragments import EVENT_FINISHED_WEBHOOKS


class EventState(StrEnum):
    """An event's ``status``; the values are those stored and shown by the API."""

    SCHEDULED = "scheduled"  # held in PostgreSQL until send_at (or its first local-time wave)
    PENDING = "pending"  # committed; its fan-out message not yet sent
    ENQUEUED = "enqueued"  # its fan-out message is on the queue
    FANNING_OUT = "fanning_out"  # shards are reading subscribers and sending batches
    FANNED_OUT = "fanned_out"  # every batch is on the queue; some are not yet delivered
    DELIVERED = "delivered"  # every device was sent to (dead tokens aside)
    PARTIALLY_DELIVERED = "partially_delivered"  # some devices sent to, some failed or skipped
    FAILED = "failed"  # no device was sent to (see failure_reasons and last_error)
    NO_RECIPIENTS = "no_recipients"  # nobody subscribed with an active device
    CANCELLED = "cancelled"  # cancelled; what was sent before is in sent, the rest in held_back
    EXPIRED = "expired"  # expires_at passed before anything was sent


# The fan-out may still run: planning, or shards at work.
FANNING = frozenset({EventState.PENDING, EventState.ENQUEUED, EventState.FANNING_OUT})
# Unfinished, as the /metrics gauges count them (a scheduled event is not yet under way).
OPEN_STATES = (
    EventState.PENDING,
    EventState.ENQUEUED,
    EventState.FANNING_OUT,
    EventState.FANNED_OUT,
)
TERMINAL_STATES = frozenset(
    {
        EventState.DELIVERED,
        EventState.PARTIALLY_DELIVERED,
        EventState.FAILED,
        EventState.NO_RECIPIENTS,
        EventState.CANCELLED,
        EventState.EXPIRED,
    }
)


def _ended(state: EventState, app: str | None) -> EventState:
    """Count the event ended in ``state``, under its app's key (the statement that ended it
    returns it: an index look-up in a table of as many rows as apps)."""
    EVENTS_FINISHED.labels(state.value, app_label(app)).inc()
    return state


# Index: events_idempotency_key (unique, partial). Returns nothing when this scope (the app
# $13 and the API key $4; NULL: the CLI and internal callers) used the idempotency key $5
# before. Due $7
# seconds on: if its fan-out message is not on the queue by then, the reconciler sends it
# (the transactional outbox). Held ($12, its first release: send_at or its first wave): it
# is 'scheduled', due then; the reconciler's due scan releases it. Paced at $15 devices a
# minute, or (with $16) at its app's default rate when $15 is NULL (apps_pkey, one probe).
INSERT_EVENT = """
INSERT INTO events
    (app_id, topic_id, user_id, notification, api_key_id, idempotency_key, request_fingerprint,
     due_at, status, send_at, deliver_at_local, quiet_hours, expires_at, live_activity_id,
     throttle_per_minute, tag_filter)
VALUES ($13, $1, $2, $3, $4, $5, $6,
        coalesce($12, now() + make_interval(secs => $7)),
        CASE WHEN $12::timestamptz IS NULL THEN 'pending' ELSE 'scheduled' END,
        $8, $9, $10, $11, $14,
        coalesce($15::integer, CASE WHEN $16::boolean THEN
            (SELECT a.default_throttle_per_minute FROM apps AS a WHERE a.id = $13) END),
        $17)
ON CONFLICT (idempotency_key, app_id, api_key_id) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# Indexes: topics_app_key_key, users_app_external_id_key (unique), events_idempotency_key.
# A group of pending events in one statement (stages/group_commit.py): their topics and
# users found or created by key within their apps, then the events, one per input row, due
# $2 seconds on. The rows come as one JSON array of objects ($1, ``ord`` a row's position):
# nine arrays cost asyncpg a check per element (an ABC isinstance, ~4% of the API process's
# CPU under bench/api.py's batch load, py-spy) and each notification a JSON text of its own;
# here the group is one orjson.dumps (issue #26). Each row's id is drawn first (nextval, in
# the order given), so the answer maps every input row to its id, and to whether
# it was inserted: a row whose idempotency key this scope used before (in an earlier group
# or in this one) inserts nothing (created false); a row whose topic or user a concurrent
# transaction created after this statement's snapshot has no id (call again for it: the
# next statement sees it). Each event is paced at its app's default rate, if it has one
# (apps_pkey, read once per app of the group rather than once per row; an event with a
# rate of its own is not grouped).
INSERT_EVENTS = """
WITH wanted AS (
    SELECT w.app_id, w.topic, w.user_key, w.notification, w.api_key_id, w.idempotency_key,
           decode(w.fingerprint, 'hex') AS fingerprint, w.quiet_hours, w.expires_at, w.ord
    FROM ROWS FROM (json_to_recordset($1::json)
            AS (app_id integer, topic text, user_key text, notification jsonb,
                api_key_id bigint, idempotency_key text, fingerprint text, quiet_hours text,
                expires_at timestamptz))
        WITH ORDINALITY
        AS w(app_id, topic, user_key, notification, api_key_id, idempotency_key, fingerprint,
             quiet_hours, expires_at, ord)
), topic_keys AS (
    SELECT DISTINCT app_id, topic FROM wanted WHERE topic IS NOT NULL
), new_topics AS (
    INSERT INTO topics (app_id, key) SELECT app_id, topic FROM topic_keys
    ON CONFLICT (app_id, key) DO NOTHING
    RETURNING id, app_id, key
), topic_ids AS (
    SELECT id, app_id, key FROM new_topics
    UNION ALL
    SELECT t.id, t.app_id, t.key FROM topics AS t
    JOIN topic_keys AS k ON t.app_id = k.app_id AND t.key = k.topic
), user_keys AS (
    SELECT DISTINCT app_id, user_key FROM wanted WHERE user_key IS NOT NULL
), new_users AS (
    INSERT INTO users (app_id, external_id) SELECT app_id, user_key FROM user_keys
    ON CONFLICT (app_id, external_id) DO NOTHING
    RETURNING id, app_id, external_id
), user_ids AS (
    SELECT id, app_id, external_id FROM new_users
    UNION ALL
    SELECT u.id, u.app_id, u.external_id FROM users AS u
    JOIN user_keys AS k ON u.app_id = k.app_id AND u.external_id = k.user_key
), app_rates AS (
    SELECT a.id, a.default_throttle_per_minute FROM apps AS a
    WHERE a.id IN (SELECT DISTINCT app_id FROM wanted)
), numbered AS (
    SELECT w.*, t.id AS topic_id, u.id AS user_id, r.default_throttle_per_minute,
           nextval(pg_get_serial_sequence('events', 'id')) AS id
    FROM wanted AS w
    LEFT JOIN topic_ids AS t ON t.app_id = w.app_id AND t.key = w.topic
    LEFT JOIN user_ids AS u ON u.app_id = w.app_id AND u.external_id = w.user_key
    LEFT JOIN app_rates AS r ON r.id = w.app_id
    WHERE t.id IS NOT NULL OR u.id IS NOT NULL
    ORDER BY w.ord
), inserted AS (
    INSERT INTO events
        (id, app_id, topic_id, user_id, notification, api_key_id, idempotency_key,
         request_fingerprint, due_at, status, quiet_hours, expires_at, throttle_per_minute)
    OVERRIDING SYSTEM VALUE
    SELECT id, app_id, topic_id, user_id, notification, api_key_id, idempotency_key,
           fingerprint, now() + make_interval(secs => $2), 'pending', quiet_hours, expires_at,
           default_throttle_per_minute
    FROM numbered ORDER BY ord
    ON CONFLICT (idempotency_key, app_id, api_key_id) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING id
)
SELECT n.id, i.id IS NOT NULL AS created
FROM wanted AS w
LEFT JOIN numbered AS n ON n.ord = w.ord
LEFT JOIN inserted AS i ON i.id = n.id
ORDER BY w.ord
"""

# Index: events_pkey. Their fan-out messages are on the queue (MARK_EVENT_ENQUEUED's rule,
# for a group's events at once).
MARK_EVENTS_ENQUEUED = """
UPDATE events SET status = 'enqueued', enqueued_at = now(),
                  due_at = now() + make_interval(secs => $2)
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'scheduled')
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
# failed ...: too late to cancel), and whether this statement ended it. $2: the app that
# asks (NULL: the operator, any app); another app's event is unknown, and nothing of it is
# touched (the waves and deferred recipients are dropped only for an event of the app). An
# event it ends gets its event.finished webhook rows (EVENT_FINISHED_WEBHOOKS). A paced
# event's batches not yet sent (delivery_batches_paced) end here, held back as cancelled:
# nothing of them is on SQS, so nothing else would ever finish them.
CANCEL_EVENT = f"""
WITH mine AS (
    SELECT id FROM events WHERE id = $1 AND ($2::integer IS NULL OR app_id = $2)
), paced AS (
    UPDATE delivery_batches
    SET status = 'done', finished_at = now(), held_back = jsonb_build_object('cancelled', devices)
    WHERE event_id = (SELECT id FROM mine)
      AND status = 'queued' AND due_at IS NULL AND not_before IS NOT NULL
), waves AS (
    UPDATE event_waves SET status = 'dropped'
    WHERE event_id = (SELECT id FROM mine) AND status = 'held'
), deferred AS (
    UPDATE deferred_recipients SET wave_no = -1
    WHERE event_id = (SELECT id FROM mine) AND wave_no IS NULL
), cancelled AS (
UPDATE events
SET cancelled_at = coalesce(cancelled_at, now()),
    status = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN 'cancelled'
                  ELSE status END,
    finished_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN now()
                       ELSE finished_at END,
    due_at = CASE WHEN status IN ('scheduled', 'pending', 'enqueued') THEN NULL
                  WHEN status IN ('fanning_out', 'fanned_out') THEN now()
                  ELSE due_at END
WHERE id = (SELECT id FROM mine)
  AND status IN ('scheduled', 'pending', 'enqueued', 'fanning_out', 'fanned_out', 'cancelled')
RETURNING id, app_id, status, finished_at, finished_at = now() AS ended
), {EVENT_FINISHED_WEBHOOKS.format(ended="cancelled", condition="f.ended")}
SELECT status, ended, (SELECT key FROM apps WHERE apps.id = cancelled.app_id) AS app
FROM cancelled
"""

# Index: events_pkey. From here the shards are the units with deadlines.
MARK_EVENT_FANNING_OUT = """
UPDATE events SET status = 'fanning_out', due_at = NULL
WHERE id = $1 AND status IN ('pending', 'enqueued')
"""

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

# MARK_EVENT_FANNED_OUT for a group's events in one statement (their ids returned).
MARK_EVENTS_FANNED_OUT = """
UPDATE events AS e SET status = 'fanned_out', fanned_out_at = now(),
                       due_at = now() + make_interval(secs => $2)
WHERE e.id = ANY($1::bigint[]) AND e.status IN ('pending', 'enqueued', 'fanning_out')
  AND NOT EXISTS (
      SELECT 1 FROM fanout_shards WHERE event_id = e.id AND status NOT IN ('done', 'failed'))
  AND NOT EXISTS (SELECT 1 FROM event_waves WHERE event_id = e.id AND status = 'held')
  AND NOT EXISTS (SELECT 1 FROM deferred_recipients WHERE event_id = e.id AND wave_no IS NULL)
RETURNING e.id
"""

# Indexes: events_pkey, delivery_batches_open, fanout_shards_pkey. The event ends once it
# is fanned out and no batch is open; called when a batch or a shard finishes, and by the
# reconciler. cancelled: cancelled (whatever was sent before is in its counts); expired:
# expires_at passed with nothing sent; delivered: every device reached but dead tokens;
# partially_delivered: some sent, some not (failed, skipped for want of a provider, a shard
# given up, or expired); failed: nothing sent; no_recipients: nobody to send to. A Live
# Activity update's tokens superseded (a newer update of the activity went to them) count
# as reached: an update whose every token was superseded ends delivered. Returns the
# status set, if any. The event's event.finished webhook rows are written with it.
# An event's sums, per {id}: its done batches' and its shards' (FINISH_EVENT, FINISH_EVENTS).
_BATCH_SUMS = """
    SELECT coalesce(sum(sent), 0) AS sent, coalesce(sum(failed), 0) AS failed,
           coalesce(sum(skipped), 0) AS skipped,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired,
           coalesce(sum((held_back ->> 'superseded')::bigint), 0) AS superseded
    FROM delivery_batches WHERE event_id = {id} AND status = 'done'"""
_SHARD_SUMS = """
    SELECT coalesce(sum(devices), 0) AS devices,
           count(*) FILTER (WHERE status = 'failed') AS given_up,
           coalesce(sum((held_back ->> 'expired')::bigint), 0) AS expired,
           coalesce(sum((held_back ->> 'superseded')::bigint), 0) AS superseded,
           (SELECT count(*) FROM event_waves WHERE event_id = {id} AND status = 'dropped')
           + (SELECT count(*) FROM deferred_recipients WHERE event_id = {id} AND wave_no = -1)
           AS dropped
    FROM fanout_shards WHERE event_id = {id}"""
# The state an event ends in, from its row e and its sums b (batches) and s (shards).
_END_STATE = """CASE
        WHEN e.cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN e.expires_at <= now() AND b.sent = 0 THEN 'expired'
        WHEN s.given_up = 0 AND s.devices = 0 AND s.superseded = 0 THEN 'no_recipients'
        WHEN b.sent = 0 AND b.superseded + s.superseded = 0 THEN 'failed'
        WHEN s.given_up = 0 AND b.failed = 0 AND b.skipped = 0
             AND b.expired + s.expired + s.dropped = 0 THEN 'delivered'
        ELSE 'partially_delivered'
    END"""

FINISH_EVENT = f"""
WITH batches AS ({_BATCH_SUMS.format(id="$1")}
), shards AS ({_SHARD_SUMS.format(id="$1")}
), ended AS (
UPDATE events AS e
SET status = {_END_STATE},
    finished_at = now(), due_at = NULL
FROM batches AS b, shards AS s
WHERE e.id = $1 AND e.status = 'fanned_out'
  AND NOT EXISTS (SELECT 1 FROM delivery_batches WHERE event_id = $1 AND status <> 'done')
RETURNING e.id, e.app_id, e.status, e.finished_at
), {EVENT_FINISHED_WEBHOOKS.format(ended="ended", condition="true")}
SELECT status, (SELECT key FROM apps WHERE apps.id = ended.app_id) AS app FROM ended
"""

# FINISH_EVENT for each of the events $1 in one statement (a bundle's, a group's: #26), the
# same indexes per event; those fanned out with no batch open are locked in id order first
# (two such statements never deadlock), then ended each from its own sums.
FINISH_EVENTS = f"""
WITH ready AS (
    SELECT e.id FROM events AS e
    WHERE e.id = ANY($1::bigint[]) AND e.status = 'fanned_out'
      AND NOT EXISTS (SELECT 1 FROM delivery_batches WHERE event_id = e.id AND status <> 'done')
    ORDER BY e.id
    FOR UPDATE
), ended AS (
UPDATE events AS e
SET status = {_END_STATE},
    finished_at = now(), due_at = NULL
FROM ready AS r
CROSS JOIN LATERAL ({_BATCH_SUMS.format(id="r.id")}) AS b
CROSS JOIN LATERAL ({_SHARD_SUMS.format(id="r.id")}) AS s
WHERE e.id = r.id AND e.status = 'fanned_out'
RETURNING e.id, e.app_id, e.status, e.finished_at
), {EVENT_FINISHED_WEBHOOKS.format(ended="ended", condition="true")}
SELECT id, status, (SELECT key FROM apps WHERE apps.id = ended.app_id) AS app FROM ended
"""

# Index: events_pkey. An event that can never be fanned out (its notification cannot fit a
# batch, its fan-out message was given up): it ends failed, with the reason, and its
# event.finished webhook rows are written with it.
FAIL_EVENT = f"""
WITH ended AS (
UPDATE events SET status = 'failed', finished_at = now(), due_at = NULL, last_error = $2
WHERE id = $1 AND status IN ('pending', 'enqueued', 'fanning_out')
RETURNING id, app_id, status, finished_at
), {EVENT_FINISHED_WEBHOOKS.format(ended="ended", condition="true")}
SELECT status, (SELECT key FROM apps WHERE apps.id = ended.app_id) AS app FROM ended
"""


async def create(
    conn: asyncpg.Connection,
    *,
    app_id: int,
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
    live_activity_id: int | None = None,
    throttle_per_minute: int | None = None,
    app_default_throttle: bool = False,
    tag_filter: dict[str, Any] | None = None,
) -> int | None:
    """Commit a pending event of the app, due ``overdue_after`` seconds on, or with
    ``held_until`` a scheduled one, due then; its id, or None when this scope (the app and
    ``api_key_id``) used the idempotency key before (``INSERT_EVENT``). Its audience:
    ``topic_id``, ``user_id`` or ``live_activity_id``, one of them, of the app. Paced at
    ``throttle_per_minute``, or with ``app_default_throttle`` at the app's default rate."""
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
        app_id,
        live_activity_id,
        throttle_per_minute,
        app_default_throttle,
        tag_filter,
    )
    return event_id


class NewEvent(NamedTuple):
    """A pending event of a group (``create_many``): to a topic or a user, by key. A tuple:
    a batch request makes one per item, and a frozen dataclass's ``__init__`` (a
    ``object.__setattr__`` per field) and ``Published``'s were together ~5% of the API
    process's CPU under bench/api.py's batch load (py-spy, issue #26)."""

    app_id: int
    notification: dict[str, Any]
    topic: str | None = None
    user: str | None = None
    api_key_id: int | None = None
    idempotency_key: str | None = None
    request_fingerprint: bytes | None = None
    quiet_hours: str = "defer"
    expires_at: datetime | None = None


class Created(NamedTuple):
    """What ``create_many`` did with one event: its id (None: its topic or user appeared
    concurrently, try it again), and False for ``created`` when its idempotency key named an
    event before (``id`` is then the id drawn for it, not that event's). A tuple: one is made
    per event of a group, and a frozen dataclass cost several times more to make."""

    id: int | None
    created: bool


async def create_many(
    conn: asyncpg.Connection, *, new_events: Sequence[NewEvent], overdue_after: float
) -> list[Created]:
    """Commit pending events in one statement, their topics and users found or created by
    key; one ``Created`` per event, in order (``INSERT_EVENTS``)."""
    rows = await conn.fetch(
        INSERT_EVENTS,
        orjson.dumps(
            [
                {
                    "app_id": e.app_id,
                    "topic": e.topic,
                    "user_key": e.user,
                    "notification": e.notification,
                    "api_key_id": e.api_key_id,
                    "idempotency_key": e.idempotency_key,
                    "fingerprint": None
                    if e.request_fingerprint is None
                    else e.request_fingerprint.hex(),
                    "quiet_hours": e.quiet_hours,
                    "expires_at": e.expires_at,
                }
                for e in new_events
            ]
        ).decode(),
        overdue_after,
    )
    return [Created(*row) for row in rows]


async def mark_enqueued_many(
    conn: asyncpg.Connection, *, event_ids: Sequence[int], overdue_after: float
) -> None:
    """``mark_enqueued`` for a group's events in one statement (``MARK_EVENTS_ENQUEUED``)."""
    await conn.execute(MARK_EVENTS_ENQUEUED, list(event_ids), overdue_after)


async def mark_enqueued(conn: asyncpg.Connection, *, event_id: int, overdue_after: float) -> None:
    """Its fan-out message is on the queue: a pending (or scheduled, now due) event becomes
    enqueued, due again ``overdue_after`` seconds on should its fan-out not start
    (``MARK_EVENT_ENQUEUED``)."""
    await conn.execute(MARK_EVENT_ENQUEUED, event_id, overdue_after)


async def cancel(
    conn: asyncpg.Connection, *, event_id: int, app_id: int | None
) -> EventState | None:
    """Cancel the event: one not yet fanning out ends cancelled at once (and is counted);
    one under way is marked, and stops at its next page and batch. Its state after; None
    for an event unknown to ``app_id`` (None: any app's) or one that has already ended
    otherwise (``CANCEL_EVENT``)."""
    row = await conn.fetchrow(CANCEL_EVENT, event_id, app_id)
    if row is None:
        return None
    state = EventState(row["status"])
    return _ended(state, row["app"]) if row["ended"] else state


async def mark_fanning_out(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Its shards are written: from here they carry the deadlines (``MARK_EVENT_FANNING_OUT``)."""
    await conn.execute(MARK_EVENT_FANNING_OUT, event_id)


async def mark_fanned_out(conn: asyncpg.Connection, *, event_id: int, overdue_after: float) -> bool:
    """Mark the event fanned out if every shard is done or given up, due ``overdue_after``
    seconds on (to check it has ended); True if this call did (``MARK_EVENT_FANNED_OUT``)."""
    status: str = await conn.execute(MARK_EVENT_FANNED_OUT, event_id, overdue_after)
    return status.endswith(" 1")


async def mark_fanning_out_many(conn: asyncpg.Connection, *, event_ids: Sequence[int]) -> None:
    """``mark_fanning_out`` for each of ``event_ids``, in one pipelined round trip."""
    await conn.executemany(MARK_EVENT_FANNING_OUT, [(event_id,) for event_id in event_ids])


async def mark_fanned_out_many(
    conn: asyncpg.Connection, *, event_ids: Sequence[int], overdue_after: float
) -> set[int]:
    """``mark_fanned_out`` for a group's events in one statement; those it marked
    (``MARK_EVENTS_FANNED_OUT``)."""
    rows = await conn.fetch(MARK_EVENTS_FANNED_OUT, list(event_ids), overdue_after)
    return {row["id"] for row in rows}


async def finish_many(
    conn: asyncpg.Connection, *, event_ids: Sequence[int]
) -> dict[int, EventState]:
    """``finish`` for each of ``event_ids`` in one statement, each ended counted; the
    states they ended in, by event (those that ended only) (``FINISH_EVENTS``)."""
    if not event_ids:
        return {}
    rows = await conn.fetch(FINISH_EVENTS, sorted(set(event_ids)))
    return {row["id"]: _ended(EventState(row["status"]), row["app"]) for row in rows}


async def finish(conn: asyncpg.Connection, *, event_id: int) -> EventState | None:
    """End a fanned-out event with no batch left open, counted in ``fanout_events_finished``;
    the state it ended in, or None if it has not ended (``FINISH_EVENT``)."""
    row = await conn.fetchrow(FINISH_EVENT, event_id)
    return None if row is None else _ended(EventState(row["status"]), row["app"])


async def fail(conn: asyncpg.Connection, *, event_id: int, reason: str) -> bool:
    """End an event that can never be fanned out as failed, with the reason, counted in
    ``fanout_events_finished``; True if this call ended it (``FAIL_EVENT``)."""
    row = await conn.fetchrow(FAIL_EVENT, event_id, reason)
    if row is not None:
        _ended(EventState.FAILED, row["app"])
        return True
    return False
