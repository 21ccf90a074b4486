"""Recipients: users and their active devices, as delivery batches carry them.

Every read returns rows of ``(user_id, platform, wire, held_back)``, ``wire`` being the
device's JSON array already written by PostgreSQL (NULL for a user without an active
device, and for one the audience rules hold back: then ``held_back`` names the reason).
Each read applies the rules for the event ``event_id`` of category ``category``.
The rows are the asyncpg Records themselves, handed to the batch packer as they come:
this is the fan-out's hot path, and nothing is done per row in Python on the way.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from fanout.store import queries


async def topic_recipients_page(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    after_user_id: int,
    before_user_id: int,
    limit: int,
    event_id: int,
    category: str | None,
) -> list[asyncpg.Record]:
    """The next page of the topic's subscribers between ``after_user_id`` and
    ``before_user_id`` (both excluded): up to ``limit`` users, each with their devices,
    in user order (``TOPIC_RECIPIENTS_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.TOPIC_RECIPIENTS_PAGE,
        topic_id,
        after_user_id,
        before_user_id,
        limit,
        event_id,
        category,
    )
    return rows


async def user_recipients(
    conn: asyncpg.Connection,
    *,
    user_id: int,
    after_user_id: int,
    event_id: int,
    category: str | None,
) -> list[asyncpg.Record]:
    """One user's devices, for a 1:1 send; nothing once ``after_user_id`` is past them
    (``USER_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.USER_RECIPIENTS, user_id, after_user_id, event_id, category
    )
    return rows


async def batch_recipients(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    first_user_id: int,
    last_user_id: int,
    event_id: int,
    category: str | None,
) -> list[asyncpg.Record]:
    """A lost batch re-read: the topic's subscribers from ``first_user_id`` to
    ``last_user_id`` (both included) with their devices (``BATCH_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        queries.BATCH_RECIPIENTS, topic_id, first_user_id, last_user_id, event_id, category
    )
    return rows


async def devices_by_id(
    conn: asyncpg.Connection, *, device_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """A retry batch re-read: those of ``device_ids`` still active (``DEVICES_BY_ID``)."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.DEVICES_BY_ID, device_ids)
    return rows
