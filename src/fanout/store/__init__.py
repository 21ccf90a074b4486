"""PostgreSQL: connections, migrations and the named queries the stages run."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from fanout.config import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, through orjson (asyncpg's default is str).
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def create_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """A pool for one process. Statement caching is off when behind a transaction-mode
    pooler (RDS Proxy, PgBouncer) is the caller's choice through ``overrides``."""
    options: dict[str, Any] = {
        "min_size": 1,
        "max_size": settings.database_pool_size,
        "init": _init_connection,
        "command_timeout": 60,
        # fanout sets no session state, so the reset query asyncpg runs on every release (a
        # round trip of UNLISTEN/RESET ALL, 5% of the API's CPU under load) has nothing to
        # undo. asyncpg still rolls back a transaction left open before calling this.
        "reset": _no_reset,
    }
    options.update(overrides)
    pool: asyncpg.Pool = await asyncpg.create_pool(settings.database_dsn(), **options)
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


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
