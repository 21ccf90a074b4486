"""Whether the database holds the schema this fanout's code expects, checked once when a
long-running process starts.

A worker started on a database never migrated used to run for ever, logging
``UndefinedTableError`` every 5 s; on a schema one migration behind, every message
failed on a missing column until it was dead-lettered. Neither heals by waiting: the
process stops with one line saying to run ``fanout migrate`` (exit status 2).
"""

from __future__ import annotations

import asyncpg

from fanout.config import ConfigError, database_address
from fanout.store.migrate import available_migrations


class SchemaNotMigrated(ConfigError):
    """The database fanout points at lacks some of the migrations shipped with its code."""


async def check_schema(
    conn: asyncpg.Connection, dsn: str, setting: str = "FANOUT_DATABASE_URL"
) -> None:
    """Raise ``SchemaNotMigrated`` unless every shipped migration is applied (a database
    migrated by a newer fanout is fine: its code may have been rolled back)."""
    where = f"the database at {database_address(dsn)} ({setting})"
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
        raise SchemaNotMigrated(f"{where} has no fanout schema: run `fanout migrate`")
    applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    missing = [m.name for m in available_migrations() if m.version not in applied]
    if missing:
        names = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise SchemaNotMigrated(
            f"{where} lacks {len(missing)} of fanout's migrations ({names}): run `fanout migrate`"
        )
