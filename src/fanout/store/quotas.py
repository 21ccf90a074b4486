"""Provider rate budgets in PostgreSQL: the shared state of ``providers/quota.py``."""

from __future__ import annotations

import asyncpg

from fanout.store import queries


async def lease_quota(
    conn: asyncpg.Connection,
    *,
    credential: str,
    want: int,
    rate: float,
    burst: float,
    now: float,
) -> tuple[int, float, float]:
    """Refill the credential's bucket to ``now`` and take up to ``want`` tokens
    (``LEASE_QUOTA``): (granted, tokens left, paused until)."""
    row = await conn.fetchrow(queries.LEASE_QUOTA, credential, want, rate, burst, now)
    return int(row["granted"]), float(row["tokens_left"]), float(row["paused_until"])


async def pause_quota(conn: asyncpg.Connection, *, credential: str, until: float) -> None:
    """Grant nothing for the credential before ``until`` (``PAUSE_QUOTA``)."""
    await conn.execute(queries.PAUSE_QUOTA, credential, until)
