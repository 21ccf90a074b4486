"""Live Activities: an activity, the APNs tokens registered for it, and its audience as the
fan-out and the delivery read it.

An activity's tokens are read as a topic's subscribers are (store/recipients.py): rows of
``(user_id, platform, wire, held_back, release_at)``, where the "user" is the token's own
row id, so the fan-out's keyset pages, shard bounds and batch keys (closed ranges of
ids) work unchanged, and a batch's devices are tokens (ids of this table). No audience
rule applies: the user asked for this activity on their lock screen.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.queue.messages import APNS_SANDBOX, WIRE_FIELDS
from fanout.store.events import Event

# A token as a delivery batch carries an APNs device: [id,"token",null] (no locale: a
# Live Activity's alert is written by the publisher in the user's language). A debug
# build's token (apns_sandbox) is in the sandbox's group, as a device's is.
assert WIRE_FIELDS["apns"] == WIRE_FIELDS[APNS_SANDBOX] == ("id", "token", "locale")
_WIRE = "'[' || t.id::text || ',' || to_json(t.token)::text || ',null]'"
_PLATFORM = f"CASE WHEN t.apns_sandbox THEN '{APNS_SANDBOX}' ELSE 'apns' END"
_TOKEN_ROW = f"""t.id AS user_id, {_PLATFORM} AS platform, {_WIRE} AS wire,
       NULL::text AS held_back, NULL::timestamptz AS release_at"""
# An update goes to the tokens of its kind registered by its time, and not ended before it
# (an end's ends_at is its own time or its dismissal date). Stable for a given event, so a
# batch re-read later reads what the fan-out read. $1 the activity, $2 the kind of token,
# $3 the event's created_at.
_AUDIENCE = """t.activity_id = $1 AND t.kind = $2 AND t.active AND t.created_at <= $3
      AND (t.ends_at IS NULL OR t.ends_at >= $3)"""

# Index: live_activities_app_activity_key_key (unique). Same contract as UPSERT_TOPIC:
# the activity of the app $2 by its key; another app's of the same key is another one.
UPSERT_ACTIVITY = """
WITH inserted AS (
    INSERT INTO live_activities (app_id, activity_key) VALUES ($2, $1)
    ON CONFLICT (app_id, activity_key) DO NOTHING RETURNING id
)
SELECT id FROM inserted
UNION ALL
SELECT id FROM live_activities WHERE app_id = $2 AND activity_key = $1
LIMIT 1
"""

# Index: live_activity_tokens_activity_id_kind_token_key (unique). The same token again
# updates its row (another user, topic or APNs environment; active again after APNs had
# refused it).
UPSERT_REGISTRATION = """
INSERT INTO live_activity_tokens (activity_id, user_id, kind, token, topic_id, apns_sandbox)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (activity_id, kind, token) DO UPDATE
SET user_id = EXCLUDED.user_id, topic_id = EXCLUDED.topic_id,
    apns_sandbox = EXCLUDED.apns_sandbox, active = true, retired_at = NULL, retired_reason = NULL
RETURNING id, (xmax = 0) AS created
"""

# Index: live_activities_pkey. The next update's aps.timestamp, under the activity's row
# lock (held until the event is committed, so timestamps and event ids go in one order):
# now in whole seconds, or one past the last when updates come faster than one a second
# (a burst of n updates in a second runs at most n seconds ahead of the clock).
NEXT_TIMESTAMP = """
UPDATE live_activities
SET last_timestamp = greatest(last_timestamp + 1, floor(extract(epoch FROM now()))::bigint)
WHERE id = $1
RETURNING last_timestamp
"""

# Index: events_by_live_activity. Apple budgets priority-10 updates per activity per hour:
# those of the hour up to now (this one included once committed). An event stores the
# priority only when it is not the default 'high' (10).
PRIORITY_10_LAST_HOUR = """
SELECT count(*) FROM events
WHERE live_activity_id = $1 AND created_at > now() - interval '1 hour'
  AND coalesce(notification ->> 'priority', 'high') = 'high'
"""

# Index: live_activity_tokens_audience. An end: the activity's tokens get nothing published
# after $2 (its dismissal date), or after the end itself when it has none or its date has
# passed (Apple then dismisses at once; the end must still reach them: greatest() skips a
# NULL); an earlier end keeps its earlier time.
END_ACTIVITY = """
UPDATE live_activity_tokens
SET ends_at = least(coalesce(ends_at, 'infinity'), greatest($2::timestamptz, now()))
WHERE activity_id = $1 AND kind = 'activity' AND active
"""

# Index: live_activity_tokens_audience (keyset: id > cursor). The fan-out's page: tokens
# after $4 and before $5, $6 at most, in id order.
ACTIVITY_TOKENS_PAGE = f"""
SELECT {_TOKEN_ROW}
FROM live_activity_tokens AS t
WHERE {_AUDIENCE} AND t.id > $4 AND t.id < $5
ORDER BY t.id
LIMIT $6
"""

# Index: live_activity_tokens_audience. A lost batch re-read: its closed range of tokens.
ACTIVITY_BATCH_TOKENS = f"""
SELECT {_TOKEN_ROW}
FROM live_activity_tokens AS t
WHERE {_AUDIENCE} AND t.id BETWEEN $4 AND $5
ORDER BY t.id
"""

# Index: live_activity_tokens_pkey. A retry batch re-read from its token ids.
TOKENS_BY_ID = f"""
SELECT {_TOKEN_ROW}
FROM live_activity_tokens AS t
WHERE t.id = ANY($1::bigint[]) AND t.active
"""

# Index: live_activity_tokens_audience (index-only). The first token of the next shard:
# the one $4 tokens on from $5.
NEXT_TOKEN_BOUNDARY = f"""
SELECT t.id FROM live_activity_tokens AS t
WHERE {_AUDIENCE} AND t.id >= $5
ORDER BY t.id
OFFSET $4 LIMIT 1
"""

# Index: live_activity_tokens_audience. A shard stopped (its update superseded, cancelled,
# expired): the tokens it did not read, counted as held back.
TOKENS_LEFT = f"""
SELECT count(*) FROM live_activity_tokens AS t
WHERE {_AUDIENCE} AND t.id > $4 AND t.id < $5
"""

# Index: live_activity_tokens_pkey. Tokens APNs says are dead, in one statement per batch.
RETIRE_TOKENS = """
UPDATE live_activity_tokens SET active = false, retired_at = now(), retired_reason = $2
WHERE id = ANY($1::bigint[]) AND active
"""


@dataclass(frozen=True, slots=True)
class RegisteredToken:
    id: int
    created: bool  # False: the token was known, and its row updated


@dataclass(frozen=True, slots=True)
class Audience:
    """Whose tokens an update goes to: the activity's, of one kind (a start goes to the
    push-to-start tokens, an update or an end to the activity's), as of its event's time."""

    activity_id: int
    token_kind: str  # 'activity' | 'push_to_start'
    as_of: datetime  # the event's created_at


def audience_of(event: Event) -> Audience | None:
    """The tokens a Live Activity update goes to; None for an event of a topic or a user."""
    if event.live_activity_id is None:
        return None
    live = event.notification.get("live_activity") or {}
    kind = "push_to_start" if live.get("event") == "start" else "activity"
    return Audience(event.live_activity_id, kind, event.created_at)


async def find_or_create_activity(
    conn: asyncpg.Connection, *, app_id: int, activity_key: str
) -> int:
    """The id of the app's activity with this key, created if new (``UPSERT_ACTIVITY``)."""
    for _ in range(5):  # empty only when a concurrent insert won between INSERT and SELECT
        found: int | None = await conn.fetchval(UPSERT_ACTIVITY, activity_key, app_id)
        if found is not None:
            return found
    raise RuntimeError(f"could not create live activity {activity_key!r}")


async def upsert_token(
    conn: asyncpg.Connection,
    *,
    activity_id: int,
    user_id: int,
    kind: str,
    token: str,
    topic_id: int | None,
    apns_sandbox: bool = False,
) -> RegisteredToken:
    """Register a token of the activity, or refresh it (``UPSERT_REGISTRATION``).
    ``apns_sandbox``: a debug build's token, sent to Apple's sandbox endpoint."""
    row = await conn.fetchrow(
        UPSERT_REGISTRATION, activity_id, user_id, kind, token, topic_id, apns_sandbox
    )
    return RegisteredToken(**row)


async def next_timestamp(conn: asyncpg.Connection, *, activity_id: int) -> int:
    """The next update's timestamp, greater than every earlier one; locks the activity's
    row until the transaction ends (``NEXT_TIMESTAMP``)."""
    timestamp: int = await conn.fetchval(NEXT_TIMESTAMP, activity_id)
    return timestamp


async def priority_10_last_hour(conn: asyncpg.Connection, *, activity_id: int) -> int:
    """The activity's priority-10 updates published in the last hour
    (``PRIORITY_10_LAST_HOUR``)."""
    count: int = await conn.fetchval(PRIORITY_10_LAST_HOUR, activity_id)
    return count


async def end_activity(
    conn: asyncpg.Connection, *, activity_id: int, ends_at: datetime | None
) -> None:
    """The activity's tokens get nothing published after ``ends_at`` (None: now)
    (``END_ACTIVITY``)."""
    await conn.execute(END_ACTIVITY, activity_id, ends_at)


async def activity_tokens_page(
    conn: asyncpg.Connection,
    *,
    audience: Audience,
    after_token_id: int,
    before_token_id: int,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to ``limit`` tokens of the audience between the two ids, as recipients' rows
    (``ACTIVITY_TOKENS_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        ACTIVITY_TOKENS_PAGE,
        audience.activity_id,
        audience.token_kind,
        audience.as_of,
        after_token_id,
        before_token_id,
        limit,
    )
    return rows


async def activity_batch_tokens(
    conn: asyncpg.Connection, *, audience: Audience, first_token_id: int, last_token_id: int
) -> list[asyncpg.Record]:
    """A lost batch re-read: the audience's tokens from ``first_token_id`` to
    ``last_token_id``, both included (``ACTIVITY_BATCH_TOKENS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        ACTIVITY_BATCH_TOKENS,
        audience.activity_id,
        audience.token_kind,
        audience.as_of,
        first_token_id,
        last_token_id,
    )
    return rows


async def tokens_by_id(
    conn: asyncpg.Connection, *, token_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """A retry batch re-read: those of ``token_ids`` still active (``TOKENS_BY_ID``)."""
    rows: list[asyncpg.Record] = await conn.fetch(TOKENS_BY_ID, token_ids)
    return rows


async def next_token_boundary(
    conn: asyncpg.Connection, *, audience: Audience, from_token_id: int, shard_size: int
) -> int | None:
    """The id of the token ``shard_size`` tokens on from ``from_token_id``, where the next
    shard starts; None when fewer are left (``NEXT_TOKEN_BOUNDARY``)."""
    boundary: int | None = await conn.fetchval(
        NEXT_TOKEN_BOUNDARY,
        audience.activity_id,
        audience.token_kind,
        audience.as_of,
        shard_size,
        from_token_id,
    )
    return boundary


async def tokens_left(
    conn: asyncpg.Connection, *, audience: Audience, after_token_id: int, before_token_id: int
) -> int:
    """The audience's tokens between the two ids, which a stopped shard did not read
    (``TOKENS_LEFT``)."""
    count: int = await conn.fetchval(
        TOKENS_LEFT,
        audience.activity_id,
        audience.token_kind,
        audience.as_of,
        after_token_id,
        before_token_id,
    )
    return count


async def retire_tokens(conn: asyncpg.Connection, *, token_ids: Sequence[int], reason: str) -> None:
    """Retire tokens APNs says are dead, with the reason, in one statement
    (``RETIRE_TOKENS``)."""
    await conn.execute(RETIRE_TOKENS, token_ids, reason)


@dataclass(frozen=True)
class ListedToken:
    """A registered token as an operator sees it: never the token whole (it addresses a
    device), its last 8 characters."""

    id: int
    user: str
    kind: str
    token_end: str
    topic: str | None
    apns_environment: str
    active: bool


# Indexes: live_activities_app_activity_key_key (the app's activity by its key), then
# live_activity_tokens_activity_id_kind_token_key (its tokens). The activity of the app $1
# only: another app's of the same key is another one. In id order, $3 at most.
LIST_TOKENS = """
SELECT t.id, u.external_id AS "user", t.kind, right(t.token, 8) AS token_end,
       tp.key AS topic, CASE WHEN t.apns_sandbox THEN 'sandbox' ELSE 'production' END
       AS apns_environment, t.active
FROM live_activities a
JOIN live_activity_tokens t ON t.activity_id = a.id
JOIN users u ON u.id = t.user_id
LEFT JOIN topics tp ON tp.id = t.topic_id
WHERE a.app_id = $1 AND a.activity_key = $2
ORDER BY t.id
LIMIT $3
"""


async def list_tokens(
    conn: asyncpg.Connection, *, app_id: int, activity_key: str, limit: int
) -> list[ListedToken]:
    """Up to ``limit`` tokens of the app's activity, in registration order (``LIST_TOKENS``);
    none for an activity the app never had."""
    rows = await conn.fetch(LIST_TOKENS, app_id, activity_key, limit)
    return [ListedToken(**row) for row in rows]
