"""API keys as stored: a key id, the hash of its secret, its scopes; revoked, never deleted.

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
INSERT INTO api_keys (key_id, secret_hash, scopes, name) VALUES ($1, $2, $3, $4)
RETURNING id
"""

# Index: api_keys_key_id_key.
API_KEY_BY_KEY_ID = """
SELECT id, secret_hash, scopes, name FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL
"""

# Index: api_keys_key_id_key.
REVOKE_API_KEY = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"

LIST_API_KEYS = """
SELECT key_id, scopes, name, created_at, revoked_at FROM api_keys ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    """A live key's row: what a request's token is checked against."""

    id: int
    secret_hash: bytes
    scopes: list[str]
    name: str


@dataclass(frozen=True, slots=True)
class ApiKeyListing:
    """A key as ``fanout apikey list`` shows it: no secret, live or since when revoked."""

    key_id: str
    scopes: list[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None


async def insert_api_key(
    conn: asyncpg.Connection, *, key_id: str, secret_hash: bytes, scopes: Sequence[str], name: str
) -> int:
    """Store a new key; its row id (``INSERT_API_KEY``)."""
    api_key_id: int = await conn.fetchval(INSERT_API_KEY, key_id, secret_hash, scopes, name)
    return api_key_id


async def live_api_key(conn: asyncpg.Connection, *, key_id: str) -> StoredApiKey | None:
    """The key with this id unless it is unknown or revoked (``API_KEY_BY_KEY_ID``)."""
    row = await conn.fetchrow(API_KEY_BY_KEY_ID, key_id)
    return None if row is None else StoredApiKey(**row)


async def revoke_api_key(conn: asyncpg.Connection, *, key_id: str) -> bool:
    """Revoke the key at once; False if there was no live key of this id (``REVOKE_API_KEY``)."""
    status: str = await conn.execute(REVOKE_API_KEY, key_id)
    return status != "UPDATE 0"


async def list_api_keys(conn: asyncpg.Connection) -> list[ApiKeyListing]:
    """Every key, live or revoked, oldest first (``LIST_API_KEYS``)."""
    return [ApiKeyListing(**row) for row in await conn.fetch(LIST_API_KEYS)]
