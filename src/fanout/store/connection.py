"""Connections to PostgreSQL: a pool per process, a single connection for the CLI, and
one line saying why when the database cannot be reached."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson

from fanout.config import Settings, Unreachable, connection_failure, database_address

# What asyncpg raises when the server cannot be reached, or answers but will not have us.
_NOT_ANSWERING = (OSError, TimeoutError, asyncpg.CannotConnectNowError)
_REFUSING = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.TooManyConnectionsError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, through orjson (asyncpg's default is str).
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    # The fan-out's page query, with the audience rules, is estimated above jit_above_cost
    # (100,000) and PostgreSQL compiled it for every page: ~110 ms of JIT for a page of
    # 5,000 subscribers that runs in ~40 ms (EXPLAIN ANALYZE, 100,000 subscribers). Every
    # statement fanout runs is short; none gains from JIT. A plain SET, not a startup
    # parameter, so that poolers (PgBouncer) that refuse unknown ones still connect.
    await conn.execute("SET jit = off")


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
    dsn = settings.database_dsn()
    with naming_the_database(dsn):
        pool: asyncpg.Pool = await asyncpg.create_pool(dsn, **options)
    return pool


# A connection that failed in one of these ways is not to be trusted with the next
# statement: after PostgreSQL restarts, asyncpg can hand back a pooled connection that
# answers "another operation is in progress" (InternalClientError) to every use.
# OperatorInterventionError: the server is shutting down, or starting up and "not yet
# accepting connections" (seen for ~1 s after `pg_ctl restart -m immediate`).
UNTRUSTWORTHY = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """``pool.acquire()``, except that a connection that fails as in ``UNTRUSTWORTHY`` is
    closed rather than given back, so the next try gets a fresh one."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except UNTRUSTWORTHY:
            conn.terminate()
            raise


async def connect(dsn: str, *, connect_timeout: float = 60) -> asyncpg.Connection:
    with naming_the_database(dsn):
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=connect_timeout)
    await _init_connection(conn)
    return conn


@contextlib.contextmanager
def naming_the_database(dsn: str) -> Iterator[None]:
    """Turn a failure to connect into ``Unreachable``: where the database is and which
    setting says so, in one line, without the URL's password."""
    try:
        yield
    except _NOT_ANSWERING as exc:
        where = database_address(dsn)
        raise Unreachable(
            "the database", where, "FANOUT_DATABASE_URL", connection_failure(exc)
        ) from exc
    except _REFUSING as exc:
        where = database_address(dsn)
        raise Unreachable(
            "the database", where, "FANOUT_DATABASE_URL", str(exc), refused=True
        ) from exc
