"""Audience controls: users' preferences, their topic mutes, the frequency caps, and the
bookkeeping of the pushes the caps count.

The rules themselves are applied by the recipient reads (``recipients``), in the
fan-out's page query (``queries.AUDIENCE_RULES``). Every function runs one statement of
``queries.py`` (named in its docstring, where the index it relies on is written) and
takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import asyncpg

from fanout.store import queries


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
    conn: asyncpg.Connection, *, preferences: Sequence[Preferences]
) -> int:
    """Replace the settings of these (existing) users, each named once; how many rows were
    written (``UPSERT_PREFERENCES``)."""
    status: str = await conn.execute(queries.UPSERT_PREFERENCES, [p.as_json() for p in preferences])
    return int(status.split()[-1])


async def user_preferences(conn: asyncpg.Connection, *, user: str) -> StoredPreferences | None:
    """The settings and live mutes of the user with this external id; None for an unknown
    user (``USER_PREFERENCES``)."""
    row = await conn.fetchrow(queries.USER_PREFERENCES, user)
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
    await conn.execute(queries.MUTE_TOPIC, user_id, topic_id, until)


async def unmute_topic(conn: asyncpg.Connection, *, topic: str, user: str) -> None:
    """Unmute, by the keys; not muted (or unknown) is no error (``UNMUTE_TOPIC``)."""
    await conn.execute(queries.UNMUTE_TOPIC, topic, user)


async def put_frequency_cap(
    conn: asyncpg.Connection, *, category: str, max_sends: int, window_seconds: int
) -> bool:
    """Set the cap of ``category`` ('*': every push); True when it is new
    (``PUT_FREQUENCY_CAP``)."""
    created: bool = await conn.fetchval(
        queries.PUT_FREQUENCY_CAP, category, max_sends, window_seconds
    )
    return created


async def delete_frequency_cap(conn: asyncpg.Connection, *, category: str) -> bool:
    """Remove the cap of ``category``; whether there was one (``DELETE_FREQUENCY_CAP``)."""
    status: str = await conn.execute(queries.DELETE_FREQUENCY_CAP, category)
    return status.split()[-1] != "0"


async def list_frequency_caps(conn: asyncpg.Connection) -> list[FrequencyCap]:
    """Every cap, by category (``LIST_FREQUENCY_CAPS``)."""
    return [FrequencyCap(**row) for row in await conn.fetch(queries.LIST_FREQUENCY_CAPS)]


async def caps_apply(conn: asyncpg.Connection, *, category: str | None) -> bool:
    """Whether a frequency cap counts the pushes of this category (None: uncategorised),
    so that the fan-out records them (``CAPS_APPLY``)."""
    applies: bool = await conn.fetchval(queries.CAPS_APPLY, category)
    return applies


async def prune_user_sends(conn: asyncpg.Connection, *, limit: int) -> int:
    """Delete up to ``limit`` recorded pushes too old for any cap's window; how many
    (``PRUNE_USER_SENDS``)."""
    status: str = await conn.execute(queries.PRUNE_USER_SENDS, limit)
    return int(status.split()[-1])
