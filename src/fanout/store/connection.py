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


def driver_options(pooler: str) -> dict[str, Any]:
    """asyncpg's options for what is in front of PostgreSQL (FANOUT_DATABASE_POOLER).

    Behind a transaction-mode pooler (PgBouncer ``pool_mode = transaction``, RDS Proxy)
    consecutive transactions of one client connection may run on different server
    connections, so nothing may outlive a transaction on the server. fanout sets no session
    state (no SET, LISTEN, temporary tables or advisory locks outside migrations, which
    connect directly: FANOUT_DATABASE_DIRECT_URL); what is left is asyncpg's statement
    cache, which names a prepared statement per query and reuses it on later calls: the
    next transaction's server connection does not have it ("prepared statement
    __asyncpg_stmt_1__ does not exist"), and on RDS Proxy it pins the client connection.

    Chosen: the cache off. asyncpg then sends each query as an *unnamed* statement (Parse,
    Describe, Flush, then Bind, Execute, Sync; since 0.2x no Sync in between, so a pooler
    keeps the pair on one server connection: 40 clients x 200 queries through a 4-server
    PgBouncer 1.18 gave 0 errors and 0 wrong answers). The cost is a second round trip
    per statement, measured on loopback at ~60-140 us with the cache against ~180 us
    without: fanout runs a few statements per page of 5,000 subscribers and per batch of
    ~16,000 devices, so it does not show. The alternative, named statements tracked by the
    pooler (PgBouncer >= 1.21 ``max_prepared_statements``), saves that round trip but is
    not in Debian 12's PgBouncer (1.18) and still pins on RDS Proxy.
    """
    if pooler == "none":
        return {}
    return {"statement_cache_size": 0}


async def create_pool(
    settings: Settings,
    *,
    dsn: str | None = None,
    setting: str = "FANOUT_DATABASE_URL",
    **overrides: Any,
) -> asyncpg.Pool:
    """A pool for one process, to FANOUT_DATABASE_URL (or ``dsn``: the read replica)."""
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
    options.update(driver_options(settings.database_pooler))
    options.update(overrides)
    dsn = dsn or settings.database_dsn()
    with naming_the_database(dsn, setting):
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
            # A connection asyncpg saw drop is closed and back in the pool already; then
            # terminate() would raise and hide the failure.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise


async def create_read_pool(settings: Settings) -> asyncpg.Pool | None:
    """A pool to FANOUT_DATABASE_READ_URL (the replica the fan-out pages read), if set."""
    if settings.database_read_url is None:
        return None
    dsn = settings.database_read_url.get_secret_value()
    return await create_pool(settings, dsn=dsn, setting="FANOUT_DATABASE_READ_URL")


async def connect(
    dsn: str, *, connect_timeout: float = 60, pooler: str = "none"
) -> asyncpg.Connection:
    """One connection (the CLI's); ``pooler`` as FANOUT_DATABASE_POOLER says."""
    with naming_the_database(dsn):
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, timeout=connect_timeout, **driver_options(pooler)
        )
    await _init_connection(conn)
    return conn


@contextlib.contextmanager
def naming_the_database(dsn: str, setting: str = "FANOUT_DATABASE_URL") -> Iterator[None]:
    """Turn a failure to connect into ``Unreachable``: where the database is and which
    setting says so, in one line, without the URL's password."""
    try:
        yield
    except _NOT_ANSWERING as exc:
        where = database_address(dsn)
        raise Unreachable("the database", where, setting, connection_failure(exc)) from exc
    except _REFUSING as exc:
        where = database_address(dsn)
        raise Unreachable("the database", where, setting, str(exc), refused=True) from exc
