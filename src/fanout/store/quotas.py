"""Provider rate budgets in PostgreSQL: the shared state of ``providers/quota.py``."""

from __future__ import annotations

import asyncpg

# Index: provider_quotas_pkey. quota.grant() in one atomic statement: refill the bucket
# ($3 tokens/s, at most $4) from updated_at to now ($5, the caller's clock), then take up
# to $2 whole tokens, none while paused. A new credential starts full. SET's expressions
# all read the row as it was, so the refilled amount is written out in each.
LEASE_QUOTA = """
INSERT INTO provider_quotas AS q (credential, tokens, updated_at, last_grant)
VALUES ($1, $4 - LEAST($2, floor($4)), $5, LEAST($2, floor($4)))
ON CONFLICT (credential) DO UPDATE SET
    last_grant = CASE WHEN q.paused_until > $5 THEN 0 ELSE
        LEAST($2, floor(LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3))) END,
    tokens = LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3)
        - CASE WHEN q.paused_until > $5 THEN 0 ELSE
            LEAST($2, floor(LEAST($4, q.tokens + GREATEST(0, $5 - q.updated_at) * $3))) END,
    updated_at = GREATEST(q.updated_at, $5)
RETURNING last_grant AS granted, tokens AS tokens_left, paused_until
"""

# Index: provider_quotas_pkey. A 429's Retry-After: no lease grants anything before $2.
PAUSE_QUOTA = """
INSERT INTO provider_quotas AS q (credential, tokens, updated_at, paused_until)
VALUES ($1, 0, $2, $2)
ON CONFLICT (credential) DO UPDATE SET paused_until = GREATEST(q.paused_until, $2)
"""


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
    row = await conn.fetchrow(LEASE_QUOTA, credential, want, rate, burst, now)
    return int(row["granted"]), float(row["tokens_left"]), float(row["paused_until"])


async def pause_quota(conn: asyncpg.Connection, *, credential: str, until: float) -> None:
    """Grant nothing for the credential before ``until`` (``PAUSE_QUOTA``)."""
    await conn.execute(PAUSE_QUOTA, credential, until)
