"""The bulk import's staging tables: a chunk of rows lands in a TEMP table by COPY, then
one set-based statement of the target table's module (``devices.upsert_staged_devices``,
``subscriptions.upsert_staged_users``, ``subscriptions.subscribe_staged``) moves it.

TEMP: private to the connection, never WAL-logged, nothing to migrate; ON COMMIT DELETE
ROWS empties it when the chunk's transaction ends (commit, or the dry run's rollback), so
a chunk never sees the last one's rows. COPY in binary (asyncpg's
``copy_records_to_table``), not an INSERT per row. ``line`` is the row's line in the file,
kept so that a reject found by the database (an unknown user) names it.

The foreign keys' per-row triggers: the chunk's statements check each foreign key of the
rows they write set-based, and take the lock its trigger would (store/devices.py's
UPSERT_STAGED_DEVICES, subscriptions.py's SUBSCRIBE_STAGED, apps.lock_app_key), so a chunk
may run with ``session_replication_role = replica`` (SET LOCAL: this transaction, this
connection; every other writer keeps the triggers). ``may_skip_fk_triggers`` allows it
only if the role may set it and the tables hold exactly the foreign keys those statements
check and no trigger of anyone's: one added later is never skipped silently.

Holds DDL, COPY, SET LOCAL and that catalog check only, no statement of the kind
tests/unit/test_store.py checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from fanout.user_attributes import USER_ATTRIBUTES

# The tables a chunk writes, and the foreign keys of theirs the chunk's statements check
# themselves (each name: the constraint; what checks it in brackets).
WRITTEN_TABLES = ("users", "topics", "devices", "subscriptions")
CHECKED_FOREIGN_KEYS = frozenset(
    {
        "users_app_id_fkey",  # apps.lock_app_key
        "topics_app_id_fkey",  # apps.lock_app_key
        "devices_app_user_fkey",  # devices.UPSERT_STAGED_DEVICES
        "subscriptions_topic_id_fkey",  # subscriptions.SUBSCRIBE_STAGED
        "subscriptions_user_id_fkey",  # subscriptions.SUBSCRIBE_STAGED
    }
)

# The role may set session_replication_role (a superuser, or PostgreSQL 15's GRANT SET ON
# PARAMETER session_replication_role TO <role>) and has it at origin; the foreign keys of
# the written tables; the triggers on them that are not a foreign key's own (a user's
# trigger, a rule's).
FK_TRIGGER_STATE = """
SELECT ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        OR has_parameter_privilege('session_replication_role', 'SET'))
       AND current_setting('session_replication_role') = 'origin' AS may_set,
       array(SELECT conname::text FROM pg_constraint
             WHERE contype = 'f' AND conrelid = ANY($1::regclass[])) AS foreign_keys,
       (SELECT count(*) FROM pg_trigger
        WHERE tgrelid = ANY($1::regclass[]) AND NOT tgisinternal)
       + (SELECT count(*) FROM pg_rewrite
          WHERE ev_class = ANY($1::regclass[]) AND rulename <> '_RETURN') AS others
"""


async def may_skip_fk_triggers(conn: asyncpg.Connection) -> bool:
    """Whether a chunk may run without the foreign keys' per-row triggers (see the
    module's docstring): the role may, and the chunk's statements check every foreign key
    of the tables it writes and nothing else fires on them."""
    row = await conn.fetchrow(FK_TRIGGER_STATE, list(WRITTEN_TABLES))
    return bool(
        row["may_set"] and set(row["foreign_keys"]) == CHECKED_FOREIGN_KEYS and row["others"] == 0
    )


# kind -> (table, its columns with their types); the records COPY brings follow this order.
STAGING_COLUMNS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "users": (
        "import_users",
        (
            ("line", "bigint"),
            ("user_id", "text"),
            *((a.name, a.sql_type) for a in USER_ATTRIBUTES),
        ),
    ),
    "devices": (
        "import_devices",
        (
            ("line", "bigint"),
            ("user_id", "text"),
            ("platform", "text"),
            ("token", "text"),
            ("web_push_p256dh", "text"),
            ("web_push_auth", "text"),
            ("locale", "text"),
            ("apns_sandbox", "boolean"),
        ),
    ),
    "subscriptions": (
        "import_subscriptions",
        (("line", "bigint"), ("topic", "text"), ("user_id", "text")),
    ),
}


async def stage(
    conn: asyncpg.Connection,
    *,
    kind: str,
    records: Sequence[tuple[Any, ...]],
    skip_fk_triggers: bool = False,
) -> None:
    """Put a chunk of validated rows into ``kind``'s staging table (made on first use on
    this connection); call inside the chunk's transaction. ``skip_fk_triggers`` (only
    where ``may_skip_fk_triggers``): the rest of the transaction runs without the
    foreign keys' per-row triggers, its statements checking them."""
    table, columns = STAGING_COLUMNS[kind]
    ddl = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
    # No JIT for the chunk's statements (SET LOCAL: this transaction only): their cost
    # estimate, 20,000 index probes, is over jit_above_cost, and compiling took ~100 ms of
    # a ~2 s statement (EXPLAIN ANALYZE, 20,000 devices) to save nothing measurable.
    replica = "SET LOCAL session_replication_role = replica; " if skip_fk_triggers else ""
    await conn.execute(
        f"SET LOCAL jit = off; {replica}"
        f"CREATE TEMP TABLE IF NOT EXISTS {table} ({ddl}) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(table, records=records, columns=[name for name, _ in columns])


async def restore_fk_triggers(conn: asyncpg.Connection) -> None:
    """The foreign keys' triggers on again for the rest of the transaction, after a
    chunk's statements staged with ``skip_fk_triggers``: a caller whose own transaction
    holds the chunk's (a savepoint then) gets its triggers back."""
    await conn.execute("SET LOCAL session_replication_role = origin")
