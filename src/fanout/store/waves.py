"""Held releases of an event: its local-time waves and its recipients deferred by their
quiet hours, written at publish or by the fan-out's pages, released by a later plan.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Index: event_waves_pkey. A deliver_at_local event's waves, written with the event.
INSERT_WAVES = """
INSERT INTO event_waves (event_id, wave_no, kind, release_at, zones, catch_all)
SELECT $1, w.wave_no, 'local', w.release_at, string_to_array(w.zones, ' '), w.catch_all
FROM unnest($2::integer[], $3::timestamptz[], $4::text[], $5::boolean[])
     AS w (wave_no, release_at, zones, catch_all)
"""

# Indexes: subscriptions_pkey, user_preferences_pkey. The distinct time zones of an
# audience (a topic's subscribers, or one user): a few hundred at most (IANA has ~600),
# read once at publish to plan a deliver_at_local event's waves.
AUDIENCE_TIME_ZONES = """
SELECT DISTINCT p.time_zone
FROM subscriptions AS s JOIN user_preferences AS p ON p.user_id = s.user_id
WHERE s.topic_id = $1 AND p.time_zone IS NOT NULL
UNION
SELECT time_zone FROM user_preferences WHERE user_id = $2 AND time_zone IS NOT NULL
"""

# Index: event_waves_held. The local waves whose time has come ($2: now), taken for
# planning under the event's lock; their numbers.
PLAN_DUE_WAVES = """
UPDATE event_waves AS w SET status = 'planned'
WHERE w.event_id = $1 AND w.status = 'held' AND w.release_at <= $2
RETURNING w.wave_no
"""

# Indexes: deferred_recipients_waiting, event_waves_pkey. Recipients whose quiet hours
# have ended by $2 become one 'deferred' wave (numbered after the event's last), planned
# at once; returns its number, or nothing when nobody is due.
RELEASE_DEFERRED = """
WITH next AS (
    SELECT coalesce(max(wave_no), 0) + 1 AS wave_no FROM event_waves WHERE event_id = $1
), released AS (
    UPDATE deferred_recipients AS d SET wave_no = next.wave_no
    FROM next
    WHERE d.event_id = $1 AND d.wave_no IS NULL AND d.release_at <= $2
    RETURNING d.user_id
)
INSERT INTO event_waves (event_id, wave_no, kind, release_at, status)
SELECT $1, next.wave_no, 'deferred', $2, 'planned' FROM next
WHERE EXISTS (SELECT 1 FROM released)
RETURNING wave_no
"""

# Indexes: event_waves_held, deferred_recipients_waiting. A cancelled or expired event
# releases nothing more: its held waves are dropped, its waiting recipients too (-1).
DROP_HOLDS = """
WITH waves AS (
    UPDATE event_waves SET status = 'dropped' WHERE event_id = $1 AND status = 'held'
)
UPDATE deferred_recipients SET wave_no = -1 WHERE event_id = $1 AND wave_no IS NULL
"""

# Index: event_waves_pkey. What a shard of a wave filters its subscribers by: a local
# wave's zones (or, for the catch-all, the zones of the other local waves, which its
# recipients are not in); a deferred wave: its number (deferred_recipients).
WAVE_FILTER = """
SELECT w.kind,
       CASE WHEN w.kind = 'local' AND NOT w.catch_all THEN w.zones END AS zones_in,
       CASE WHEN w.kind = 'local' AND w.catch_all THEN coalesce(
           (SELECT array_agg(z) FROM event_waves AS o, unnest(o.zones) AS z
            WHERE o.event_id = w.event_id AND o.kind = 'local' AND o.wave_no <> w.wave_no),
           '{}') END AS zones_not_in
FROM event_waves AS w WHERE w.event_id = $1 AND w.wave_no = $2
"""


@dataclass(frozen=True, slots=True)
class WaveFilter:
    """Whom a wave's shards fan out: a local wave's zones (``zones_in``), or, for the
    catch-all, the zones its recipients are not in (``zones_not_in``); a deferred wave
    (``kind`` 'deferred') its own recipients."""

    kind: str
    zones_in: list[str] | None
    zones_not_in: list[str] | None


@dataclass(frozen=True, slots=True)
class PlannedWave:
    """A wave to plan, as publish writes it."""

    release_at: datetime
    zones: Sequence[str]
    catch_all: bool


async def insert_waves(
    conn: asyncpg.Connection, *, event_id: int, waves: Sequence[PlannedWave]
) -> None:
    """Write a deliver_at_local event's waves, numbered from 1, held (``INSERT_WAVES``)."""
    await conn.execute(
        INSERT_WAVES,
        event_id,
        list(range(1, len(waves) + 1)),
        [w.release_at for w in waves],
        [" ".join(w.zones) for w in waves],  # IANA names hold no spaces
        [w.catch_all for w in waves],
    )


async def audience_time_zones(
    conn: asyncpg.Connection, *, topic_id: int | None, user_id: int | None
) -> list[str]:
    """The distinct time zones set by a topic's subscribers, or by one user
    (``AUDIENCE_TIME_ZONES``)."""
    rows = await conn.fetch(AUDIENCE_TIME_ZONES, topic_id, user_id)
    return [row["time_zone"] for row in rows]


async def plan_due_waves(conn: asyncpg.Connection, *, event_id: int, now: datetime) -> list[int]:
    """Take the event's held local waves due by ``now`` for planning; their numbers
    (``PLAN_DUE_WAVES``)."""
    rows = await conn.fetch(PLAN_DUE_WAVES, event_id, now)
    return sorted(row["wave_no"] for row in rows)


async def release_deferred(conn: asyncpg.Connection, *, event_id: int, now: datetime) -> int | None:
    """Gather the recipients whose quiet hours ended by ``now`` into a new deferred wave,
    planned; its number, or None if nobody is due (``RELEASE_DEFERRED``)."""
    wave_no: int | None = await conn.fetchval(RELEASE_DEFERRED, event_id, now)
    return wave_no


async def drop_holds(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Release nothing more of a cancelled or expired event: its held waves and waiting
    recipients are dropped (``DROP_HOLDS``)."""
    await conn.execute(DROP_HOLDS, event_id)


async def wave_filter(conn: asyncpg.Connection, *, event_id: int, wave_no: int) -> WaveFilter:
    """Whom the wave's shards fan out (``WAVE_FILTER``)."""
    row = await conn.fetchrow(WAVE_FILTER, event_id, wave_no)
    assert row is not None, f"wave {wave_no} of event {event_id}"  # its shards refer to it
    return WaveFilter(**row)
