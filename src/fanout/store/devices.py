"""Devices: registered (or refreshed) by their token, deleted, deactivated when a push
service says the token is dead.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


# Index: devices_app_platform_token_key (unique), users_app_external_id_key, users_by_app.
# The bulk import's chunk (store/staging.py's import_devices) in one statement. A token
# twice in the chunk: its last line wins (ON CONFLICT cannot touch a row twice). A row
# whose user the app does not have is not written and comes back in unknown_lines. Each
# row's user is found by the index, a scalar subquery per row (matched, MATERIALIZED: once
# per chunk): joined, the planner hashed every user of the app for each chunk (a
# sequential scan of 1,000,000 users, ~0.9 of the statement's 3.3 s per 20,000 devices,
# EXPLAIN ANALYZE on the loaded 2-core machine), as its cost model prices 20,000 index
# probes above a scan; the statement then took 3.2 s median against 2.0 s this way (4
# paired runs, same chunk). A device whose every field already has the file's value is
# neither written nor locked (changed: an anti-join by devices_app_platform_token_key
# before the INSERT; ON CONFLICT DO UPDATE locks the row it conflicts with even when its
# WHERE then skips it): a second import of the same file changes 0 rows and waits on no
# one. The WHERE stays for a row another transaction wrote after this statement's snapshot.
# The foreign key devices(app_id, user_id) -> users(app_id, id), checked here for the
# rows written, set-based, as its per-row trigger checks it: the user is locked FOR KEY
# SHARE (a concurrent deletion waits for this chunk, then cascades to its devices); a user
# deleted since the snapshot is not locked (READ COMMITTED re-checks the row), and its
# lines come back in unknown_lines. So the chunk may run without the trigger
# (staging.stage's skip_fk_triggers: the trigger took 256-260 ms of a 1.5-1.8 s statement,
# EXPLAIN ANALYZE of 20,000 new devices; docs/architecture.md).
# xmax = 0 only on an inserted row. $1: the app.
UPSERT_STAGED_DEVICES = """
WITH matched AS MATERIALIZED (
    SELECT s.line, s.platform, s.token, s.web_push_p256dh, s.web_push_auth, s.locale,
           s.apns_sandbox,
           (SELECT u.id FROM users AS u WHERE u.app_id = $1 AND u.external_id = s.user_id
            LIMIT 1) AS uid
    FROM import_devices AS s
), staged AS (
    SELECT DISTINCT ON (platform, token) *
    FROM matched WHERE uid IS NOT NULL
    ORDER BY platform, token, line DESC
), changed AS MATERIALIZED (
    SELECT s.*,
           (SELECT u.id FROM users AS u WHERE u.app_id = $1 AND u.id = s.uid
            FOR KEY SHARE) IS NOT NULL AS kept
    FROM staged AS s
    WHERE (SELECT NOT d.active
                  OR (d.user_id, d.web_push_p256dh, d.web_push_auth, d.locale, d.apns_sandbox)
                     IS DISTINCT FROM (s.uid, s.web_push_p256dh, s.web_push_auth, s.locale,
                                       s.apns_sandbox)
           FROM devices AS d
           WHERE d.app_id = $1 AND d.platform = s.platform AND d.token = s.token
           LIMIT 1) IS NOT false
), written AS (
    INSERT INTO devices AS d (app_id, user_id, platform, token, web_push_p256dh,
                              web_push_auth, locale, apns_sandbox)
    SELECT $1, uid, platform, token, web_push_p256dh, web_push_auth, locale, apns_sandbox
    FROM changed WHERE kept
    ON CONFLICT (app_id, platform, token) DO UPDATE
    SET user_id = EXCLUDED.user_id, web_push_p256dh = EXCLUDED.web_push_p256dh,
        web_push_auth = EXCLUDED.web_push_auth, locale = EXCLUDED.locale,
        apns_sandbox = EXCLUDED.apns_sandbox, active = true, updated_at = now(),
        deactivated_at = NULL, deactivated_reason = NULL
    WHERE NOT d.active
       OR (d.user_id, d.web_push_p256dh, d.web_push_auth, d.locale, d.apns_sandbox)
          IS DISTINCT FROM (EXCLUDED.user_id, EXCLUDED.web_push_p256dh,
                            EXCLUDED.web_push_auth, EXCLUDED.locale, EXCLUDED.apns_sandbox)
    RETURNING (xmax = 0) AS inserted
), lost AS (
    SELECT m.line FROM matched AS m
    JOIN changed AS c ON c.platform = m.platform AND c.token = m.token AND NOT c.kept
)
SELECT (SELECT count(*) FILTER (WHERE inserted) FROM written) AS inserted,
       (SELECT count(*) FILTER (WHERE NOT inserted) FROM written) AS updated,
       (SELECT count(*) FILTER (WHERE uid IS NOT NULL) FROM matched)
       - (SELECT count(*) FROM lost) AS known,
       (SELECT coalesce(array_agg(line ORDER BY line), '{}') FROM (
            SELECT line FROM matched WHERE uid IS NULL
            UNION ALL
            SELECT line FROM lost
        ) AS unknown) AS unknown_lines
"""

# Index: devices_pkey (keyset by id). A page of the app's active devices for the export,
# with the user's external id and the fields a devices import takes. $1: the app.
EXPORT_DEVICES_PAGE = """
SELECT d.id, u.external_id AS user_id, d.platform, d.token, d.web_push_p256dh,
       d.web_push_auth, d.locale, d.apns_sandbox
FROM devices AS d JOIN users AS u ON u.id = d.user_id
WHERE d.app_id = $1 AND d.active AND d.id > $2
ORDER BY d.id
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class StagedOutcome:
    """What a chunk of the bulk import did: rows inserted, updated, already as the file
    has them (unchanged), the lines whose user the app does not have, those to import
    again (their topic was created by another transaction in the same instant), and those
    of a topic read from a source (no subscription is taken for it)."""

    inserted: int
    updated: int
    unchanged: int
    unknown_lines: list[int]
    missed_lines: list[int] = field(default_factory=list)
    sourced_lines: list[int] = field(default_factory=list)


async def upsert_staged_devices(conn: asyncpg.Connection, *, app_id: int) -> StagedOutcome:
    """Write the staged chunk of devices into the app's devices (``UPSERT_STAGED_DEVICES``)."""
    row = await conn.fetchrow(UPSERT_STAGED_DEVICES, app_id)
    inserted, updated = row["inserted"], row["updated"]
    return StagedOutcome(inserted, updated, row["known"] - inserted - updated, row["unknown_lines"])


async def export_devices_page(
    conn: asyncpg.Connection, *, app_id: int, after_id: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` of the app's active devices after id ``after_id``, in id order
    (``EXPORT_DEVICES_PAGE``)."""
    rows: list[asyncpg.Record] = await conn.fetch(EXPORT_DEVICES_PAGE, app_id, after_id, limit)
    return rows
