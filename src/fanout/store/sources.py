"""Sources (issue #25): topic prefixes of an app bound to a query over the app's own tables,
and ``event_members``, the users a sourced event's audience was read as when it was planned.

A source's query is the app's, so the statements that run it are built around it
(``explain_source``, ``count_source``, ``read_members``); every other function runs one
statement written in this module with the index it relies on, and takes its parameters by
name. ``fanout.sources`` checks a query before it is stored and rewrites its ``:key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store.fragments import (
    filtered_recipients_query,
    recipients_query,
    schedule_parameters,
)
from fanout.store.recipients import PageFilter


@dataclass(frozen=True, slots=True)
class Source:
    """A topic prefix of an app and the query its subscribers are read with (``:key``
    rewritten to ``$1::text``, see fanout.sources.bind_key), returning ``user_column``."""

    id: int
    app_id: int
    prefix: str
    query: str
    user_column: str
    created_at: datetime


# Index: sources_app_id_prefix_key. Adding a prefix again replaces its query.
PUT_SOURCE = """
INSERT INTO sources (app_id, prefix, query, user_column) VALUES ($1, $2, $3, $4)
ON CONFLICT (app_id, prefix) DO UPDATE
SET query = EXCLUDED.query, user_column = EXCLUDED.user_column, created_at = now()
RETURNING id, app_id, prefix, query, user_column, created_at
"""

# Index: sources_app_id_prefix_key (app_id leads).
LIST_SOURCES = """
SELECT id, app_id, prefix, query, user_column, created_at FROM sources
WHERE app_id = $1 ORDER BY prefix
"""

# Index: sources_app_id_prefix_key.
GET_SOURCE = """
SELECT id, app_id, prefix, query, user_column, created_at FROM sources
WHERE app_id = $1 AND prefix = $2
"""

# Index: sources_app_id_prefix_key. Events planned already keep the members they read.
DELETE_SOURCE = "DELETE FROM sources WHERE app_id = $1 AND prefix = $2 RETURNING id"

# Index: sources_app_id_prefix_key (the app's few sources, each prefix tried against the
# key): the source of the app $1 a topic key $2 falls under, the longest prefix first.
SOURCE_OF_KEY = """
SELECT id, app_id, prefix, query, user_column, created_at FROM sources
WHERE app_id = $1 AND starts_with($2, prefix) AND length($2) > length(prefix)
ORDER BY length(prefix) DESC LIMIT 1
"""

# Indexes: topics_pkey, then as SOURCE_OF_KEY. An event's topic's source, if any.
SOURCE_OF_TOPIC = """
SELECT s.id, s.app_id, s.prefix, s.query, s.user_column, s.created_at,
       substr(t.key, length(s.prefix) + 1) AS key
FROM topics AS t JOIN sources AS s
  ON s.app_id = t.app_id AND starts_with(t.key, s.prefix) AND length(t.key) > length(s.prefix)
WHERE t.id = $1
ORDER BY length(s.prefix) DESC LIMIT 1
"""

# Indexes: events_pkey, fanout_shards_pkey. Under the event's row lock (held to the end of
# the transaction that reads its members): whether its members are still to be read, i.e.
# nothing read yet and nothing planned (an event planned before its topic had a source
# keeps its subscriptions).
MEMBERS_UNREAD = """
SELECT e.source_prefix IS NULL
       AND NOT EXISTS (SELECT 1 FROM fanout_shards AS f WHERE f.event_id = e.id)
FROM events AS e WHERE e.id = $1
FOR UPDATE
"""

# Index: events_pkey. The event's audience is its members from now on.
MARK_SOURCED = "UPDATE events SET source_prefix = $2 WHERE id = $1"

# Index: none: a setting. A source's query runs under its own statement timeout, for the
# rest of the transaction it is read in ($1: milliseconds, as text).
LIMIT_STATEMENT_TIME = "SELECT set_config('statement_timeout', $1, true)"

# Index: none: a setting. A plan checked with sequential scans disabled shows one only
# where no index can serve (a small table gets one from the planner even with an index).
DISABLE_SEQ_SCANS = "SELECT set_config('enable_seqscan', 'off', true)"

# Index: event_members_pkey (index-only). Skips `shard_size` members from `lo` to find
# where the next shard starts, as shards.NEXT_SHARD_BOUNDARY over a topic.
NEXT_MEMBER_BOUNDARY = """
SELECT user_id FROM event_members
WHERE event_id = $1 AND user_id >= $2
ORDER BY user_id
OFFSET $3 LIMIT 1
"""

# Index: event_members_pkey (index-only). A stopped shard's members not read.
MEMBERS_LEFT = """
SELECT count(*) FROM event_members WHERE event_id = $1 AND user_id > $2 AND user_id < $3
"""

# As recipients.TOPIC_RECIPIENTS_PAGE (same parameters, same rules), over the event's
# members: event_members_pkey, an index-only range scan (event_id, user_id > cursor), then
# the same probes per user. $1 (the topic) is still what mutes are read by.
MEMBER_RECIPIENTS_PAGE = recipients_query(
    """SELECT sub.user_id FROM event_members AS sub
    WHERE sub.event_id = $5 AND sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="$1",
    event="$5",
    category="$6",
    **schedule_parameters(7),
)

# As recipients.TOPIC_FILTERED_PAGE, over the event's members: an event with a tag filter.
MEMBER_FILTERED_PAGE = filtered_recipients_query(
    """SELECT sub.user_id FROM event_members AS sub
    WHERE sub.event_id = $5 AND sub.user_id > $2 AND sub.user_id < $3 {wave_members}
    ORDER BY sub.user_id
    LIMIT $4""",
    topic="$1",
    event="$5",
    category="$6",
    **schedule_parameters(7),
)

# As recipients.BATCH_RECIPIENTS, over the event's members (event_members_pkey).
MEMBER_BATCH_RECIPIENTS = recipients_query(
    """SELECT sub.user_id FROM event_members AS sub
    WHERE sub.event_id = $4 AND sub.user_id BETWEEN $2 AND $3 {wave_members}""",
    topic="$1",
    event="$4",
    category="$5",
    **schedule_parameters(6),
)


def _source(row: asyncpg.Record | None) -> Source | None:
    return None if row is None else Source(**row)


async def put_source(
    conn: asyncpg.Connection, *, app_id: int, prefix: str, query: str, user_column: str
) -> Source:
    """Store the app's source for ``prefix`` (replacing one there) (``PUT_SOURCE``)."""
    row = await conn.fetchrow(PUT_SOURCE, app_id, prefix, query, user_column)
    source = _source(row)
    assert source is not None
    return source


async def list_sources(conn: asyncpg.Connection, *, app_id: int) -> list[Source]:
    """The app's sources by prefix (``LIST_SOURCES``)."""
    return [Source(**row) for row in await conn.fetch(LIST_SOURCES, app_id)]


async def get_source(conn: asyncpg.Connection, *, app_id: int, prefix: str) -> Source | None:
    """The app's source for exactly ``prefix`` (``GET_SOURCE``)."""
    return _source(await conn.fetchrow(GET_SOURCE, app_id, prefix))


async def delete_source(conn: asyncpg.Connection, *, app_id: int, prefix: str) -> bool:
    """Forget the app's source for ``prefix``; False if it had none (``DELETE_SOURCE``)."""
    return await conn.fetchval(DELETE_SOURCE, app_id, prefix) is not None


async def source_of_key(conn: asyncpg.Connection, *, app_id: int, key: str) -> Source | None:
    """The source the app's topic ``key`` falls under, if any (``SOURCE_OF_KEY``)."""
    return _source(await conn.fetchrow(SOURCE_OF_KEY, app_id, key))


async def source_of_topic(conn: asyncpg.Connection, *, topic_id: int) -> tuple[Source, str] | None:
    """The source the topic falls under and the rest of its key, if any
    (``SOURCE_OF_TOPIC``)."""
    row = await conn.fetchrow(SOURCE_OF_TOPIC, topic_id)
    if row is None:
        return None
    fields = dict(row)
    key = fields.pop("key")
    return Source(**fields), key


async def members_unread(conn: asyncpg.Connection, *, event_id: int) -> bool:
    """Lock the event; True if its members are still to be read (``MEMBERS_UNREAD``)."""
    return bool(await conn.fetchval(MEMBERS_UNREAD, event_id))


async def mark_sourced(conn: asyncpg.Connection, *, event_id: int, prefix: str) -> None:
    """The event's audience is now its members, read from ``prefix`` (``MARK_SOURCED``)."""
    await conn.execute(MARK_SOURCED, event_id, prefix)


async def limit_statement_time(conn: asyncpg.Connection, *, seconds: float) -> None:
    """A statement timeout for the rest of the transaction (``LIMIT_STATEMENT_TIME``)."""
    await conn.fetchval(LIMIT_STATEMENT_TIME, str(max(1, round(seconds * 1000))))


async def disable_seq_scans(conn: asyncpg.Connection) -> None:
    """No sequential scan planned where an index can serve, for the rest of the
    transaction (``DISABLE_SEQ_SCANS``)."""
    await conn.fetchval(DISABLE_SEQ_SCANS)


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


async def explain_source(conn: asyncpg.Connection, *, query: str, key: str) -> list[str]:
    """The lines of the plan of a source's ``query`` for ``key``."""
    return [row[0] for row in await conn.fetch(f"EXPLAIN {query}", key)]


async def source_columns(conn: asyncpg.Connection, *, query: str) -> list[str]:
    """The names of the columns a source's ``query`` returns (prepared, not run)."""
    statement = await conn.prepare(query)
    return [attribute.name for attribute in statement.get_attributes()]


async def count_source(
    conn: asyncpg.Connection, *, query: str, user_column: str, key: str, sample: int
) -> tuple[int, list[str]]:
    """How many users the source returns for ``key``, and the first ``sample`` of them."""
    column = _quoted(user_column)
    row = await conn.fetchrow(
        f"""SELECT count(*) AS n,
                   (array_agg(q.{column}::text ORDER BY q.{column}::text)
                    FILTER (WHERE q.{column} IS NOT NULL))[1:$2] AS ids
            FROM ({query}) AS q""",
        key,
        sample,
    )
    assert row is not None
    return row["n"], list(row["ids"] or [])


async def read_members(conn: asyncpg.Connection, *, source: Source, key: str, event_id: int) -> int:
    """Record as the event's members the app's users the source returns for ``key``
    (those with no fanout user have no device: left out); none twice. One statement: the
    ids never pass through this process. Index: users_app_external_id_key, one probe per
    id returned (or a hash join, as the planner finds cheaper)."""
    column = _quoted(source.user_column)
    status: str = await conn.execute(
        f"""INSERT INTO event_members (event_id, user_id)
            SELECT $2, u.id
            FROM ({source.query}) AS q
            JOIN users AS u ON u.app_id = $3 AND u.external_id = q.{column}::text
            ON CONFLICT DO NOTHING""",
        key,
        event_id,
        source.app_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def next_member_boundary(
    conn: asyncpg.Connection, *, event_id: int, from_user_id: int, shard_size: int
) -> int | None:
    """The first member of the next shard, ``shard_size`` members on from
    ``from_user_id``; None past the last (``NEXT_MEMBER_BOUNDARY``)."""
    hi: int | None = await conn.fetchval(NEXT_MEMBER_BOUNDARY, event_id, from_user_id, shard_size)
    return hi


async def members_left(
    conn: asyncpg.Connection, *, event_id: int, after_user_id: int, before_user_id: int
) -> int:
    """The event's members between the two (both excluded) (``MEMBERS_LEFT``)."""
    left: int = await conn.fetchval(MEMBERS_LEFT, event_id, after_user_id, before_user_id)
    return left


async def member_recipients_page(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    after_user_id: int,
    before_user_id: int,
    limit: int,
    event_id: int,
    category: str | None,
    page_filter: PageFilter,
    at: datetime | None = None,
    tag_filtered: bool = False,
) -> list[asyncpg.Record]:
    """recipients.topic_recipients_page over the event's members rather than the topic's
    subscriptions (``MEMBER_RECIPIENTS_PAGE``; with ``tag_filtered``,
    ``MEMBER_FILTERED_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        MEMBER_FILTERED_PAGE if tag_filtered else MEMBER_RECIPIENTS_PAGE,
        topic_id,
        after_user_id,
        before_user_id,
        limit,
        event_id,
        category,
        *page_filter.parameters(at),
    )
    return rows


async def member_batch_recipients(
    conn: asyncpg.Connection,
    *,
    topic_id: int,
    first_user_id: int,
    last_user_id: int,
    event_id: int,
    category: str | None,
    page_filter: PageFilter,
) -> list[asyncpg.Record]:
    """recipients.batch_recipients over the event's members (``MEMBER_BATCH_RECIPIENTS``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        MEMBER_BATCH_RECIPIENTS,
        topic_id,
        first_user_id,
        last_user_id,
        event_id,
        category,
        *page_filter.parameters(None),
    )
    return rows
