"""What the operator console reads, what the delivery records per device it did not send
to, and the console's sign-in sessions.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name. The console's table reads
return asyncpg's rows as they come: they go straight into a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store.events import EVENT_PROGRESS

# Per-device failures and the operator console (api/console/). The delivery stage adds one
# statement per batch (RECORD_BATCH_DETAIL, in the transaction that finishes it); the rest
# are the console's reads, a few per page, none per device sent to.

# Indexes: delivery_batches_pkey; delivery_failures_by_device, delivery_failures_at. A row per
# device the batch did not send to, as columns ($4..$7), and its outcomes per platform ($3).
RECORD_BATCH_DETAIL = """
WITH failures AS (
    INSERT INTO delivery_failures (event_id, batch_key, device_id, platform, outcome, reason)
    SELECT $1, $2, f.device_id, f.platform, f.outcome, f.reason
    FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[])
         AS f (device_id, platform, outcome, reason)
)
UPDATE delivery_batches SET outcomes = $3 WHERE event_id = $1 AND batch_key = $2
"""

# EVENT_LIST reads each event's counts with EVENT_PROGRESS itself, so the console shows the
# very numbers `GET /v1/events/{id}` does.
assert EVENT_PROGRESS.count("$1") == 1

# Indexes: events_by_app (the app $5's, newest first), topics_app_key_key and
# events_by_topic with a topic ($1), then EVENT_PROGRESS's per event. $2: one status; $3:
# one event; $4: how many. Another app's event or topic is not found.
EVENT_LIST = f"""
SELECT p.*, t.key AS topic, u.external_id AS user_external_id, picked.source_prefix,
       picked.notification ->> 'title' AS title,
       coalesce(picked.notification ->> 'kind', 'alert') AS kind
FROM (
    SELECT id, topic_id, user_id, notification, source_prefix FROM events
    WHERE app_id = $5
      AND ($1::text IS NULL OR topic_id = (SELECT id FROM topics WHERE app_id = $5 AND key = $1))
      AND ($2::text IS NULL OR status = $2)
      AND ($3::bigint IS NULL OR id = $3)
    ORDER BY id DESC
    LIMIT $4
) AS picked
CROSS JOIN LATERAL ({EVENT_PROGRESS.replace("$1", "picked.id")}) AS p
LEFT JOIN topics AS t ON t.id = picked.topic_id
LEFT JOIN users AS u ON u.id = picked.user_id
ORDER BY picked.id DESC
"""

# Index: delivery_batches_pkey. Devices sent (and not sent) per interval of $2 seconds after
# the event was published, by when their batch's outcome was recorded.
EVENT_THROUGHPUT = """
SELECT extract(epoch FROM date_bin(make_interval(secs => $2), b.finished_at, e.created_at)
                          - e.created_at)::float8 AS offset_seconds,
       sum(b.sent)::bigint AS sent, sum(b.failed + b.invalid + b.skipped)::bigint AS not_sent
FROM delivery_batches AS b
JOIN events AS e ON e.id = b.event_id
WHERE b.event_id = $1 AND b.status = 'done' AND b.finished_at IS NOT NULL
GROUP BY 1
ORDER BY 1
"""

# Index: delivery_batches_pkey. Seconds from publication to a batch's recorded outcome, at
# each fraction in $2, weighted by the devices each batch sent: the latency of a push to
# its provider's acceptance, to within the time a batch takes to record.
EVENT_LATENCY_PERCENTILES = """
WITH batches AS (
    SELECT extract(epoch FROM b.finished_at - e.created_at)::float8 AS seconds, b.sent
    FROM delivery_batches AS b
    JOIN events AS e ON e.id = b.event_id
    WHERE b.event_id = $1 AND b.status = 'done' AND b.sent > 0
), running AS (
    SELECT seconds, sum(sent) OVER (ORDER BY seconds ROWS UNBOUNDED PRECEDING) AS upto,
           sum(sent) OVER () AS total
    FROM batches
)
SELECT q.fraction, (SELECT min(seconds) FROM running WHERE upto >= q.fraction * total) AS seconds
FROM unnest($2::float8[]) AS q (fraction)
"""

# Index: delivery_batches_pkey. Devices per (platform, outcome), from each batch's outcomes.
EVENT_OUTCOMES_BY_PLATFORM = """
SELECT p.key AS platform, o.key AS outcome, sum(o.value::bigint)::bigint AS devices
FROM delivery_batches AS b, jsonb_each(b.outcomes) AS p, jsonb_each_text(p.value) AS o
WHERE b.event_id = $1 AND b.outcomes IS NOT NULL
GROUP BY 1, 2
ORDER BY 1, 2
"""

# Index: delivery_failures_by_device (the event leads). The most common answers, $2 of them.
EVENT_FAILURES_BY_REASON = """
SELECT platform, outcome, reason, count(*) AS devices
FROM delivery_failures
WHERE event_id = $1
GROUP BY 1, 2, 3
ORDER BY devices DESC, platform, outcome
LIMIT $2
"""

# Index: delivery_failures_by_device (the event leads). Devices of one outcome ($2), $3 of them.
EVENT_DEVICE_FAILURES = """
SELECT device_id, batch_key, platform, outcome, reason, at
FROM delivery_failures
WHERE event_id = $1 AND outcome = $2
ORDER BY at, device_id
LIMIT $3
"""

# Index: fanout_shards_pkey.
EVENT_SHARDS = """
SELECT shard_no, lo_user_id, hi_user_id, status, cursor_user_id, attempts, resends,
       recipients, devices, batches, finished_at, last_error
FROM fanout_shards
WHERE event_id = $1
ORDER BY shard_no
LIMIT $2
"""

# Index: delivery_batches_pkey.
EVENT_BATCH_SUMMARY = """
SELECT count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE attempt > 0) AS retry_batches,
       coalesce(sum(retried), 0)::bigint AS retried_devices,
       count(*) FILTER (WHERE resends > 0) AS resent,
       count(*) FILTER (WHERE status = 'done' AND outcomes IS NULL) AS without_detail
FROM delivery_batches
WHERE event_id = $1
"""

# Index: delivery_batches_pkey. Open batches first, then the latest finished; $2 of them.
EVENT_BATCHES = """
SELECT batch_key, attempt, status, devices, sent, failed, invalid, skipped, retried,
       started_at, finished_at, resends, last_error
FROM delivery_batches
WHERE event_id = $1
ORDER BY status = 'done', finished_at DESC NULLS FIRST, batch_key
LIMIT $2
"""

# Index: users_app_external_id_key.
USER_BY_EXTERNAL_ID = "SELECT id, external_id FROM users WHERE app_id = $2 AND external_id = $1"

# Index: devices_pkey. The app $2's device only.
DEVICE_OWNER = """
SELECT u.id, u.external_id FROM devices AS d JOIN users AS u ON u.id = d.user_id
WHERE d.id = $1 AND d.app_id = $2
"""

# Index: devices_by_user. Every device of the user, active or not (never the token).
USER_DEVICE_HISTORY = """
SELECT id, platform, locale, active, created_at, deactivated_at, deactivated_reason
FROM devices
WHERE user_id = $1
ORDER BY id
"""

# Index: delivery_batches_pkey (the event's few batches per million devices): the fan-out
# batches whose closed range of users holds user $2, and the retry batches naming any of
# the devices $3. A batch the delivery claimed before the fan-out's checkpoint recorded it
# has no range in its row; its key names it (s<shard>:<first>-<last>, batching.users_of_key).
BATCHES_CARRYING = r"""
SELECT batch_key, attempt, status, devices, sent, failed, invalid, skipped, retried,
       started_at, finished_at, (outcomes IS NOT NULL) AS detailed, device_ids,
       failure_reasons
FROM delivery_batches
WHERE event_id = $1
  AND ((coalesce(first_user_id, substring(batch_key FROM '^s\d+:(\d+)-\d+$')::bigint) <= $2
        AND coalesce(last_user_id, substring(batch_key FROM '^s\d+:\d+-(\d+)$')::bigint) >= $2)
       OR device_ids && $3::bigint[])
ORDER BY attempt, batch_key
"""

# Index: fanout_shards_pkey (the event leads; its few shards are checked).
SHARD_OF_USER = """
SELECT shard_no, status, cursor_user_id
FROM fanout_shards
WHERE event_id = $1 AND lo_user_id <= $2 AND hi_user_id > $2
"""

# Index: delivery_failures_by_device.
DEVICES_FAILURES = """
SELECT device_id, batch_key, platform, outcome, reason, at
FROM delivery_failures
WHERE event_id = $1 AND device_id = ANY($2::bigint[])
ORDER BY at, batch_key
"""

# Indexes: delivery_batches_finished, events_pkey. Devices per (platform, outcome) in
# batches recorded in the last $1 seconds, across the app $2's events.
RECENT_OUTCOMES_BY_PLATFORM = """
SELECT p.key AS platform, o.key AS outcome, sum(o.value::bigint)::bigint AS devices
FROM delivery_batches AS b
JOIN events AS e ON e.id = b.event_id AND e.app_id = $2,
     jsonb_each(b.outcomes) AS p, jsonb_each_text(p.value) AS o
WHERE b.finished_at > now() - make_interval(secs => $1) AND b.outcomes IS NOT NULL
GROUP BY 1, 2
"""

# Indexes: delivery_failures_at (BRIN), events_pkey. The last $1 seconds' answers other than
# ok to the app $3's events, $2 of them.
RECENT_FAILURES_BY_REASON = """
SELECT f.platform, f.outcome, f.reason, count(*) AS devices
FROM delivery_failures AS f
JOIN events AS e ON e.id = f.event_id AND e.app_id = $3
WHERE f.at > now() - make_interval(secs => $1)
GROUP BY 1, 2, 3
ORDER BY devices DESC
LIMIT $2
"""

# Indexes: events_due, delivery_batches_open, events_pkey. How long the app $1's oldest
# work has waited for a worker: events not yet fanning out, batches recorded queued and
# not yet claimed.
OLDEST_WAITING = """
SELECT (SELECT min(created_at) FROM events
        WHERE due_at IS NOT NULL AND status IN ('pending', 'enqueued')
          AND app_id = $1) AS oldest_event,
       (SELECT min(b.started_at) FROM delivery_batches AS b
        JOIN events AS e ON e.id = b.event_id AND e.app_id = $1
        WHERE b.status <> 'done' AND b.status = 'queued') AS oldest_batch,
       now() AS now
"""

# Index: console_sessions_pkey. $3 hours.
INSERT_CONSOLE_SESSION = """
INSERT INTO console_sessions (token_hash, api_key_id, expires_at)
VALUES ($1, $2, now() + make_interval(hours => $3::integer))
"""

# Indexes: console_sessions_pkey, api_keys_pkey, apps_pkey. A live session of a live key,
# the key's app, and the app the session looks at (NULL: the key's; see 0020).
CONSOLE_SESSION_KEY = """
SELECT k.id, k.key_id, k.scopes, k.name, k.app_id, a.key AS app,
       s.app_id AS viewing_app_id, v.key AS viewing_app
FROM console_sessions AS s
JOIN api_keys AS k ON k.id = s.api_key_id
JOIN apps AS a ON a.id = k.app_id
LEFT JOIN apps AS v ON v.id = s.app_id
WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL
"""

# Index: console_sessions_pkey. The app the session looks at from now on (an admin's).
SET_CONSOLE_SESSION_APP = "UPDATE console_sessions SET app_id = $2 WHERE token_hash = $1"

# Index: console_sessions_pkey.
DELETE_CONSOLE_SESSION = "DELETE FROM console_sessions WHERE token_hash = $1"

# Index: console_sessions_expiry. Run at each sign-in.
DELETE_EXPIRED_CONSOLE_SESSIONS = "DELETE FROM console_sessions WHERE expires_at < now()"


Rows = list[asyncpg.Record]


async def _rows(conn: asyncpg.Connection | asyncpg.Pool, query: str, *args: object) -> Rows:
    rows: Rows = await conn.fetch(query, *args)
    return rows


async def record_batch_detail(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    by_platform: Mapping[str, Mapping[str, int]],
    device_ids: Sequence[int],
    platforms: Sequence[str],
    kinds: Sequence[str],
    reasons: Sequence[str | None],
) -> None:
    """Record the batch's outcomes per platform and, in the same statement, one row per
    device it did not send to (the four sequences are that table's columns)
    (``RECORD_BATCH_DETAIL``)."""
    await conn.execute(
        RECORD_BATCH_DETAIL,
        event_id,
        batch_key,
        by_platform,
        device_ids,
        platforms,
        kinds,
        reasons,
    )


async def list_events(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    app_id: int,
    topic: str | None,
    status: str | None,
    event_id: int | None,
    limit: int,
) -> Rows:
    """The app's newest events (of a topic, in a status, or one), each with
    EVENT_PROGRESS's columns plus its topic, user and title (``EVENT_LIST``)."""
    return await _rows(conn, EVENT_LIST, topic, status, event_id, limit, app_id)


async def event_throughput(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, bucket_seconds: float
) -> Rows:
    """Devices sent per ``bucket_seconds`` after publication (``EVENT_THROUGHPUT``)."""
    return await _rows(conn, EVENT_THROUGHPUT, event_id, bucket_seconds)


async def event_latency_percentiles(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, fractions: Sequence[float]
) -> dict[float, float | None]:
    """Seconds from publication to a recorded send at each fraction of the devices sent
    (``EVENT_LATENCY_PERCENTILES``)."""
    rows = await conn.fetch(EVENT_LATENCY_PERCENTILES, event_id, fractions)
    return {row["fraction"]: row["seconds"] for row in rows}


async def event_outcomes_by_platform(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> Rows:
    """(platform, outcome, devices) summed over the event's batches
    (``EVENT_OUTCOMES_BY_PLATFORM``)."""
    return await _rows(conn, EVENT_OUTCOMES_BY_PLATFORM, event_id)


async def event_failures_by_reason(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """(platform, outcome, reason, devices), the most common first
    (``EVENT_FAILURES_BY_REASON``)."""
    return await _rows(conn, EVENT_FAILURES_BY_REASON, event_id, limit)


async def event_device_failures(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, outcome: str, limit: int
) -> Rows:
    """The event's devices of one outcome other than sent, oldest first
    (``EVENT_DEVICE_FAILURES``)."""
    return await _rows(conn, EVENT_DEVICE_FAILURES, event_id, outcome, limit)


async def event_shards(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """The event's shards in order (``EVENT_SHARDS``)."""
    return await _rows(conn, EVENT_SHARDS, event_id, limit)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    done: int
    running: int
    queued: int
    retry_batches: int
    retried_devices: int
    resent: int  # sent again by the reconciler: their message was late, lost or dead-lettered
    without_detail: int  # done without per-device detail: given up, or from before schema 10


async def event_batch_summary(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> BatchSummary:
    """The event's batches counted by state (``EVENT_BATCH_SUMMARY``)."""
    row = await conn.fetchrow(EVENT_BATCH_SUMMARY, event_id)
    return BatchSummary(**row)


async def event_batches(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """Open batches first, then the latest done (``EVENT_BATCHES``)."""
    return await _rows(conn, EVENT_BATCHES, event_id, limit)


@dataclass(frozen=True, slots=True)
class UserRef:
    id: int
    external_id: str


async def user_by_external_id(
    conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int, external_id: str
) -> UserRef | None:
    """The app's user with this external id, without creating one
    (``USER_BY_EXTERNAL_ID``)."""
    row = await conn.fetchrow(USER_BY_EXTERNAL_ID, external_id, app_id)
    return None if row is None else UserRef(**row)


async def device_owner(
    conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int, device_id: int
) -> UserRef | None:
    """The user the app's device belongs to (``DEVICE_OWNER``)."""
    row = await conn.fetchrow(DEVICE_OWNER, device_id, app_id)
    return None if row is None else UserRef(**row)


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    """A device as the console shows it: never its token."""

    id: int
    platform: str
    locale: str | None
    active: bool
    created_at: datetime
    deactivated_at: datetime | None
    deactivated_reason: str | None


async def user_device_history(
    conn: asyncpg.Connection | asyncpg.Pool, *, user_id: int
) -> list[DeviceHistory]:
    """Every device of the user, active or not (``USER_DEVICE_HISTORY``)."""
    rows = await conn.fetch(USER_DEVICE_HISTORY, user_id)
    return [DeviceHistory(**row) for row in rows]


async def batches_carrying(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    event_id: int,
    user_id: int,
    device_ids: Sequence[int],
) -> Rows:
    """The event's batches that carried the user (by range) or any of these devices (retry
    batches, by id) (``BATCHES_CARRYING``)."""
    return await _rows(conn, BATCHES_CARRYING, event_id, user_id, device_ids)


async def shard_of_user(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, user_id: int
) -> asyncpg.Record | None:
    """The event's shard whose range holds the user (``SHARD_OF_USER``)."""
    return await conn.fetchrow(SHARD_OF_USER, event_id, user_id)


async def devices_failures(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, device_ids: Sequence[int]
) -> Rows:
    """What went wrong for these devices in this event, in order (``DEVICES_FAILURES``)."""
    return await _rows(conn, DEVICES_FAILURES, event_id, device_ids)


async def recent_outcomes_by_platform(
    conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int, seconds: float
) -> Rows:
    """(platform, outcome, devices) of the app's batches recorded in the last ``seconds``
    (``RECENT_OUTCOMES_BY_PLATFORM``)."""
    return await _rows(conn, RECENT_OUTCOMES_BY_PLATFORM, seconds, app_id)


async def recent_failures_by_reason(
    conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int, seconds: float, limit: int
) -> Rows:
    """(platform, outcome, reason, devices) of the app's last ``seconds``
    (``RECENT_FAILURES_BY_REASON``)."""
    return await _rows(conn, RECENT_FAILURES_BY_REASON, seconds, limit, app_id)


@dataclass(frozen=True, slots=True)
class OldestWaiting:
    oldest_event: datetime | None
    oldest_batch: datetime | None
    now: datetime


async def oldest_waiting(conn: asyncpg.Connection | asyncpg.Pool, *, app_id: int) -> OldestWaiting:
    """When the app's oldest event and batch still waiting for a worker were queued
    (``OLDEST_WAITING``)."""
    return OldestWaiting(**await conn.fetchrow(OLDEST_WAITING, app_id))


async def insert_console_session(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes, api_key_id: int, hours: int
) -> None:
    """A session for this key, ending in ``hours`` (``INSERT_CONSOLE_SESSION``)."""
    await conn.execute(INSERT_CONSOLE_SESSION, token_hash, api_key_id, hours)


@dataclass(frozen=True, slots=True)
class SessionKey:
    id: int
    key_id: str
    scopes: list[str]
    name: str
    app_id: int
    app: str
    viewing_app_id: int | None  # the app an admin switched to; None: the key's
    viewing_app: str | None


async def console_session_key(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes
) -> SessionKey | None:
    """The live key of a live session (``CONSOLE_SESSION_KEY``)."""
    row = await conn.fetchrow(CONSOLE_SESSION_KEY, token_hash)
    return None if row is None else SessionKey(**row)


async def set_console_session_app(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes, app_id: int
) -> None:
    """The app the session looks at from now on (``SET_CONSOLE_SESSION_APP``)."""
    await conn.execute(SET_CONSOLE_SESSION_APP, token_hash, app_id)


async def delete_console_session(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes
) -> None:
    """Sign out (``DELETE_CONSOLE_SESSION``)."""
    await conn.execute(DELETE_CONSOLE_SESSION, token_hash)


async def delete_expired_console_sessions(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    """Forget sessions past their end (``DELETE_EXPIRED_CONSOLE_SESSIONS``)."""
    await conn.execute(DELETE_EXPIRED_CONSOLE_SESSIONS)
