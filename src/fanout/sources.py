"""Sources (issue #25): a topic prefix of an app bound to a read-only query over the app's own
tables, returning the subscribing users' external ids for the rest of the topic's key.

``author:`` → ``SELECT follower_id::text AS user_id FROM books.follows WHERE author_id =
:key::bigint``: an event on ``author:7`` goes to the followers of author 7 the table holds
when the event is planned (read once into ``event_members``, then paged and sharded by user
id as a topic's subscriptions are, under the same checkpoints, reconciler and rules).

A query always runs in a sandbox (store.sources.READ_SOURCE_FUNCTION): as the role
FANOUT_SOURCE_ROLE, with only the privileges the operator grants it, never fanout's own
tables; read-only whatever it calls; under a statement timeout. At planning too, though the
statement around it writes the event's members.

A query is checked before it is stored (``check_source``): it names ``:key``; it runs under
FANOUT_SOURCE_CHECK_TIMEOUT_SECONDS; it returns the column named; and its plan, with
sequential scans disabled (a small table gets one from the planner even with an index),
scans no table: a query that cannot use an index would read the whole table for every event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from fanout.errors import FanoutError
from fanout.store import sources as store

# `:key`, not the `::` of a cast (`x::key` is no parameter) nor a longer name (`:keys`).
_KEY = re.compile(r"(?<![:\w]):key\b")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# A topic's first characters (identifiers.TOPIC_PATTERN), ending with a separator.
PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,98}[:._\-]$"
_PREFIX = re.compile(PREFIX_PATTERN)
MAX_QUERY_CHARS = 10_000
SAMPLE_IDS = 5


class SourcesUnavailable(FanoutError):
    """The sandbox sources run in cannot be made (FANOUT_SOURCE_ROLE): no source is taken."""


class SourceRefused(FanoutError, ValueError):
    """A source that cannot be used; ``field`` names what is wrong (prefix, query, column)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bind_key(query: str) -> str:
    """The query with each ``:key`` as ``$1::text`` (a cast of its own such as
    ``:key::bigint`` applies after it). Refused without one, with a ``$`` parameter of its
    own, or with a ``;`` (one statement only)."""
    query = query.strip()
    if not query or len(query) > MAX_QUERY_CHARS:
        raise SourceRefused("query", f"a query of 1 to {MAX_QUERY_CHARS} characters is needed")
    if re.search(r"\$\d", query):
        raise SourceRefused("query", "the query has a $ parameter: use :key for the topic's key")
    if ";" in query:
        raise SourceRefused("query", "one statement only, without ';'")
    if not _KEY.search(query):
        raise SourceRefused("query", "the query must use :key, the rest of the topic's key")
    return _KEY.sub("$1::text", query)


def check_column(column: str) -> str:
    """A plain column name (what the query's SELECT names it)."""
    if not _COLUMN.match(column):
        raise SourceRefused("column", f"{column!r} is not a plain column name")
    return column


def check_prefix(prefix: str) -> str:
    """A topic prefix: a topic's characters, ending with a separator (``author:``)."""
    if not _PREFIX.match(prefix):
        raise SourceRefused(
            "prefix",
            f"{prefix!r} is not a topic prefix: a letter or digit, then letters, digits, "
            "'_', '.', ':', '-', ending with ':', '.', '_' or '-' (e.g. 'author:')",
        )
    return prefix


def sequential_scan(plan: list[str]) -> str | None:
    """The plan's first line scanning a table sequentially, stripped; None if it has none."""
    for line in plan:
        if "Seq Scan on " in line:
            return line.strip().removeprefix("->").strip()
    return None


@dataclass(frozen=True, slots=True)
class SourceSample:
    """What a source returns for one key: how many users, and the first few of them."""

    users: int
    sample: list[str]


async def run_checked(
    conn: asyncpg.Connection,
    *,
    query: str,
    user_column: str,
    key: str,
    time_limit: float,
    role: str,
) -> SourceSample:
    """Check a source's query (bound with ``bind_key``) as ``check_source`` says, and run
    it for ``key``: in the sandbox, as ``role`` (made first if need be), read-only, under
    ``time_limit`` seconds. Raises SourceRefused, or SourcesUnavailable."""
    if why := await store.prepare_source_role(conn, role=role):
        raise SourcesUnavailable(why)
    try:
        # Read-only around the sandbox as well: the column names are read (prepared, not
        # run) with fanout's role, which nothing here may use to write.
        async with conn.transaction(readonly=True):
            await store.limit_statement_time(conn, seconds=time_limit)
            columns = await store.source_columns(conn, query=query)
            if user_column not in columns:
                raise SourceRefused(
                    "column",
                    f"the query returns no column {user_column!r} (it returns "
                    f"{', '.join(columns) or 'none'})",
                )
            await store.disable_seq_scans(conn)
            if line := sequential_scan(await store.explain_source(conn, query=query, key=key)):
                raise SourceRefused(
                    "query",
                    f"refused: the plan scans the table: {line}; index what the query "
                    "filters on (e.g. CREATE INDEX ON the table (the :key column))",
                )
            users, sample = await store.count_source(
                conn, query=query, user_column=user_column, key=key, sample=SAMPLE_IDS
            )
    except asyncpg.InsufficientPrivilegeError as failure:
        raise SourceRefused(
            "query",
            f"the query failed: {failure} (it runs as FANOUT_SOURCE_ROLE={role}, with only "
            "what is granted to it: USAGE on the app's schema, SELECT on its tables)",
        ) from None
    except asyncpg.PostgresError as failure:
        raise SourceRefused("query", f"the query failed: {failure}") from None
    return SourceSample(users, sample)


async def check_source(
    conn: asyncpg.Connection,
    *,
    query: str,
    user_column: str,
    sample_key: str,
    time_limit: float,
    role: str,
) -> str:
    """The query ready to store (``:key`` bound), once checked for ``sample_key`` as
    ``role``."""
    bound = bind_key(query)
    await run_checked(
        conn,
        query=bound,
        user_column=check_column(user_column),
        key=sample_key,
        time_limit=time_limit,
        role=role,
    )
    return bound


async def read_event_members(
    conn: asyncpg.Connection, *, event_id: int, topic_id: int, time_limit: float
) -> int | None:
    """Before an event on a sourced topic is first planned: read its audience from the
    source into its members, once (a redelivered message reads nothing again), under the
    event's lock. None: the topic has no source (its subscriptions are the audience).
    The query runs in the sandbox (as FANOUT_SOURCE_ROLE, read-only), inside this writing
    transaction: a query that may not read what it names, or that writes, fails here."""
    found = await store.source_of_topic(conn, topic_id=topic_id)
    if found is None:
        return None
    source, key = found
    async with conn.transaction():
        if not await store.members_unread(conn, event_id=event_id):
            return 0
        await store.limit_statement_time(conn, seconds=time_limit)
        members = await store.read_members(conn, source=source, key=key, event_id=event_id)
        await store.mark_sourced(conn, event_id=event_id, prefix=source.prefix)
    return members
