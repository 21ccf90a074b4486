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

# The sandbox every source query runs in (issue #25 review): two functions in the schema
# fanout_source, owned by the source role (FANOUT_SOURCE_ROLE), made by
# ``prepare_source_role``. SECURITY DEFINER: the query runs with that role's privileges
# only, what the operator GRANTs it (the app's tables), never fanout's (api_keys,
# app_credentials, webhooks). A plain `SET LOCAL ROLE` would not hold: the query itself could
# undo it (`set_config('role', 'none', true)`, back to fanout's login role, then
# query_to_xml('SELECT … FROM api_keys')); PostgreSQL refuses to change the role inside a
# security-definer function. Read-only for the query's length, whatever it calls (a function
# that writes fails; read-only cannot be turned off inside a read-only subtransaction), and
# read-write again once it has returned, so the INSERT around it writes fanout's members in
# the same statement: the ids never leave the server. How: the query runs in a block of its
# own (a subtransaction) that sets read-only and is then rolled back by the block's own
# FOSRC error, which undoes the setting and keeps the rows already returned (the function's
# result lives outside the block, also when it spills to disk: 200,000 rows at work_mem 64kB
# tried). Not a `SET transaction_read_only = on` clause on the function, which PostgreSQL
# 16 refuses ("cannot be set locally in functions").

# query: the app's query, its :key bound to $1 (``key``, by USING); user_column: the column
# of the ids it returns, given as text. Its cost at planning (bench/source_members.py):
# 100,000 members of 200,000 users read in 1.17x the time of the query spliced in (median of
# five runs, 1.05 to 1.57, on the loaded 2-core machine), nearly all from the join's plan: the
# planner sees 1,000 rows from a function (PostgreSQL's default ROWS) and probes users' index
# per id rather than hashing the app's users. That plan stays bounded by the audience when
# an app has millions of users, so no ROWS is declared; the function's own rows cost 20-40 ms.
READ_SOURCE_FUNCTION = """
CREATE FUNCTION fanout_source.read(query text, user_column text, key text)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
AS $body$
BEGIN
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        RETURN QUERY EXECUTE format('SELECT q.%I::text FROM (%s) AS q', user_column, query)
            USING key;
        RAISE SQLSTATE 'FOSRC';
    EXCEPTION WHEN SQLSTATE 'FOSRC' THEN
        NULL;
    END;
END
$body$
"""

# The query's plan (EXPLAIN plans it: the planner may run its functions, folding constants).
PLAN_SOURCE_FUNCTION = """
CREATE FUNCTION fanout_source.plan(query text, key text)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
AS $body$
BEGIN
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        RETURN QUERY EXECUTE 'EXPLAIN ' || query USING key;
        RAISE SQLSTATE 'FOSRC';
    EXCEPTION WHEN SQLSTATE 'FOSRC' THEN
        NULL;
    END;
END
$body$
"""

# Index: none: catalogs. The sandbox's functions as they are: owner, body, and whether
# fanout's user (this connection's: migrations may connect as another) may call them.
SANDBOX_STATE = """
SELECT p.proname, pg_get_userbyid(p.proowner) AS owner, p.prosrc,
       has_function_privilege(p.oid, 'EXECUTE') AND has_schema_privilege(n.oid, 'USAGE')
         AS callable
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'fanout_source' AND p.proname IN ('read', 'plan')
"""

# Index: none: catalogs. The role, and what fanout's own role may do with it.
SOURCE_ROLE_STATE = """
SELECT r.rolsuper, r.rolbypassrls, r.rolname = current_user AS is_fanout,
       pg_has_role(current_user, r.oid, 'MEMBER') AS member,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS fanout_is_superuser
FROM pg_roles AS r WHERE r.rolname = $1
"""

# Any constant works; the same in every fanout process (as migrate._MIGRATION_LOCK).
_SANDBOX_LOCK = 0x66616E6F7574_5352  # "fanout" "SR"

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


def _function_body(definition: str) -> str:
    return definition.split("$body$")[1]


async def _sandbox_state(conn: asyncpg.Connection, role: str) -> str:
    """ "ready"; "uncallable": as it should be, but not granted to this connection's user;
    "stale": missing, or owned by another role, or of another body."""
    expected = {
        "read": _function_body(READ_SOURCE_FUNCTION),
        "plan": _function_body(PLAN_SOURCE_FUNCTION),
    }
    found = {row["proname"]: row for row in await conn.fetch(SANDBOX_STATE)}
    if found.keys() != expected.keys() or not all(
        found[name]["owner"] == role and found[name]["prosrc"] == body
        for name, body in expected.items()
    ):
        return "stale"
    return "ready" if all(row["callable"] for row in found.values()) else "uncallable"


def _role_missing(role: str, why: str) -> str:
    return (
        f"FANOUT_SOURCE_ROLE={role}: {why}; as a database superuser: CREATE ROLE "
        f"{_quoted(role)} NOLOGIN; GRANT {_quoted(role)} TO <fanout's user>; then fanout migrate"
    )


async def prepare_source_role(conn: asyncpg.Connection, *, role: str) -> str | None:
    """Make the sandbox source queries run in (``READ_SOURCE_FUNCTION``) owned by ``role``,
    creating the role (NOLOGIN, no privileges) if it is missing and fanout's user may. None
    once ready; otherwise why not, in one line naming FANOUT_SOURCE_ROLE (sources are then
    refused; nothing else depends on it). Idempotent, and a read of the catalogs only when
    the sandbox is as it should be. Roles are cluster-wide: one made by another database's
    fanout (or a test run beside this one) is used as it is."""
    if await _sandbox_state(conn, role) == "ready":
        return None
    state = await conn.fetchrow(SOURCE_ROLE_STATE, role)
    if state is None:
        try:
            await conn.execute(f"CREATE ROLE {_quoted(role)} NOLOGIN")
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            pass  # made at the same moment by another fanout on this cluster
        except asyncpg.InsufficientPrivilegeError:
            return _role_missing(role, "no such database role, and fanout's user may not create it")
        state = await conn.fetchrow(SOURCE_ROLE_STATE, role)
        assert state is not None
    if state["is_fanout"] or state["rolsuper"] or state["rolbypassrls"]:
        return (
            f"FANOUT_SOURCE_ROLE={role}: a source's query must not run as fanout's own user, a "
            "superuser or a role bypassing row security: name a role with only the grants "
            "its sources need"
        )
    if not state["member"] and not state["fanout_is_superuser"]:
        try:  # fanout's user must be able to make the role own the sandbox
            await conn.execute(f"GRANT {_quoted(role)} TO CURRENT_USER")
        except asyncpg.InsufficientPrivilegeError:
            return _role_missing(role, "fanout's user is not a member of it")
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SANDBOX_LOCK)
            sandbox = await _sandbox_state(conn, role)
            if sandbox == "ready":
                return None  # made while this waited
            fanout_user = _quoted(await conn.fetchval("SELECT current_user"))
            if sandbox == "uncallable":  # made by another user of fanout's: granted to this one too
                await conn.execute(
                    f"""SET LOCAL ROLE {_quoted(role)};
                        GRANT EXECUTE ON FUNCTION fanout_source.read(text, text, text),
                            fanout_source.plan(text, text) TO {fanout_user};
                        GRANT USAGE ON SCHEMA fanout_source TO {fanout_user};
                        RESET ROLE"""
                )
                return None
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'fanout_source'"
            )
            if owner is not None and owner != role:  # FANOUT_SOURCE_ROLE changed: made anew
                try:
                    await conn.execute("DROP SCHEMA fanout_source CASCADE")
                except asyncpg.InsufficientPrivilegeError:
                    return (
                        f"FANOUT_SOURCE_ROLE={role}: the schema fanout_source is owned by "
                        f"{owner}, which fanout's user may not drop: DROP SCHEMA fanout_source "
                        "CASCADE as its owner, then fanout migrate"
                    )
            await conn.execute(
                f"""DROP SCHEMA IF EXISTS fanout_source CASCADE;
                    CREATE SCHEMA fanout_source AUTHORIZATION {_quoted(role)};
                    SET LOCAL ROLE {_quoted(role)};
                    {READ_SOURCE_FUNCTION};
                    {PLAN_SOURCE_FUNCTION};
                    REVOKE ALL ON FUNCTION fanout_source.read(text, text, text),
                        fanout_source.plan(text, text) FROM PUBLIC;
                    GRANT EXECUTE ON FUNCTION fanout_source.read(text, text, text),
                        fanout_source.plan(text, text) TO {fanout_user};
                    GRANT USAGE ON SCHEMA fanout_source TO {fanout_user};
                    RESET ROLE"""
            )
    except asyncpg.PostgresError as failure:
        # Whatever this server refuses (PostgreSQL 16 refused an earlier sandbox's function
        # clause, and migrations failed with it): sources off, said in one line, nothing
        # else held up.
        return f"FANOUT_SOURCE_ROLE={role}: the sandbox could not be made: {failure}"
    return None


async def explain_source(conn: asyncpg.Connection, *, query: str, key: str) -> list[str]:
    """The lines of the plan of a source's ``query`` for ``key``, planned in the sandbox."""
    return [row[0] for row in await conn.fetch("SELECT fanout_source.plan($1, $2)", query, key)]


async def source_columns(conn: asyncpg.Connection, *, query: str) -> list[str]:
    """The names of the columns a source's ``query`` returns (prepared, not run)."""
    statement = await conn.prepare(query)
    return [attribute.name for attribute in statement.get_attributes()]


async def count_source(
    conn: asyncpg.Connection, *, query: str, user_column: str, key: str, sample: int
) -> tuple[int, list[str]]:
    """How many users the source returns for ``key``, and the first ``sample`` of them."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n,
                  (array_agg(q.id ORDER BY q.id) FILTER (WHERE q.id IS NOT NULL))[1:$4] AS ids
           FROM fanout_source.read($1, $2, $3) AS q(id)""",
        query,
        user_column,
        key,
        sample,
    )
    assert row is not None
    return row["n"], list(row["ids"] or [])


async def read_members(conn: asyncpg.Connection, *, source: Source, key: str, event_id: int) -> int:
    """Record as the event's members the app's users the source returns for ``key``
    (those with no fanout user have no device: left out); none twice. One statement: the
    ids never pass through this process; the source's query runs in the sandbox
    (``READ_SOURCE_FUNCTION``). Index: users_app_external_id_key, one probe per id
    returned (or a hash join, as the planner finds cheaper). An id the query returns twice
    is one member: DISTINCT, not ON CONFLICT DO NOTHING, whose speculative insertion of each
    row cost 380-460 ms of PostgreSQL CPU at 100,000 members against 240-260 (the event has
    no members yet: they are read once, in the transaction that marks the event sourced)."""
    status: str = await conn.execute(
        """INSERT INTO event_members (event_id, user_id)
           SELECT DISTINCT $2::bigint, u.id
           FROM fanout_source.read($4, $5, $1) AS q(id)
           JOIN users AS u ON u.app_id = $3 AND u.external_id = q.id
           ORDER BY u.id""",
        key,
        event_id,
        source.app_id,
        source.query,
        source.user_column,
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
