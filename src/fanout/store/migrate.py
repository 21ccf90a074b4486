"""Schema migrations: numbered plain-SQL files applied in order, each once.

Why not Alembic or yoyo: fanout has no ORM and its SQL is hand-written for the
queries it serves, so the migration files are the schema's source of truth and
need nothing but a ledger table and a lock. This runner is that and no more.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

from fanout.store.sources import prepare_source_role

log = logging.getLogger(__name__)
# Any constant works; it only has to be the same for every fanout process.
_MIGRATION_LOCK = 0x66616E6F7574  # "fanout"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migration files shipped in the package, in version order."""
    found = []
    for entry in resources.files("fanout.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append(Migration(version, entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(
    conn: asyncpg.Connection,
    *,
    up_to: int | None = None,
    source_role: str | None = "fanout_source",
) -> list[str]:
    """Apply what is missing (up to version ``up_to``, all by default: tests build a
    database as an earlier release left it); safe to run again and from several processes
    at once. Then, once all are applied, the sandbox sources run in, as ``source_role``
    (FANOUT_SOURCE_ROLE; None: not now), if fanout's user may make it (a warning if not:
    sources are refused, nothing else needs it)."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
        for migration in available_migrations():
            if up_to is not None and migration.version > up_to:
                break
            if migration.version in done:
                if done[migration.version]["checksum"] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.name} was changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration.name)
        sandbox = up_to is None and source_role is not None
        if sandbox and (why := await prepare_source_role(conn, role=str(source_role))):
            log.warning("sources are off: %s", why)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now
