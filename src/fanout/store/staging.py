"""The bulk import's staging tables: a chunk of rows lands in a TEMP table by COPY, then
one set-based statement of the target table's module (``devices.upsert_staged_devices``,
``subscriptions.upsert_staged_users``, ``subscriptions.subscribe_staged``) moves it.

TEMP: private to the connection, never WAL-logged, nothing to migrate; ON COMMIT DELETE
ROWS empties it when the chunk's transaction ends (commit, or the dry run's rollback), so
a chunk never sees the last one's rows. COPY in binary (asyncpg's
``copy_records_to_table``), not an INSERT per row. ``line`` is the row's line in the file,
kept so that a reject found by the database (an unknown user) names it.

Holds DDL and COPY only, no statement of the kind tests/unit/test_store.py checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from fanout.user_attributes import USER_ATTRIBUTES

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


async def stage(conn: asyncpg.Connection, *, kind: str, records: Sequence[tuple[Any, ...]]) -> None:
    """Put a chunk of validated rows into ``kind``'s staging table (made on first use on
    this connection); call inside the chunk's transaction."""
    table, columns = STAGING_COLUMNS[kind]
    ddl = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
    # No JIT for the chunk's statements (SET LOCAL: this transaction only): their cost
    # estimate, 20,000 index probes, is over jit_above_cost, and compiling took ~100 ms of
    # a ~2 s statement (EXPLAIN ANALYZE, 20,000 devices) to save nothing measurable.
    await conn.execute(
        "SET LOCAL jit = off; "
        f"CREATE TEMP TABLE IF NOT EXISTS {table} ({ddl}) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(table, records=records, columns=[name for name, _ in columns])
