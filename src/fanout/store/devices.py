"""Devices: registered (or refreshed) by their token, deleted, deactivated when a push
service says the token is dead.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# Index: devices_pkey. One statement for all of a batch's dead tokens.
DEACTIVATE_DEVICES = """
UPDATE devices
SET active = false, deactivated_at = now(), updated_at = now(), deactivated_reason = $2
WHERE id = ANY($1::bigint[]) AND active
"""

# Index: devices_app_platform_token_key (unique). The same token again in the same app
# updates the row (it may have moved to another of the app's users, changed locale or come
# back after being deactivated); in another app it is another device. $1 is a user of the
# app $7. xmax = 0 only on a freshly inserted row: that is how the caller tells 201 from 200.
UPSERT_DEVICE = """
INSERT INTO devices (app_id, user_id, platform, token, web_push_p256dh, web_push_auth, locale,
                     apns_sandbox)
VALUES ($7, $1, $2, $3, $4, $5, $6, $8)
ON CONFLICT (app_id, platform, token) DO UPDATE
SET user_id = EXCLUDED.user_id, web_push_p256dh = EXCLUDED.web_push_p256dh,
    apns_sandbox = EXCLUDED.apns_sandbox,
    web_push_auth = EXCLUDED.web_push_auth, locale = EXCLUDED.locale, active = true,
    updated_at = now(), deactivated_at = NULL, deactivated_reason = NULL
RETURNING id, (xmax = 0) AS created
"""

# Index: devices_pkey. Another app's device is not found.
DELETE_DEVICE = "DELETE FROM devices WHERE id = $1 AND app_id = $2"


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    id: int
    created: bool  # False: the token was known, and its row updated


async def upsert_device(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    user_id: int,
    platform: str,
    token: str,
    web_push_p256dh: str | None,
    web_push_auth: str | None,
    locale: str | None,
    apns_sandbox: bool = False,
) -> RegisteredDevice:
    """Register a device of the app's user ``user_id``, or refresh the app's one with this
    (platform, token): its user, keys and locale are set and it is active again
    (``UPSERT_DEVICE``). ``apns_sandbox``: an APNs debug build's token."""
    row = await conn.fetchrow(
        UPSERT_DEVICE,
        user_id,
        platform,
        token,
        web_push_p256dh,
        web_push_auth,
        locale,
        app_id,
        apns_sandbox,
    )
    return RegisteredDevice(**row)


async def delete_device(conn: asyncpg.Connection, *, app_id: int, device_id: int) -> bool:
    """Delete the app's device; False if the app has none of this id (``DELETE_DEVICE``)."""
    status: str = await conn.execute(DELETE_DEVICE, device_id, app_id)
    return status != "DELETE 0"


async def deactivate_devices(
    conn: asyncpg.Connection, *, device_ids: Sequence[int], reason: str
) -> None:
    """Deactivate these devices (dead tokens), with the reason, in one statement
    (``DEACTIVATE_DEVICES``)."""
    await conn.execute(DEACTIVATE_DEVICES, device_ids, reason)
