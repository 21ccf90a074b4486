"""Apps and their push credentials as stored (``migrations/0011_apps.sql``).

Each statement is written beside the one function that runs it, with the index it relies
on; every function takes the connection and then its parameters by name, and runs that one
statement. A credential's private part is stored and returned only sealed: sealing and
opening it is ``fanout.credentials``; nothing here sees a key in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from fanout.errors import FanoutError

# The rule of the apps.key CHECK: 2-63 characters, lower case, digits and hyphens, not
# starting with a hyphen; safe in a URL, a metric label and a shell without quoting.
APP_KEY_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
# Made by the migration: owns every row from before apps, and the FANOUT_APNS_*, _FCM_*,
# _VAPID_* settings are its credentials until they are stored.
DEFAULT_APP = "default"
# Its id: migration 11 creates the apps table and inserts it first (identity 1), and it
# cannot be deleted (`fanout apps delete default` is refused), so it is 1 in every database.
DEFAULT_APP_ID = 1
PROVIDERS = ("apns", "fcm", "webpush")


@dataclass(frozen=True, slots=True)
class App:
    id: int
    key: str
    name: str
    settings: dict[str, Any]
    created_at: datetime
    default_throttle_per_minute: int | None = None  # its events' pace, unless they set one

    @property
    def allow_critical(self) -> bool | None:
        """Its own word on critical alerts (settings ``allow_critical``); None: the
        deployment's FANOUT_APNS_ALLOW_CRITICAL decides."""
        allowed = self.settings.get(ALLOW_CRITICAL)
        return None if allowed is None else bool(allowed)


@dataclass(frozen=True, slots=True)
class AppListing:
    """An app as ``fanout apps list`` shows it: with the providers it has credentials for."""

    key: str
    name: str
    created_at: datetime
    providers: list[str]


@dataclass(frozen=True, slots=True)
class CredentialListing:
    """What identifies a stored credential (never its private part)."""

    provider: str
    identity: dict[str, Any]
    kek_id: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SealedCredential:
    """A credential's row as it is stored: its private part sealed under ``kek_id``."""

    app_id: int
    provider: str
    sealed: bytes
    kek_id: str


# Index: apps_key_key (unique). Nothing when the key is taken.
INSERT_APP = """
INSERT INTO apps (key, name, settings) VALUES ($1, $2, $3)
ON CONFLICT (key) DO NOTHING
RETURNING id, key, name, settings, created_at, default_throttle_per_minute
"""


async def insert_app(
    conn: asyncpg.Connection, *, key: str, name: str, settings: dict[str, Any]
) -> App | None:
    """Create an app; None if an app has this key already (``INSERT_APP``)."""
    row = await conn.fetchrow(INSERT_APP, key, name, settings)
    return None if row is None else App(**row)


# Index: apps_key_key.
APP_BY_KEY = """
SELECT id, key, name, settings, created_at, default_throttle_per_minute FROM apps WHERE key = $1
"""


async def app_by_key(conn: asyncpg.Connection, *, key: str) -> App | None:
    """The app with this key, or None (``APP_BY_KEY``)."""
    row = await conn.fetchrow(APP_BY_KEY, key)
    return None if row is None else App(**row)


# Index: apps_key_key. The pace an event of the app takes when its publish sets none
# (NULL: unpaced); read by INSERT_EVENT as the event is written.
SET_DEFAULT_THROTTLE = """
UPDATE apps SET default_throttle_per_minute = $2 WHERE key = $1
RETURNING id, key, name, settings, created_at, default_throttle_per_minute
"""


async def set_default_throttle(
    conn: asyncpg.Connection, *, key: str, throttle_per_minute: int | None
) -> App | None:
    """Set (None: clear) the app's default pace, devices a minute; the app after, or None
    if there is no such app (``SET_DEFAULT_THROTTLE``)."""
    row = await conn.fetchrow(SET_DEFAULT_THROTTLE, key, throttle_per_minute)
    return None if row is None else App(**row)


# The key in apps.settings of an app's own allow_critical (absent: the deployment's).
ALLOW_CRITICAL = "allow_critical"

# Index: apps_key_key. Apple grants the critical-alerts entitlement per app, so whether an
# app may publish them is its own setting; NULL removes it (the deployment's default then).
SET_ALLOW_CRITICAL = """
UPDATE apps
SET settings = CASE WHEN $2::boolean IS NULL THEN settings - 'allow_critical'
                    ELSE settings || jsonb_build_object('allow_critical', $2::boolean) END
WHERE key = $1
RETURNING id, key, name, settings, created_at, default_throttle_per_minute
"""


async def set_allow_critical(
    conn: asyncpg.Connection, *, key: str, allow_critical: bool | None
) -> App | None:
    """Set (None: remove) the app's own allow_critical; the app after, or None if there is
    no such app (``SET_ALLOW_CRITICAL``)."""
    row = await conn.fetchrow(SET_ALLOW_CRITICAL, key, allow_critical)
    return None if row is None else App(**row)


# Index: apps_pkey. Asked only when a publish asks for a critical alert (rare): the
# publish path of every other notification reads nothing for it.
APP_ALLOWS_CRITICAL = "SELECT (settings -> 'allow_critical')::boolean FROM apps WHERE id = $1"


async def allows_critical(conn: asyncpg.Connection, *, app_id: int, default: bool) -> bool:
    """Whether the app may publish critical alerts: its own allow_critical when it has one,
    else ``default`` (FANOUT_APNS_ALLOW_CRITICAL) (``APP_ALLOWS_CRITICAL``)."""
    allowed: bool | None = await conn.fetchval(APP_ALLOWS_CRITICAL, app_id)
    return default if allowed is None else allowed


# Index: app_credentials_pkey (app_id leads), per app.
LIST_APPS = """
SELECT a.key, a.name, a.created_at,
       coalesce(array_agg(c.provider ORDER BY c.provider)
                FILTER (WHERE c.provider IS NOT NULL), '{}') AS providers
FROM apps AS a LEFT JOIN app_credentials AS c ON c.app_id = a.id
GROUP BY a.id
ORDER BY a.key
"""


async def list_apps(conn: asyncpg.Connection) -> list[AppListing]:
    """Every app, by key, with the providers it has credentials for (``LIST_APPS``)."""
    return [AppListing(**row) for row in await conn.fetch(LIST_APPS)]


# Index: apps_key_key. Its credentials go with it (ON DELETE CASCADE).
# Index: apps_pkey. The app's row locked FOR KEY SHARE until the transaction ends, as the
# foreign keys users(app_id) and topics(app_id) lock it for each row they check: the bulk
# import's chunk, run without those per-row triggers, takes the lock once (a deletion of
# the app waits for the chunk, then finds its users). $1: the app.
LOCK_APP_KEY = "SELECT true FROM apps WHERE id = $1 FOR KEY SHARE"


async def lock_app_key(conn: asyncpg.Connection, *, app_id: int) -> bool:
    """Lock the app's row against its deletion until the transaction ends; False if
    there is no such app (``LOCK_APP_KEY``)."""
    return bool(await conn.fetchval(LOCK_APP_KEY, app_id))


DELETE_APP = "DELETE FROM apps WHERE key = $1"


class AppInUse(FanoutError):
    """The app still owns rows (users, topics, devices, events, API keys, caps): their
    foreign keys refuse its deletion."""


async def delete_app(conn: asyncpg.Connection, *, key: str) -> bool:
    """Delete the app and its credentials; False if there was none; ``AppInUse`` while it
    owns anything (``DELETE_APP``)."""
    try:
        status: str = await conn.execute(DELETE_APP, key)
    except asyncpg.ForeignKeyViolationError:
        raise AppInUse(
            f"the app {key} still owns users, topics, events or API keys (revoked keys too)"
        ) from None
    return status != "DELETE 0"


# Index: app_credentials_pkey. Replacing a credential replaces every column of it.
UPSERT_CREDENTIAL = """
INSERT INTO app_credentials (app_id, provider, sealed, kek_id, identity)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (app_id, provider) DO UPDATE
SET sealed = excluded.sealed, kek_id = excluded.kek_id, identity = excluded.identity,
    updated_at = now()
RETURNING (xmax = 0) AS created
"""


async def upsert_credential(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    provider: str,
    sealed: bytes,
    kek_id: str,
    identity: dict[str, Any],
) -> bool:
    """Store the app's credential for the provider, replacing any; True if it is new
    (``UPSERT_CREDENTIAL``)."""
    created: bool = await conn.fetchval(
        UPSERT_CREDENTIAL, app_id, provider, sealed, kek_id, identity
    )
    return created


# Index: app_credentials_pkey.
DELETE_CREDENTIAL = "DELETE FROM app_credentials WHERE app_id = $1 AND provider = $2"


async def delete_credential(conn: asyncpg.Connection, *, app_id: int, provider: str) -> bool:
    """Remove the app's credential for the provider; False if it had none
    (``DELETE_CREDENTIAL``)."""
    status: str = await conn.execute(DELETE_CREDENTIAL, app_id, provider)
    return status != "DELETE 0"


# Index: app_credentials_pkey (app_id leads). No `sealed`: what is shown, never the key.
APP_CREDENTIALS = """
SELECT provider, identity, kek_id, updated_at FROM app_credentials
WHERE app_id = $1 ORDER BY provider
"""


async def app_credentials(conn: asyncpg.Connection, *, app_id: int) -> list[CredentialListing]:
    """What identifies each of the app's credentials, by provider (``APP_CREDENTIALS``)."""
    return [CredentialListing(**row) for row in await conn.fetch(APP_CREDENTIALS, app_id)]


# Index: apps_pkey.
APP_KEY = "SELECT key FROM apps WHERE id = $1"


async def app_key(conn: asyncpg.Connection, *, app_id: int) -> str | None:
    """The app's key, or None if there is no such app (``APP_KEY``)."""
    key: str | None = await conn.fetchval(APP_KEY, app_id)
    return key


# Index: app_credentials_pkey.
SEALED_CREDENTIAL = """
SELECT app_id, provider, sealed, kek_id FROM app_credentials
WHERE app_id = $1 AND provider = $2
"""


async def sealed_credential(
    conn: asyncpg.Connection, *, app_id: int, provider: str
) -> SealedCredential | None:
    """The app's credential for the provider, sealed, or None (``SEALED_CREDENTIAL``)."""
    row = await conn.fetchrow(SEALED_CREDENTIAL, app_id, provider)
    return None if row is None else SealedCredential(**row)


# Index: app_credentials_pkey. Locked until the transaction ends, so a credential set
# while a rotation reseals it is neither lost nor sealed under the old key again.
LOCK_SEALED_CREDENTIAL = """
SELECT app_id, provider, sealed, kek_id FROM app_credentials
WHERE app_id = $1 AND provider = $2
FOR UPDATE
"""


async def lock_sealed_credential(
    conn: asyncpg.Connection, *, app_id: int, provider: str
) -> SealedCredential | None:
    """The credential, sealed, its row locked for the transaction; None if it is gone
    (``LOCK_SEALED_CREDENTIAL``)."""
    row = await conn.fetchrow(LOCK_SEALED_CREDENTIAL, app_id, provider)
    return None if row is None else SealedCredential(**row)


# Index: app_credentials_pkey. A rotation's reseal: the credential itself, and so
# updated_at, is unchanged.
RESEAL_CREDENTIAL = """
UPDATE app_credentials SET sealed = $3, kek_id = $4 WHERE app_id = $1 AND provider = $2
"""


async def reseal_credential(
    conn: asyncpg.Connection, *, app_id: int, provider: str, sealed: bytes, kek_id: str
) -> None:
    """Replace the credential's sealed form with one under another key
    (``RESEAL_CREDENTIAL``)."""
    await conn.execute(RESEAL_CREDENTIAL, app_id, provider, sealed, kek_id)


@dataclass(frozen=True, slots=True)
class CredentialRef:
    """Which credential, and the key that sealed it: what a rotation walks."""

    app_id: int
    provider: str
    kek_id: str


# Index: app_credentials_pkey (a full scan: one row per app and provider, a few thousand).
CREDENTIAL_REFS = "SELECT app_id, provider, kek_id FROM app_credentials ORDER BY app_id, provider"


async def credential_refs(conn: asyncpg.Connection) -> list[CredentialRef]:
    """Every stored credential and its kek id, without the sealed part
    (``CREDENTIAL_REFS``)."""
    return [CredentialRef(**row) for row in await conn.fetch(CREDENTIAL_REFS)]


# A full scan of a few thousand rows at most, once at start-up.
SEALED_BY_KEK = "SELECT kek_id, count(*) AS credentials FROM app_credentials GROUP BY kek_id"


async def sealed_by_kek(conn: asyncpg.Connection) -> dict[str, int]:
    """How many credentials each key sealed, by kek id (``SEALED_BY_KEK``)."""
    return {row["kek_id"]: row["credentials"] for row in await conn.fetch(SEALED_BY_KEK)}
