"""API keys as stored: a key id, the hash of its secret, its scopes, the app it belongs to;
revoked, never deleted.

Making, checking and showing keys is ``fanout.api.keys``; this is only their rows. Every
function runs one statement, written in this module with the index it relies on and
named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Index: api_keys_key_id_key (unique).
INSERT_API_KEY = """
INSERT INTO api_keys (app_id, key_id, secret_hash, scopes, name) VALUES ($5, $1, $2, $3, $4)
RETURNING id
"""

# Indexes: api_keys_key_id_key, apps_pkey.
API_KEY_BY_KEY_ID = """
SELECT k.id, k.secret_hash, k.scopes, k.name, k.app_id, a.key AS app
FROM api_keys AS k JOIN apps AS a ON a.id = k.app_id
WHERE k.key_id = $1 AND k.revoked_at IS NULL
"""

# Index: api_keys_key_id_key. $2: only a key of this app (NULL: the operator, any app's).
REVOKE_API_KEY = """
UPDATE api_keys SET revoked_at = now()
WHERE key_id = $1 AND ($2::integer IS NULL OR app_id = $2) AND revoked_at IS NULL
"""

# $1: one app's keys (NULL: every app's).
LIST_API_KEYS = """
SELECT k.key_id, k.scopes, k.name, a.key AS app, k.created_at, k.revoked_at
FROM api_keys AS k JOIN apps AS a ON a.id = k.app_id
WHERE $1::integer IS NULL OR k.app_id = $1
ORDER BY k.id
"""


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """A live key's row: what a request's token is checked against."""

    id: int
    secret_hash: bytes
    scopes: list[str]
    name: str
    app_id: int
    app: str  # the app's key


@dataclass(frozen=True, slots=True)
class ApiKeyListing:
    """A key as ``fanout apikey list`` shows it: no secret, live or since when revoked."""

    key_id: str
    scopes: list[str]
    name: str
    app: str  # the app's key
    created_at: datetime
    revoked_at: datetime | None


async def insert_api_key(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    key_id: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    name: str,
) -> int:
    """Store a new key of the app; its row id (``INSERT_API_KEY``)."""
    api_key_id: int = await conn.fetchval(INSERT_API_KEY, key_id, secret_hash, scopes, name, app_id)
    return api_key_id


async def live_api_key(conn: asyncpg.Connection, *, key_id: str) -> StoredApiKey | None:
    """The key with this id unless it is unknown or revoked (``API_KEY_BY_KEY_ID``)."""
    row = await conn.fetchrow(API_KEY_BY_KEY_ID, key_id)
    return None if row is None else StoredApiKey(**row)


async def revoke_api_key(conn: asyncpg.Connection, *, key_id: str, app_id: int | None) -> bool:
    """Revoke the key at once; False if there was no live key of this id (of the app
    ``app_id``; None: of any app) (``REVOKE_API_KEY``)."""
    status: str = await conn.execute(REVOKE_API_KEY, key_id, app_id)
    return status != "UPDATE 0"


async def list_api_keys(
    conn: asyncpg.Connection, *, app_id: int | None = None
) -> list[ApiKeyListing]:
    """Every key of the app (None: of every app), live or revoked, oldest first
    (``LIST_API_KEYS``)."""
    return [ApiKeyListing(**row) for row in await conn.fetch(LIST_API_KEYS, app_id)]
