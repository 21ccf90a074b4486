"""Audience controls: users' preferences, their topic mutes, the frequency caps, and the
bookkeeping of the pushes the caps count.

The rules themselves are applied by the recipient reads (``recipients``), in the
fan-out's page query (``AUDIENCE_RULES``). Every function runs one statement, written in
this module with the index it relies on and named in its docstring, and takes its
parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import asyncpg

# Indexes: users_app_external_id_key, user_preferences_pkey. Bulk and single alike, one
# statement, for the users of app $2: $1 is a JSON array of {user_id (external), time_zone,
# quiet_start, quiet_end, opted_out, opted_out_categories}, each user once (the caller
# dedupes: ON CONFLICT cannot touch a row twice), the users already created. A user's
# settings are replaced whole.
UPSERT_PREFERENCES = """
INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end, opted_out,
                              opted_out_categories, updated_at)
SELECT u.id, x.time_zone, x.quiet_start, x.quiet_end, coalesce(x.opted_out, false),
       coalesce(x.opted_out_categories, '{}'), now()
FROM jsonb_to_recordset($1::jsonb) AS x (user_id text, time_zone text, quiet_start time,
                                         quiet_end time, opted_out boolean,
                                         opted_out_categories text[])
JOIN users AS u ON u.app_id = $2 AND u.external_id = x.user_id
ON CONFLICT (user_id) DO UPDATE
SET time_zone = EXCLUDED.time_zone, quiet_start = EXCLUDED.quiet_start,
    quiet_end = EXCLUDED.quiet_end, opted_out = EXCLUDED.opted_out,
    opted_out_categories = EXCLUDED.opted_out_categories, updated_at = now()
"""

# Indexes: users_app_external_id_key, user_preferences_pkey, topic_mutes_pkey (its user_id
# leads). A user's settings (NULL columns when none are set: the defaults) and their mutes
# still in force; no row for a user the app $2 does not have.
USER_PREFERENCES = """
SELECT p.time_zone, p.quiet_start, p.quiet_end, coalesce(p.opted_out, false) AS opted_out,
       coalesce(p.opted_out_categories, '{}') AS opted_out_categories,
       coalesce((
           SELECT jsonb_agg(jsonb_build_object('topic', t.key, 'until', m.until)
                            ORDER BY t.key)
           FROM topic_mutes AS m JOIN topics AS t ON t.id = m.topic_id
           WHERE m.user_id = u.id AND (m.until IS NULL OR m.until > now())
       ), '[]'::jsonb) AS mutes
FROM users AS u
LEFT JOIN user_preferences AS p ON p.user_id = u.id
WHERE u.app_id = $2 AND u.external_id = $1
"""

# Index: topic_mutes_pkey. Muting again moves until (NULL: until unmuted).
MUTE_TOPIC = """
INSERT INTO topic_mutes (user_id, topic_id, until) VALUES ($1, $2, $3)
ON CONFLICT (user_id, topic_id) DO UPDATE SET until = EXCLUDED.until, created_at = now()
"""

# Indexes: topics_app_key_key, users_app_external_id_key, topic_mutes_pkey. $3: the app.
UNMUTE_TOPIC = """
DELETE FROM topic_mutes AS m
USING topics AS t, users AS u
WHERE t.app_id = $3 AND t.key = $1 AND u.app_id = $3 AND u.external_id = $2
  AND m.topic_id = t.id AND m.user_id = u.id
"""

# Index: frequency_caps_pkey (app_id, category). $4: the app.
PUT_FREQUENCY_CAP = """
INSERT INTO frequency_caps (app_id, category, max_sends, window_seconds) VALUES ($4, $1, $2, $3)
ON CONFLICT (app_id, category) DO UPDATE
SET max_sends = EXCLUDED.max_sends, window_seconds = EXCLUDED.window_seconds,
    updated_at = now()
RETURNING (xmax = 0) AS created
"""

# Index: frequency_caps_pkey.
DELETE_FREQUENCY_CAP = "DELETE FROM frequency_caps WHERE app_id = $2 AND category = $1"

# Index: frequency_caps_pkey (the app leads).
LIST_FREQUENCY_CAPS = """
SELECT category, max_sends, window_seconds, updated_at FROM frequency_caps
WHERE app_id = $1
ORDER BY category
"""

# Indexes: events_pkey, frequency_caps_pkey. Whether the fan-out of event $2, of this
# category, must record its sends in user_sends: a cap of the event's app applies to it
# (read once per shard).
CAPS_APPLY = """
SELECT EXISTS (
    SELECT 1 FROM frequency_caps
    WHERE app_id = (SELECT app_id FROM events WHERE id = $2)
      AND (category = '*' OR category = $1::text))
"""

# Index: user_sends_by_time (BRIN). Up to $1 sends older than the longest cap's window (all
# of them when no cap is set): they can no longer count. Run by the reconciler.
PRUNE_USER_SENDS = """
DELETE FROM user_sends
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM user_sends
    WHERE sent_at < now() - make_interval(
        secs => (SELECT coalesce(max(window_seconds), 0) FROM frequency_caps))
    LIMIT $1
))
"""


@dataclass(frozen=True, slots=True)
class Preferences:
    """One user's settings to store; None and empty mean the defaults."""

    user: str  # the external id
    time_zone: str | None = None
    quiet_start: time | None = None
    quiet_end: time | None = None
    opted_out: bool = False
    opted_out_categories: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user,
            "time_zone": self.time_zone,
            "quiet_start": None if self.quiet_start is None else self.quiet_start.isoformat(),
            "quiet_end": None if self.quiet_end is None else self.quiet_end.isoformat(),
            "opted_out": self.opted_out,
            "opted_out_categories": list(self.opted_out_categories),
        }


@dataclass(frozen=True, slots=True)
class StoredPreferences:
    """A user's settings as stored (the defaults where none are), and their mutes in force
    (``[{"topic": key, "until": ISO time or None}]``)."""

    time_zone: str | None
    quiet_start: time | None
    quiet_end: time | None
    opted_out: bool
    opted_out_categories: list[str]
    mutes: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    category: str  # '*': every push
    max_sends: int
    window_seconds: int
    updated_at: datetime


async def upsert_preferences(
    conn: asyncpg.Connection, *, app_id: int, preferences: Sequence[Preferences]
) -> int:
    """Replace the settings of these (existing) users of the app, each named once; how many
    rows were written (``UPSERT_PREFERENCES``)."""
    status: str = await conn.execute(UPSERT_PREFERENCES, [p.as_json() for p in preferences], app_id)
    return int(status.split()[-1])


async def user_preferences(
    conn: asyncpg.Connection, *, app_id: int, user: str
) -> StoredPreferences | None:
    """The settings and live mutes of the app's user with this external id; None for a user
    the app does not have (``USER_PREFERENCES``)."""
    row = await conn.fetchrow(USER_PREFERENCES, user, app_id)
    if row is None:
        return None
    return StoredPreferences(
        time_zone=row["time_zone"],
        quiet_start=row["quiet_start"],
        quiet_end=row["quiet_end"],
        opted_out=row["opted_out"],
        opted_out_categories=list(row["opted_out_categories"]),
        mutes=row["mutes"],
    )


async def mute_topic(
    conn: asyncpg.Connection, *, user_id: int, topic_id: int, until: datetime | None
) -> None:
    """Mute the topic for the user until ``until`` (None: until unmuted); again moves
    ``until`` (``MUTE_TOPIC``)."""
    await conn.execute(MUTE_TOPIC, user_id, topic_id, until)


async def unmute_topic(conn: asyncpg.Connection, *, app_id: int, topic: str, user: str) -> None:
    """Unmute, by the keys in the app; not muted (or unknown) is no error
    (``UNMUTE_TOPIC``)."""
    await conn.execute(UNMUTE_TOPIC, topic, user, app_id)


async def put_frequency_cap(
    conn: asyncpg.Connection, *, app_id: int, category: str, max_sends: int, window_seconds: int
) -> bool:
    """Set the app's cap of ``category`` ('*': every push); True when it is new
    (``PUT_FREQUENCY_CAP``)."""
    created: bool = await conn.fetchval(
        PUT_FREQUENCY_CAP, category, max_sends, window_seconds, app_id
    )
    return created


async def delete_frequency_cap(conn: asyncpg.Connection, *, app_id: int, category: str) -> bool:
    """Remove the app's cap of ``category``; whether there was one
    (``DELETE_FREQUENCY_CAP``)."""
    status: str = await conn.execute(DELETE_FREQUENCY_CAP, category, app_id)
    return status.split()[-1] != "0"


async def list_frequency_caps(conn: asyncpg.Connection, *, app_id: int) -> list[FrequencyCap]:
    """Every cap of the app, by category (``LIST_FREQUENCY_CAPS``)."""
    return [FrequencyCap(**row) for row in await conn.fetch(LIST_FREQUENCY_CAPS, app_id)]


async def caps_apply(conn: asyncpg.Connection, *, event_id: int, category: str | None) -> bool:
    """Whether a frequency cap of the event's app counts the pushes of this category (None:
    uncategorised), so that the fan-out records them (``CAPS_APPLY``)."""
    applies: bool = await conn.fetchval(CAPS_APPLY, category, event_id)
    return applies


async def caps_apply_many(
    conn: asyncpg.Connection, *, events: Sequence[tuple[int, str | None]]
) -> list[bool]:
    """``caps_apply`` for each (event, category), in one pipelined round trip (the
    statement answers one row each, in order)."""
    rows = await conn.fetchmany(CAPS_APPLY, [(category, event_id) for event_id, category in events])
    return [bool(row[0]) for row in rows]


async def prune_user_sends(conn: asyncpg.Connection, *, limit: int) -> int:
    """Delete up to ``limit`` recorded pushes too old for any cap's window; how many
    (``PRUNE_USER_SENDS``)."""
    status: str = await conn.execute(PRUNE_USER_SENDS, limit)
    return int(status.split()[-1])
