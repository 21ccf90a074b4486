"""Seeding for the demo and the benchmarks: users, subscriptions and devices made by
PostgreSQL (generate_series), so a million subscribers stream nothing through Python.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# Demo and benchmark seeding: server-side generate_series, so seeding a million
# subscribers streams nothing through Python.

# $3: the app the users belong to.
SEED_USERS = """
WITH inserted AS (
    INSERT INTO users (app_id, external_id)
    SELECT $3, $1 || g FROM generate_series(1, $2::integer) AS g
    RETURNING id
)
SELECT min(id) AS first_id, max(id) AS last_id FROM inserted
"""

SEED_SUBSCRIPTIONS = """
INSERT INTO subscriptions (topic_id, user_id)
SELECT $1, id FROM users WHERE id BETWEEN $2 AND $3
"""

# Tokens shaped like the real ones: APNs 64 hex digits, FCM ~160 characters, Web Push an
# endpoint URL ($5 || a unique id) with the subscription's key and auth secret ($6, $7).
# $8 lists the platforms to rotate through.
SEED_DEVICES = """
WITH inserted AS (
    INSERT INTO devices (app_id, user_id, platform, token, web_push_p256dh, web_push_auth, locale)
    SELECT u.app_id, u.id, p.platform,
           CASE p.platform
               WHEN 'apns' THEN encode(sha256(($4 || u.id || ':' || k)::bytea), 'hex')
               WHEN 'fcm' THEN 'f' || md5($4 || u.id || ':' || k) || ':APA91b'
                    || repeat(md5(u.id || ':' || k), 4)
               ELSE $5 || md5($4 || u.id || ':' || k)
           END,
           CASE WHEN p.platform = 'webpush' THEN $6 END,
           CASE WHEN p.platform = 'webpush' THEN $7 END,
           (ARRAY['en', 'en-GB', 'de', 'fr', 'pt-BR', 'ja'])[1 + (u.id + k) % 6]
    FROM users AS u
    CROSS JOIN generate_series(1, $3::integer) AS k
    CROSS JOIN LATERAL (
        SELECT ($8::text[])[1 + (u.id + k) % cardinality($8::text[])] AS platform
    ) AS p
    WHERE u.id BETWEEN $1 AND $2
    RETURNING id
)
SELECT min(id) AS first_id, max(id) AS last_id, count(*) AS devices FROM inserted
"""

# Seeding the demo's and the benchmark's preferences (server-side, as SEED_USERS): users
# $1..$2 get a time zone from $5, and by their id modulo 100: [0, $3) opted out of
# everything, [$3, $3 + $4) quiet hours around the present hour in their zone (from an
# hour ago to two hours on, crossing midnight where it falls), [$6, $6 + $7) opted out of
# category $8.
SEED_PREFERENCES = """
INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end, opted_out,
                              opted_out_categories)
SELECT u.id, z.zone,
       CASE WHEN q.quiet THEN z.hour - interval '1 hour' END,
       CASE WHEN q.quiet THEN z.hour + interval '2 hours' END,
       u.id % 100 < $3,
       CASE WHEN u.id % 100 >= $6 AND u.id % 100 < $6 + $7 THEN ARRAY[$8::text]
            ELSE '{}' END
FROM users AS u
CROSS JOIN LATERAL (
    SELECT zone, date_trunc('hour', (now() AT TIME ZONE zone)::time)::time AS hour
    FROM (SELECT ($5::text[])[1 + u.id % cardinality($5::text[])] AS zone) AS picked
) AS z
CROSS JOIN LATERAL (SELECT u.id % 100 >= $3 AND u.id % 100 < $3 + $4 AS quiet) AS q
WHERE u.id BETWEEN $1 AND $2
ON CONFLICT (user_id) DO NOTHING
"""

# Seeding mutes: of users $1..$2, those whose id modulo 100 falls in [$3, $3 + $5) mute
# topic $4, half of them until an hour from now (still in force).
SEED_MUTES = """
INSERT INTO topic_mutes (user_id, topic_id, until)
SELECT u.id, $4, CASE WHEN u.id % 2 = 0 THEN now() + interval '1 hour' END
FROM users AS u
WHERE u.id BETWEEN $1 AND $2 AND u.id % 100 >= $3 AND u.id % 100 < $3 + $5
ON CONFLICT DO NOTHING
"""

# Seeding pushes already sent: users $1..$2 whose id modulo 100 falls in [$3, $3 + $4)
# got $5 pushes of category $6 (NULL: none) an hour ago, as an earlier event $7 would
# have recorded them.
# Indexes: subscriptions_pkey, devices_active_by_user. The benchmark's Live Activity: one
# token per APNs device of the topic's subscribers, as many as its alert event sends to.
SEED_LIVE_ACTIVITY_TOKENS = """
WITH inserted AS (
    INSERT INTO live_activity_tokens (activity_id, user_id, kind, token)
    SELECT $1, d.user_id, 'activity', d.token
    FROM subscriptions AS s JOIN devices AS d ON d.user_id = s.user_id AND d.active
    WHERE s.topic_id = $2 AND d.platform = 'apns'
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

SEED_USER_SENDS = """
INSERT INTO user_sends (user_id, event_id, category, sent_at)
SELECT u.id, $7, $6::text, now() - interval '1 hour'
FROM users AS u CROSS JOIN generate_series(1, $5::integer)
WHERE u.id BETWEEN $1 AND $2 AND u.id % 100 >= $3 AND u.id % 100 < $3 + $4
"""


@dataclass(frozen=True, slots=True)
class SeededIds:
    """The ids of the rows a seeding statement inserted: ``first_id`` to ``last_id``."""

    first_id: int
    last_id: int
    count: int


async def seed_users(
    conn: asyncpg.Connection, *, app_id: int, prefix: str, count: int
) -> SeededIds:
    """Insert ``count`` users of the app, external ids ``prefix`` followed by 1 to ``count``
    (``SEED_USERS``)."""
    row = await conn.fetchrow(SEED_USERS, prefix, count, app_id)
    return SeededIds(row["first_id"], row["last_id"], count)


async def seed_subscriptions(
    conn: asyncpg.Connection, *, topic_id: int, first_user_id: int, last_user_id: int
) -> None:
    """Subscribe the users of ids ``first_user_id`` to ``last_user_id`` to the topic
    (``SEED_SUBSCRIPTIONS``)."""
    await conn.execute(SEED_SUBSCRIPTIONS, topic_id, first_user_id, last_user_id)


async def seed_devices(
    conn: asyncpg.Connection,
    *,
    first_user_id: int,
    last_user_id: int,
    per_user: int,
    token_seed: str,
    webpush_endpoint_base: str,
    web_push_p256dh: str,
    web_push_auth: str,
    platforms: Sequence[str],
) -> SeededIds:
    """Give each user of ids ``first_user_id`` to ``last_user_id`` ``per_user`` devices,
    on ``platforms`` in turn, with tokens shaped like real ones made unique by
    ``token_seed`` (``SEED_DEVICES``)."""
    row = await conn.fetchrow(
        SEED_DEVICES,
        first_user_id,
        last_user_id,
        per_user,
        token_seed,
        webpush_endpoint_base,
        web_push_p256dh,
        web_push_auth,
        list(platforms),
    )
    return SeededIds(row["first_id"], row["last_id"], row["devices"])


async def seed_preferences(
    conn: asyncpg.Connection,
    *,
    first_user_id: int,
    last_user_id: int,
    opted_out_percent: int,
    quiet_now_percent: int,
    time_zones: Sequence[str],
    category_from_percent: int,
    category_percent: int,
    category: str,
) -> None:
    """Give users ``first_user_id`` to ``last_user_id`` a time zone from ``time_zones``; by
    user id modulo 100, the first ``opted_out_percent`` opted out, the next
    ``quiet_now_percent`` with quiet hours around the present hour in their zone, and
    ``category_percent`` from ``category_from_percent`` opted out of ``category``
    (``SEED_PREFERENCES``)."""
    await conn.execute(
        SEED_PREFERENCES,
        first_user_id,
        last_user_id,
        opted_out_percent,
        quiet_now_percent,
        list(time_zones),
        category_from_percent,
        category_percent,
        category,
    )


async def seed_mutes(
    conn: asyncpg.Connection,
    *,
    first_user_id: int,
    last_user_id: int,
    from_percent: int,
    topic_id: int,
    percent: int,
) -> None:
    """Of users ``first_user_id`` to ``last_user_id``, ``percent`` of them (by id modulo
    100, from ``from_percent``) mute the topic, half for an hour (``SEED_MUTES``)."""
    await conn.execute(SEED_MUTES, first_user_id, last_user_id, from_percent, topic_id, percent)


async def seed_live_activity_tokens(
    conn: asyncpg.Connection, *, activity_id: int, topic_id: int
) -> int:
    """Give the Live Activity ``activity_id`` a push token for each APNs device of the
    topic's subscribers (the device's own token); how many (``SEED_LIVE_ACTIVITY_TOKENS``)."""
    count: int = await conn.fetchval(SEED_LIVE_ACTIVITY_TOKENS, activity_id, topic_id)
    return count


async def seed_user_sends(
    conn: asyncpg.Connection,
    *,
    first_user_id: int,
    last_user_id: int,
    from_percent: int,
    percent: int,
    sends: int,
    category: str | None,
    event_id: int,
) -> None:
    """Record ``sends`` pushes of ``category`` an hour ago, as by event ``event_id``, for
    ``percent`` of users ``first_user_id`` to ``last_user_id`` (by id modulo 100, from
    ``from_percent``) (``SEED_USER_SENDS``)."""
    await conn.execute(
        SEED_USER_SENDS,
        first_user_id,
        last_user_id,
        from_percent,
        percent,
        sends,
        category,
        event_id,
    )
