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


async def create_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """A pool for one process. Statement caching is off when behind a transaction-mode
    pooler (RDS Proxy, PgBouncer) is the caller's choice through ``overrides``."""
    options: dict[str, Any] = {
        "min_size": 1,
        "max_size": settings.database_pool_size,
        "init": _init_connection,
        "command_timeout": 60,
    }
    options.update(overrides)
    pool: asyncpg.Pool = await asyncpg.create_pool(settings.database_dsn(), **options)
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
