"""Held releases of an event: its local-time waves and its recipients deferred by their
quiet hours, written at publish or by the fan-out's pages, released by a later plan.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store import queries


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
        queries.INSERT_WAVES,
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
    rows = await conn.fetch(queries.AUDIENCE_TIME_ZONES, topic_id, user_id)
    return [row["time_zone"] for row in rows]


async def plan_due_waves(conn: asyncpg.Connection, *, event_id: int, now: datetime) -> list[int]:
    """Take the event's held local waves due by ``now`` for planning; their numbers
    (``PLAN_DUE_WAVES``)."""
    rows = await conn.fetch(queries.PLAN_DUE_WAVES, event_id, now)
    return sorted(row["wave_no"] for row in rows)


async def release_deferred(conn: asyncpg.Connection, *, event_id: int, now: datetime) -> int | None:
    """Gather the recipients whose quiet hours ended by ``now`` into a new deferred wave,
    planned; its number, or None if nobody is due (``RELEASE_DEFERRED``)."""
    wave_no: int | None = await conn.fetchval(queries.RELEASE_DEFERRED, event_id, now)
    return wave_no


async def drop_holds(conn: asyncpg.Connection, *, event_id: int) -> None:
    """Release nothing more of a cancelled or expired event: its held waves and waiting
    recipients are dropped (``DROP_HOLDS``)."""
    await conn.execute(queries.DROP_HOLDS, event_id)


async def wave_filter(conn: asyncpg.Connection, *, event_id: int, wave_no: int) -> WaveFilter:
    """Whom the wave's shards fan out (``WAVE_FILTER``)."""
    row = await conn.fetchrow(queries.WAVE_FILTER, event_id, wave_no)
    assert row is not None, f"wave {wave_no} of event {event_id}"  # its shards refer to it
    return WaveFilter(**row)
