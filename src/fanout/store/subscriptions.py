"""Topics, users and who follows what: found or created by their keys, one statement per
request even for a bulk import.

Topics and users are named by their keys here (``topic``: topics.key, ``user``:
users.external_id) and by their row ids as ``topic_id`` and ``user_id``. Every function
runs one statement of ``queries.py`` (named in its docstring, where the index it relies
on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store import queries


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic a user follows, since when; ``topic_id`` is the page's cursor."""

    topic_id: int
    topic: str
    subscribed_at: datetime


async def find_or_create(conn: asyncpg.Connection, query: str, key: str) -> int:
    """Run an insert-or-find query (``UPSERT_USER``, ``UPSERT_TOPIC``) until it has an id.

    It comes back empty only when another transaction inserted the same key between
    our INSERT and SELECT; the next statement sees that row.
    """
    for _ in range(5):
        found: int | None = await conn.fetchval(query, key)
        if found is not None:
            return found
    raise RuntimeError(f"could not insert or find {key!r}")


async def find_or_create_topic(conn: asyncpg.Connection, *, topic: str) -> int:
    """The id of the topic with this key, created if new (``UPSERT_TOPIC``)."""
    return await find_or_create(conn, queries.UPSERT_TOPIC, topic)


async def find_or_create_user(conn: asyncpg.Connection, *, user: str) -> int:
    """The id of the user with this external id, created if new (``UPSERT_USER``)."""
    return await find_or_create(conn, queries.UPSERT_USER, user)


async def subscribe(conn: asyncpg.Connection, *, topic_id: int, user_id: int) -> None:
    """Subscribe the user to the topic; already subscribed is no error (``SUBSCRIBE``)."""
    await conn.execute(queries.SUBSCRIBE, topic_id, user_id)


async def unsubscribe(conn: asyncpg.Connection, *, topic: str, user: str) -> None:
    """Unsubscribe the user from the topic, by their keys; not subscribed (or unknown) is
    no error (``UNSUBSCRIBE``)."""
    await conn.execute(queries.UNSUBSCRIBE, topic, user)


async def insert_users(conn: asyncpg.Connection, *, users: Sequence[str]) -> None:
    """Create the users of these external ids that do not exist yet (``BULK_INSERT_USERS``)."""
    await conn.execute(queries.BULK_INSERT_USERS, users)


async def subscribe_users(conn: asyncpg.Connection, *, topic_id: int, users: Sequence[str]) -> int:
    """Subscribe the (existing) users of these external ids to the topic; how many were
    not subscribed before (``BULK_SUBSCRIBE``)."""
    status: str = await conn.execute(queries.BULK_SUBSCRIBE, topic_id, users)
    return int(status.split()[-1])


async def user_subscriptions_page(
    conn: asyncpg.Connection, *, user: str, after_topic_id: int, limit: int
) -> list[Subscription]:
    """Up to ``limit`` of the user's subscriptions, in topic id order from after
    ``after_topic_id`` (``USER_SUBSCRIPTIONS_PAGE``)."""
    rows = await conn.fetch(queries.USER_SUBSCRIPTIONS_PAGE, user, after_topic_id, limit)
    return [Subscription(r["topic_id"], r["key"], r["created_at"]) for r in rows]
