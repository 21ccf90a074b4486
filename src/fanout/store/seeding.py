"""Seeding for the demo and the benchmarks: users, subscriptions and devices made by
PostgreSQL (generate_series), so a million subscribers stream nothing through Python.

Every function runs one statement of ``queries.py`` (named in its docstring) and takes
its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from fanout.store import queries


@dataclass(frozen=True, slots=True)
class SeededIds:
    """The ids of the rows a seeding statement inserted: ``first_id`` to ``last_id``."""

    first_id: int
    last_id: int
    count: int


async def seed_users(conn: asyncpg.Connection, *, prefix: str, count: int) -> SeededIds:
    """Insert ``count`` users, external ids ``prefix`` followed by 1 to ``count``
    (``SEED_USERS``)."""
    row = await conn.fetchrow(queries.SEED_USERS, prefix, count)
    return SeededIds(row["first_id"], row["last_id"], count)


async def seed_subscriptions(
    conn: asyncpg.Connection, *, topic_id: int, first_user_id: int, last_user_id: int
) -> None:
    """Subscribe the users of ids ``first_user_id`` to ``last_user_id`` to the topic
    (``SEED_SUBSCRIPTIONS``)."""
    await conn.execute(queries.SEED_SUBSCRIPTIONS, topic_id, first_user_id, last_user_id)


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
        queries.SEED_DEVICES,
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
        queries.SEED_PREFERENCES,
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
    await conn.execute(
        queries.SEED_MUTES, first_user_id, last_user_id, from_percent, topic_id, percent
    )


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
        queries.SEED_USER_SENDS,
        first_user_id,
        last_user_id,
        from_percent,
        percent,
        sends,
        category,
        event_id,
    )
