"""Schema 24/25: a device's (app, user) is a user of that app, by one foreign key
(devices_app_user_fkey), and the bulk import neither writes nor locks a device it would not
change."""

from __future__ import annotations

import asyncpg
import pytest

from fanout.bulk.load import import_rows
from fanout.store import apps, connect
from fanout.store.apps import DEFAULT_APP_ID

APNS_TOKEN = "ab" * 32


async def _user(conn: asyncpg.Connection, app_id: int, external_id: str) -> int:
    user_id: int = await conn.fetchval(
        "INSERT INTO users (app_id, external_id) VALUES ($1, $2) RETURNING id", app_id, external_id
    )
    return user_id


async def test_a_device_of_another_apps_user_is_refused_by_the_database(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        other = await apps.insert_app(conn, key="other-app", name="other", settings={})
        theirs = await _user(conn, other.id, "u")
        insert = "INSERT INTO devices (app_id, user_id, platform, token) VALUES ($1, $2, 'fcm', $3)"
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="devices_app_user_fkey"):
            await conn.execute(insert, DEFAULT_APP_ID, theirs, "t1")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(insert, DEFAULT_APP_ID, theirs + 1000, "t2")  # no such user
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(insert, 999_999, theirs, "t3")  # no such app
        await conn.execute(insert, other.id, theirs, "t4")  # their own app: taken
        # Moving a device to another app's user is refused as well.
        mine = await _user(conn, DEFAULT_APP_ID, "u")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("UPDATE devices SET user_id = $1 WHERE token = 't4'", mine)
        assert await conn.fetchval("SELECT count(*) FROM devices") == 1
    finally:
        await conn.close()


async def test_deleting_a_user_deletes_their_devices_and_no_one_elses(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        gone, kept = (
            await _user(conn, DEFAULT_APP_ID, "gone"),
            await _user(conn, DEFAULT_APP_ID, "k"),
        )
        await conn.executemany(
            "INSERT INTO devices (app_id, user_id, platform, token) VALUES ($1, $2, 'fcm', $3)",
            [
                (DEFAULT_APP_ID, gone, "g1"),
                (DEFAULT_APP_ID, gone, "g2"),
                (DEFAULT_APP_ID, kept, "k1"),
            ],
        )
        await conn.execute("DELETE FROM users WHERE id = $1", gone)
        assert await conn.fetch("SELECT token FROM devices") == [("k1",)]
    finally:
        await conn.close()


async def test_a_second_import_of_the_same_devices_waits_on_no_locked_device(
    database_url: str,
) -> None:
    """Another transaction holds every device locked (a delivery deactivating them, say):
    the same rows imported again change nothing, so they must not wait for it (lock_timeout
    makes a wait an error instead of a hang)."""
    conn, holder = await connect(database_url), await connect(database_url)
    try:
        records = [
            (2, {"user_id": "a", "platform": "fcm", "token": "t1", "locale": "de"}),
            (3, {"user_id": "a", "platform": "apns", "token": APNS_TOKEN}),
            (
                4,
                {
                    "user_id": "b",
                    "platform": "webpush",
                    "token": "https://push.example/1",
                    "web_push_p256dh": "K",
                    "web_push_auth": "A",
                },
            ),
        ]
        users = [(1, {"user_id": "a"}), (2, {"user_id": "b"})]
        await import_rows(conn, kind="users", app_id=DEFAULT_APP_ID, numbered=users)
        await import_rows(conn, kind="devices", app_id=DEFAULT_APP_ID, numbered=records)
        async with holder.transaction():
            await holder.execute("SELECT FROM devices FOR UPDATE")
            await conn.execute("SET lock_timeout = '5s'")
            again = await import_rows(conn, kind="devices", app_id=DEFAULT_APP_ID, numbered=records)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)
    finally:
        await holder.close()
        await conn.close()
