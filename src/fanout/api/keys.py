"""API keys: ``fo_<key id>_<secret>``, shown once, stored as a hash, revocable.

The secret is 32 random bytes, so a plain SHA-256 is enough to store it: nobody can
guess a 256-bit value, and a slow password hash would only slow every request down.
The comparison is constant-time.

A key belongs to one app, and everything it does is inside that app. The ``admin`` scope
manages apps, their credentials and their keys, and nothing else: it is never given with
another scope, so a key is either one app's or the deployment's administrator's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from fanout.errors import FanoutError
from fanout.store import api_keys, apps

ADMIN = "admin"
SCOPES = ("publish", "manage", "read", ADMIN)
PREFIX = "fo"


class UnknownApp(FanoutError, LookupError):
    """A key was asked for an app that does not exist."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    key_id: str
    scopes: frozenset[str]
    name: str
    app_id: int  # the app whose resources this key sees, and no other's
    app: str  # that app's key


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def check_scopes(scopes: list[str], app: str = apps.DEFAULT_APP) -> None:
    """Raise ValueError naming the rule a set of scopes (for a key of ``app``) breaks."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {sorted(scopes)}")
    if ADMIN in scopes and len(set(scopes)) > 1:
        raise ValueError(f"the '{ADMIN}' scope is given alone: an admin key manages apps only")
    if ADMIN in scopes and app != apps.DEFAULT_APP:
        # An admin key manages every app: given to one app's key, that app's owners could
        # replace another app's credentials or mint keys for it.
        raise ValueError(
            f"the '{ADMIN}' scope manages every app: it is given only to a key of "
            f"'{apps.DEFAULT_APP}', the deployment's"
        )


async def create_api_key(
    conn: asyncpg.Connection, scopes: list[str], name: str = "", *, app: str = apps.DEFAULT_APP
) -> tuple[ApiKey, str]:
    """A new key of the app ``app`` (its key) and its token; the token is not stored and
    cannot be shown again. ``UnknownApp`` if there is no such app."""
    check_scopes(scopes, app)
    found = await apps.app_by_key(conn, key=app)
    if found is None:
        raise UnknownApp(f"no app {app!r} (fanout apps list)")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32).replace("_", "-")  # '_' separates the parts
    api_key_id = await api_keys.insert_api_key(
        conn,
        app_id=found.id,
        key_id=key_id,
        secret_hash=_hash(secret),
        scopes=sorted(set(scopes)),
        name=name,
    )
    key = ApiKey(api_key_id, key_id, frozenset(scopes), name, found.id, found.key)
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
    return ApiKey(
        stored.id, key_id, frozenset(stored.scopes), stored.name, stored.app_id, stored.app
    )


async def revoke_api_key(
    conn: asyncpg.Connection, key_id: str, *, app_id: int | None = None
) -> bool:
    """Revoke a live key (of the app ``app_id``; None: of any app); False if none."""
    return await api_keys.revoke_api_key(conn, key_id=key_id, app_id=app_id)
