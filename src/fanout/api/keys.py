"""API keys: ``fo_<key id>_<secret>``, shown once, stored as a hash, revocable.

The secret is 32 random bytes, so a plain SHA-256 is enough to store it: nobody can
guess a 256-bit value, and a slow password hash would only slow every request down.
The comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from fanout.store import api_keys

SCOPES = ("publish", "manage", "read")
PREFIX = "fo"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    key_id: str
    scopes: frozenset[str]
    name: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_api_key(
    conn: asyncpg.Connection, scopes: list[str], name: str = ""
) -> tuple[ApiKey, str]:
    """A new key and its token; the token is not stored and cannot be shown again."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {sorted(scopes)}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32).replace("_", "-")  # '_' separates the parts
    api_key_id = await api_keys.insert_api_key(
        conn, key_id=key_id, secret_hash=_hash(secret), scopes=sorted(set(scopes)), name=name
    )
    key = ApiKey(api_key_id, key_id, frozenset(scopes), name)
    return key, f"{PREFIX}_{key_id}_{secret}"


async def find_api_key(conn: asyncpg.Connection, token: str) -> ApiKey | None:
    """The live key this token belongs to, or None (unknown, wrong secret or revoked)."""
    parts = split_token(token)
    if parts is None:
        return None
    key_id, secret = parts
    stored = await api_keys.live_api_key(conn, key_id=key_id)
    if stored is None or not hmac.compare_digest(stored.secret_hash, _hash(secret)):
        return None
    return ApiKey(stored.id, key_id, frozenset(stored.scopes), stored.name)


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> bool:
    return await api_keys.revoke_api_key(conn, key_id=key_id)
