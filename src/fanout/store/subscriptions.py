"""Topics, users and who follows what: found or created by their keys, one statement per
request even for a bulk import.

Users and topics belong to one app (``app_id``): every statement that finds one by its key
has the app in its WHERE, so the same key in another app is another row, never this one.
A subscription's topic and user are of one app (the callers find both in the same app).

Topics and users are named by their keys here (``topic``: topics.key, ``user``:
users.external_id) and by their row ids as ``topic_id`` and ``user_id``. Every function
runs one statement, written in this module with the index it relies on and named in its
docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store.devices import StagedOutcome
from fanout.user_attributes import USER_ATTRIBUTES, UserAttribute

# Index: topics_app_key_key (unique). Insert-or-find; an existing row is not rewritten.
# Returns NULL only if a concurrent transaction inserted the same key a moment ago: call
# again. $2: the app.
UPSERT_TOPIC = """
WITH inserted AS (
    INSERT INTO topics (app_id, key) VALUES ($2, $1) ON CONFLICT (app_id, key) DO NOTHING
    RETURNING id
)
SELECT id FROM inserted UNION ALL SELECT id FROM topics WHERE app_id = $2 AND key = $1 LIMIT 1
"""

# Index: users_app_external_id_key (unique). Same contract as UPSERT_TOPIC.
UPSERT_USER = """
WITH inserted AS (
    INSERT INTO users (app_id, external_id) VALUES ($2, $1)
    ON CONFLICT (app_id, external_id) DO NOTHING
    RETURNING id
)
SELECT id FROM inserted UNION ALL
SELECT id FROM users WHERE app_id = $2 AND external_id = $1 LIMIT 1
"""

# Index: subscriptions_pkey.
SUBSCRIBE = """
INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""

# Indexes: topics_app_key_key, users_app_external_id_key, subscriptions_pkey. $3: the app.
UNSUBSCRIBE = """
DELETE FROM subscriptions AS s
USING topics AS t, users AS u
WHERE t.app_id = $3 AND t.key = $1 AND u.app_id = $3 AND u.external_id = $2
  AND s.topic_id = t.id AND s.user_id = u.id
"""

# Index: users_app_external_id_key. Bulk import, one statement for the whole list.
BULK_INSERT_USERS = """
INSERT INTO users (app_id, external_id) SELECT $2, unnest($1::text[]) ON CONFLICT DO NOTHING
"""

# Indexes: users_app_external_id_key, subscriptions_pkey. $3: the app (the topic's).
BULK_SUBSCRIBE = """
INSERT INTO subscriptions (topic_id, user_id)
SELECT $1, id FROM users WHERE app_id = $3 AND external_id = ANY($2::text[])
ON CONFLICT DO NOTHING
"""

# Indexes: users_app_external_id_key, subscriptions_by_user (user_id, topic_id): a keyset
# page. $4: the app.
USER_SUBSCRIPTIONS_PAGE = """
SELECT s.topic_id, t.key, s.created_at
FROM users AS u
JOIN subscriptions AS s ON s.user_id = u.id
JOIN topics AS t ON t.id = s.topic_id
WHERE u.app_id = $4 AND u.external_id = $1 AND s.topic_id > $2
ORDER BY s.topic_id
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic a user follows, since when; ``topic_id`` is the page's cursor."""

    topic_id: int
    topic: str
    subscribed_at: datetime


async def find_or_create(conn: asyncpg.Connection, query: str, key: str, app_id: int) -> int:
    """Run an insert-or-find query (``UPSERT_USER``, ``UPSERT_TOPIC``) until it has an id.

    It comes back empty only when another transaction inserted the same key between
    our INSERT and SELECT; the next statement sees that row.
    """
    for _ in range(5):
        found: int | None = await conn.fetchval(query, key, app_id)
        if found is not None:
            return found
    raise RuntimeError(f"could not insert or find {key!r}")


async def find_or_create_topic(conn: asyncpg.Connection, *, app_id: int, topic: str) -> int:
    """The id of the app's topic with this key, created if new (``UPSERT_TOPIC``)."""
    return await find_or_create(conn, UPSERT_TOPIC, topic, app_id)


async def find_or_create_user(conn: asyncpg.Connection, *, app_id: int, user: str) -> int:
    """The id of the app's user with this external id, created if new (``UPSERT_USER``)."""
    return await find_or_create(conn, UPSERT_USER, user, app_id)


async def subscribe(conn: asyncpg.Connection, *, topic_id: int, user_id: int) -> None:
    """Subscribe the user to the topic; already subscribed is no error (``SUBSCRIBE``)."""
    await conn.execute(SUBSCRIBE, topic_id, user_id)


async def unsubscribe(conn: asyncpg.Connection, *, app_id: int, topic: str, user: str) -> None:
    """Unsubscribe the app's user from its topic, by their keys; not subscribed (or unknown)
    is no error (``UNSUBSCRIBE``)."""
    await conn.execute(UNSUBSCRIBE, topic, user, app_id)


async def insert_users(conn: asyncpg.Connection, *, app_id: int, users: Sequence[str]) -> None:
    """Create the app's users of these external ids that do not exist yet
    (``BULK_INSERT_USERS``)."""
    await conn.execute(BULK_INSERT_USERS, users, app_id)


async def subscribe_users(
    conn: asyncpg.Connection, *, app_id: int, topic_id: int, users: Sequence[str]
) -> int:
    """Subscribe the app's (existing) users of these external ids to its topic; how many
    were not subscribed before (``BULK_SUBSCRIBE``)."""
    status: str = await conn.execute(BULK_SUBSCRIBE, topic_id, users, app_id)
    return int(status.split()[-1])


async def user_subscriptions_page(
    conn: asyncpg.Connection, *, app_id: int, user: str, after_topic_id: int, limit: int
) -> list[Subscription]:
    """Up to ``limit`` of the app's user's subscriptions, in topic id order from after
    ``after_topic_id`` (``USER_SUBSCRIPTIONS_PAGE``)."""
    rows = await conn.fetch(USER_SUBSCRIPTIONS_PAGE, user, after_topic_id, limit, app_id)
    return [Subscription(r["topic_id"], r["key"], r["created_at"]) for r in rows]


def staged_users_statements(attributes: Sequence[UserAttribute]) -> tuple[str, str]:
    """INSERT_STAGED_USERS and UPDATE_STAGED_USERS for these attributes
    (user_attributes.USER_ATTRIBUTES): each one a column set from the file when the row
    has it (COPY brings NULL for an absent one: a known user keeps its value, a new one
    gets the attribute's default), a user updated only if one of them changes.

    Two statements, the insert first: its ON CONFLICT waits for a concurrent import
    inserting the same new user and, that one committed, leaves its row; the update's
    fresh snapshot then sees that row and sets this file's values on it. In one statement
    (an update CTE, then the insert) the update's snapshot predates the other's row and
    this file's values were lost (tests/integration/test_bulk_import.py's concurrent
    import). A single INSERT ... ON CONFLICT DO UPDATE cannot do it: EXCLUDED cannot tell
    an absent attribute (keep the stored value) from the new user's default."""
    names = [a.name for a in attributes]
    columns = "".join(f", {n}" for n in names)
    cast = "".join(
        f", {a.name}::{a.cast} AS {a.name}" if a.cast else f", {a.name}" for a in attributes
    )
    staged = f"""WITH staged AS MATERIALIZED (
    SELECT DISTINCT ON (user_id) user_id{cast}
    FROM import_users
    ORDER BY user_id, line DESC
)"""
    values = "".join(
        f", coalesce(s.{a.name}, {a.default})" if a.default else f", s.{a.name}" for a in attributes
    )
    # Sorted: concurrent imports take the keys in one order.
    insert = f"""{staged}
INSERT INTO users AS u (app_id, external_id{columns})
SELECT $1, s.user_id{values} FROM staged AS s
WHERE NOT EXISTS (SELECT FROM users AS k WHERE k.app_id = $1 AND k.external_id = s.user_id)
ORDER BY s.user_id
ON CONFLICT (app_id, external_id) DO NOTHING
"""
    if not attributes:
        return insert, "SELECT 0 WHERE $1::integer IS NULL"  # nothing a known user could change
    sets = ", ".join(f"{n} = coalesce(s.{n}, u.{n})" for n in names)
    old = ", ".join(f"u.{n}" for n in names)
    new = ", ".join(f"coalesce(s.{n}, u.{n})" for n in names)
    update = f"""{staged}
UPDATE users AS u SET {sets}
FROM staged AS s
WHERE u.app_id = $1 AND u.external_id = s.user_id AND ({old}) IS DISTINCT FROM ({new})
"""
    return insert, update


# Index: users_app_external_id_key (unique). The bulk import's chunk of users
# (store/staging.py's import_users) in two statements (staged_users_statements says why),
# run in this order in the chunk's transaction: the users new to the app inserted, then
# the known ones (those a concurrent import inserted meanwhile included) updated only
# where an attribute differs: a second import of the file changes 0 rows. A user twice in
# the chunk: the last line wins. $1: the app.
INSERT_STAGED_USERS = staged_users_statements(USER_ATTRIBUTES)[0]
UPDATE_STAGED_USERS = staged_users_statements(USER_ATTRIBUTES)[1]

# Indexes: topics_app_key_key, users_app_external_id_key. The bulk import's chunk of
# subscriptions (import_subscriptions), first step: the topics new to the app, for rows of
# a user it has. A statement of its own: a topic another transaction is inserting at the
# same moment is waited for (ON CONFLICT) and, committed, is seen by SUBSCRIBE_STAGED's
# fresh snapshot; in one statement with the subscribing, its rows were missed (measured:
# 100 of 600 lines with chunks on three connections). Sorted: concurrent chunks take the
# keys in one order. Users and topics are found by their index, a scalar subquery per row,
# here and in SUBSCRIBE_STAGED: joined, the planner hashed every user of the app for each
# chunk (a sequential scan of 1,000,000 users, ~0.25 s of each statement per 20,000 rows,
# EXPLAIN ANALYZE on the loaded 2-core machine; UPSERT_STAGED_DEVICES says more). $1: the
# app.
INSERT_STAGED_TOPICS = """
INSERT INTO topics (app_id, key)
SELECT DISTINCT $1::integer, s.topic FROM import_subscriptions AS s
WHERE (SELECT true FROM users AS u WHERE u.app_id = $1 AND u.external_id = s.user_id)
ORDER BY 2
ON CONFLICT (app_id, key) DO NOTHING
"""

# Indexes: topics_app_key_key, users_app_external_id_key, subscriptions_pkey, users_pkey,
# topics_pkey. Second step: every row of a known user subscribed, already subscribed is
# unchanged (fresh: an anti-join by subscriptions_pkey, so a second import of the file
# writes and locks nothing); the lines of users the app does not have come back,
# (missed_lines) those whose topic is gone (deleted since the first step), and
# (sourced_lines) those of a topic whose subscribers are read from a source
# (sources_app_id_prefix_key: the app's few prefixes; issue #25), which a subscription
# would never reach. The foreign keys subscriptions(user_id) -> users and (topic_id) ->
# topics are checked here for the pairs written, set-based, as their per-row triggers
# check them: the user and the topic locked FOR KEY SHARE (a concurrent deletion waits for
# this chunk, then cascades to its subscriptions); one deleted since the snapshot is not
# locked, and its lines come back (unknown_lines, missed_lines). So the chunk may run
# without the two triggers (staging.stage's skip_fk_triggers; docs/architecture.md).
# $1: the app.
SUBSCRIBE_STAGED = """
WITH staged AS MATERIALIZED (
    SELECT s.line,
           CASE WHEN src.prefix IS NULL THEN
               (SELECT t.id FROM topics AS t WHERE t.app_id = $1 AND t.key = s.topic)
           END AS topic_id,
           (SELECT u.id FROM users AS u WHERE u.app_id = $1 AND u.external_id = s.user_id) AS uid,
           src.prefix IS NOT NULL AS sourced
    FROM import_subscriptions AS s
    LEFT JOIN LATERAL (
        SELECT prefix FROM sources
        WHERE app_id = $1 AND starts_with(s.topic, prefix) AND length(s.topic) > length(prefix)
        LIMIT 1
    ) AS src ON true
), fresh AS MATERIALIZED (
    SELECT f.topic_id, f.uid,
           (SELECT u.id FROM users AS u WHERE u.id = f.uid FOR KEY SHARE) IS NOT NULL
               AS user_kept,
           (SELECT t.id FROM topics AS t WHERE t.id = f.topic_id FOR KEY SHARE) IS NOT NULL
               AS topic_kept
    FROM (SELECT DISTINCT topic_id, uid FROM staged
          WHERE uid IS NOT NULL AND topic_id IS NOT NULL) AS f
    WHERE NOT EXISTS (SELECT FROM subscriptions AS x
                      WHERE x.topic_id = f.topic_id AND x.user_id = f.uid)
), written AS (
    INSERT INTO subscriptions (topic_id, user_id)
    SELECT topic_id, uid FROM fresh
    WHERE user_kept AND topic_kept
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING 1
), lost AS (
    SELECT s.line, f.user_kept FROM staged AS s
    JOIN fresh AS f ON f.topic_id = s.topic_id AND f.uid = s.uid
                   AND NOT (f.user_kept AND f.topic_kept)
)
SELECT (SELECT count(*) FROM written) AS inserted,
       (SELECT count(*) FROM staged WHERE uid IS NOT NULL AND topic_id IS NOT NULL)
       - (SELECT count(*) FROM lost) AS known,
       (SELECT coalesce(array_agg(line ORDER BY line), '{}') FROM (
            SELECT line FROM staged WHERE uid IS NULL
            UNION ALL
            SELECT line FROM lost WHERE NOT user_kept
        ) AS unknown) AS unknown_lines,
       (SELECT coalesce(array_agg(line ORDER BY line), '{}') FROM (
            SELECT line FROM staged WHERE uid IS NOT NULL AND topic_id IS NULL AND NOT sourced
            UNION ALL
            SELECT line FROM lost WHERE user_kept
        ) AS missed) AS missed_lines,
       (SELECT coalesce(array_agg(line ORDER BY line), '{}') FROM staged
        WHERE uid IS NOT NULL AND sourced) AS sourced_lines
"""

# Index: subscriptions_pkey (keyset by topic_id, user_id). A page of the app's
# subscriptions for the export, as topic key and external user id. $1: the app.
EXPORT_SUBSCRIPTIONS_PAGE = """
SELECT s.topic_id, s.user_id AS uid, t.key AS topic, u.external_id AS user_id
FROM subscriptions AS s
JOIN topics AS t ON t.id = s.topic_id
JOIN users AS u ON u.id = s.user_id
WHERE t.app_id = $1 AND (s.topic_id, s.user_id) > ($2, $3)
ORDER BY s.topic_id, s.user_id
LIMIT $4
"""


async def insert_staged_users(conn: asyncpg.Connection, *, app_id: int) -> int:
    """Insert the staged chunk's users the app does not have (``INSERT_STAGED_USERS``);
    how many. Then ``update_staged_users``, in the same transaction."""
    status: str = await conn.execute(INSERT_STAGED_USERS, app_id)
    return int(status.split()[-1])


async def update_staged_users(conn: asyncpg.Connection, *, app_id: int) -> int:
    """Set the staged chunk's attributes on the app's users where they differ
    (``UPDATE_STAGED_USERS``); how many users changed."""
    status: str = await conn.execute(UPDATE_STAGED_USERS, app_id)
    return int(status.split()[-1]) if status.startswith("UPDATE") else 0


async def insert_staged_topics(conn: asyncpg.Connection, *, app_id: int) -> None:
    """Create the staged chunk's topics the app does not have yet
    (``INSERT_STAGED_TOPICS``); call before ``subscribe_staged``."""
    await conn.execute(INSERT_STAGED_TOPICS, app_id)


async def subscribe_staged(conn: asyncpg.Connection, *, app_id: int) -> StagedOutcome:
    """Subscribe the staged chunk's users to its topics, in the app
    (``SUBSCRIBE_STAGED``)."""
    row = await conn.fetchrow(SUBSCRIBE_STAGED, app_id)
    inserted = row["inserted"]
    return StagedOutcome(
        inserted,
        0,
        row["known"] - inserted,
        row["unknown_lines"],
        row["missed_lines"],
        row["sourced_lines"],
    )


async def export_subscriptions_page(
    conn: asyncpg.Connection, *, app_id: int, after_topic_id: int, after_user_id: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` of the app's subscriptions after (``after_topic_id``,
    ``after_user_id``), in that order (``EXPORT_SUBSCRIPTIONS_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        EXPORT_SUBSCRIPTIONS_PAGE, app_id, after_topic_id, after_user_id, limit
    )
    return rows


# Index: users_app_external_id_key (unique). A user's tags replaced whole, the user created
# if new (issue #25); checked by the caller (fanout/tags.check_tags). $2: the app.
PUT_USER_TAGS = """
INSERT INTO users (app_id, external_id, tags) VALUES ($2, $1, $3)
ON CONFLICT (app_id, external_id) DO UPDATE SET tags = EXCLUDED.tags
"""

# Index: users_app_external_id_key. No row for a user the app $2 does not have.
USER_TAGS = "SELECT tags FROM users WHERE app_id = $2 AND external_id = $1"


async def put_user_tags(
    conn: asyncpg.Connection, *, app_id: int, user: str, tags: Mapping[str, object]
) -> None:
    """Replace the tags of the app's user ``user``, creating the user if new
    (``PUT_USER_TAGS``)."""
    await conn.execute(PUT_USER_TAGS, user, app_id, tags)


async def user_tags(
    conn: asyncpg.Connection, *, app_id: int, user: str
) -> dict[str, object] | None:
    """The tags of the app's user ``user``; None for a user it does not have
    (``USER_TAGS``)."""
    row = await conn.fetchrow(USER_TAGS, user, app_id)
    return None if row is None else dict(row["tags"])
