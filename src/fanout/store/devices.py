"""Devices: registered (or refreshed) by their token, deleted, deactivated when a push
service says the token is dead.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from fanout.store import queries


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    id: int
    created: bool  # False: the token was known, and its row updated


async def upsert_device(
    conn: asyncpg.Connection,
    *,
    user_id: int,
    platform: str,
    token: str,
    web_push_p256dh: str | None,
    web_push_auth: str | None,
    locale: str | None,
) -> RegisteredDevice:
    """Register a device, or refresh the one with this (platform, token): its user, keys
    and locale are set and it is active again (``UPSERT_DEVICE``)."""
    row = await conn.fetchrow(
        queries.UPSERT_DEVICE, user_id, platform, token, web_push_p256dh, web_push_auth, locale
    )
    return RegisteredDevice(**row)


async def delete_device(conn: asyncpg.Connection, *, device_id: int) -> bool:
    """Delete the device; False if there was none (``DELETE_DEVICE``)."""
    status: str = await conn.execute(queries.DELETE_DEVICE, device_id)
    return status != "DELETE 0"


async def deactivate_devices(
    conn: asyncpg.Connection, *, device_ids: Sequence[int], reason: str
) -> None:
    """Deactivate these devices (dead tokens), with the reason, in one statement
    (``DEACTIVATE_DEVICES``)."""
    await conn.execute(queries.DEACTIVATE_DEVICES, device_ids, reason)
