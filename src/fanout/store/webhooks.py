"""Webhooks: an app's endpoints, and the outbox of deliveries to them (issue #24).

A delivery is written in the transaction of the fact it reports (``enqueue``; an event's
end writes its own through lifecycle's statements), claimed by a sender with a lease
(``claim_deliveries``), and recorded delivered, or failed and due again later, or failed
for good once its retry window is over (``record_failure``). An endpoint failing for
longer than its allowance is disabled by the same statement.

Every function runs one statement, written in this module with the index it relies on
and named in its docstring, and takes its parameters by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

# What an endpoint may subscribe to. push.opened is written by the opens' feature.
KINDS = ("event.finished", "devices.retired", "devices.failed", "push.opened")
# push.opened is aggregated: the opens of this many seconds go out as one call per event.
PUSH_OPENED_GATHER_SECONDS = 10.0
# The kind of a delivery made by `fanout webhooks test` / POST /v1/webhooks/{id}/test.
TEST_KIND = "webhook.test"
# How much of an endpoint's answer a failed delivery keeps (the console shows it).
ANSWER_CHARS = 500
# A signing secret is sealed with its app id and this as associated data (as a provider's
# name is for an app credential), so it opens for no other app and as no credential.
SEALED_FOR = "webhook"

_ENDPOINT_COLUMNS = "id, url, kinds, created_at, disabled_at, failing_since"


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    url: str
    kinds: list[str]
    created_at: datetime
    disabled_at: datetime | None
    failing_since: datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    endpoint_id: int
    kind: str
    webhook_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_answer: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender holds: what to send, where, and the endpoint's sealed secret."""

    id: int
    app_id: int
    endpoint_id: int
    kind: str
    payload: str  # the JSON text, as stored
    webhook_id: str
    attempts: int
    created_at: datetime
    url: str
    secret_sealed: bytes
    kek_id: str
    disabled: bool


# Index: webhook_endpoints_pkey.
INSERT_ENDPOINT = f"""
INSERT INTO webhook_endpoints (app_id, url, kinds, secret_sealed, kek_id)
VALUES ($1, $2, $3, $4, $5)
RETURNING {_ENDPOINT_COLUMNS}
"""

# Index: webhook_endpoints_by_app.
LIST_ENDPOINTS = f"""
SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE app_id = $1 ORDER BY id
"""

# Index: webhook_endpoints_pkey. Another app's endpoint is not found.
ENDPOINT = f"""
SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND app_id = $2
"""

# Index: webhook_endpoints_pkey; its deliveries go with it (ON DELETE CASCADE).
DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE id = $1 AND app_id = $2"

# Index: webhook_endpoints_by_app. One row per endpoint of the app that wants the kind; an
# endpoint disabled gets its row as failed (a replay sends it). Returns how many.
ENQUEUE = """
WITH made AS (
    INSERT INTO webhook_deliveries (endpoint_id, app_id, kind, payload, status, last_answer)
    SELECT id, app_id, $2, $3::jsonb,
           CASE WHEN disabled_at IS NULL THEN 'pending' ELSE 'failed' END,
           CASE WHEN disabled_at IS NOT NULL THEN 'endpoint disabled' END
    FROM webhook_endpoints WHERE app_id = $1 AND $2 = ANY(kinds)
    RETURNING 1
)
SELECT count(*) FROM made
"""

# Index: webhook_endpoints_by_app. Whether any endpoint of the app wants the kind: asked
# before reading what a webhook would list when that read costs a query of its own.
WANTS = "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE app_id = $1 AND $2 = ANY(kinds))"

# Index: webhook_endpoints_pkey. A test delivery to one endpoint of the app, whatever
# the kinds it wants; its id, or nothing for an endpoint the app does not have.
ENQUEUE_TEST = """
INSERT INTO webhook_deliveries (endpoint_id, app_id, kind, payload)
SELECT id, app_id, $3, $4::jsonb FROM webhook_endpoints WHERE id = $1 AND app_id = $2
RETURNING id
"""

# Index: webhook_deliveries_due. The pending rows due, taken by ``owner`` ($2): their due
# time moves on by the lease ($3 s), so a sender that dies mid-call leaves them due again
# then; SKIP LOCKED shares them between senders.
CLAIM_DELIVERIES = """
UPDATE webhook_deliveries AS u
SET next_attempt_at = now() + make_interval(secs => $3), lease_owner = $2,
    attempts = u.attempts + 1
FROM (
    SELECT d.id FROM webhook_deliveries AS d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due, webhook_endpoints AS w
WHERE u.id = due.id AND w.id = u.endpoint_id
RETURNING u.id, u.app_id, u.endpoint_id, u.kind, u.payload::text AS payload, u.webhook_id,
          u.attempts, u.created_at, w.url, w.secret_sealed, w.kek_id,
          w.disabled_at IS NOT NULL AS disabled
"""

# Index: webhook_deliveries_due, the slice due within the lease ($2 s) from now, where the
# rows a claim took lie. A claim the database failed may have committed with no answer (a
# PostgreSQL restart, issue #27): its owner ($1, one per claim) gives back what it took,
# due at once, and uncounts the attempt (no call was made, so push.opened may still add to
# a row). A no-op if the claim never committed.
RELEASE_UNANSWERED_CLAIM = """
UPDATE webhook_deliveries
SET next_attempt_at = now(), lease_owner = NULL, attempts = attempts - 1
WHERE status = 'pending' AND lease_owner = $1
  AND next_attempt_at > now() AND next_attempt_at <= now() + make_interval(secs => $2)
"""

# Indexes: webhook_deliveries_pkey, webhook_endpoints_pkey. Only while ``owner`` still
# holds it; the endpoint is well again.
RECORD_DELIVERED = """
WITH done AS (
    UPDATE webhook_deliveries
    SET status = 'delivered', delivered_at = now(), last_status = $3, last_answer = NULL,
        lease_owner = NULL
    WHERE id = $1 AND lease_owner = $2 AND status = 'pending'
    RETURNING endpoint_id
), well AS (
    UPDATE webhook_endpoints SET failing_since = NULL
    WHERE id = (SELECT endpoint_id FROM done) AND failing_since IS NOT NULL
)
SELECT count(*) FROM done
"""

# Indexes: webhook_deliveries_pkey, webhook_endpoints_pkey, webhook_deliveries_by_endpoint.
# A failed call (status $3, NULL when nothing answered; the answer $4): due again $5 s on,
# or failed for good once its window ($6 s from window_start) is over. The endpoint has
# been failing since its first failure after a success; once that is $7 s ago it is
# disabled, and its other pending rows fail with it (a replay sends them). Returns the
# row's status after, nothing if ``owner`` no longer holds it.
RECORD_FAILURE = """
WITH failed AS (
    UPDATE webhook_deliveries
    SET status = CASE WHEN window_start + make_interval(secs => $6)
                           <= now() + make_interval(secs => $5)
                      THEN 'failed' ELSE 'pending' END,
        next_attempt_at = now() + make_interval(secs => $5),
        last_status = $3, last_answer = $4, lease_owner = NULL
    WHERE id = $1 AND lease_owner = $2 AND status = 'pending'
    RETURNING endpoint_id, status
), failing AS (
    UPDATE webhook_endpoints AS w
    SET failing_since = coalesce(w.failing_since, now()),
        disabled_at = CASE WHEN w.disabled_at IS NULL
                            AND coalesce(w.failing_since, now())
                                <= now() - make_interval(secs => $7)
                           THEN now() ELSE w.disabled_at END
    WHERE w.id = (SELECT endpoint_id FROM failed)
    RETURNING w.id, w.disabled_at IS NOT NULL AS disabled
), others AS (
    UPDATE webhook_deliveries AS o
    SET status = 'failed', last_answer = 'endpoint disabled', lease_owner = NULL
    FROM failing AS f
    WHERE f.disabled AND o.endpoint_id = f.id AND o.status = 'pending' AND o.id <> $1
)
SELECT status FROM failed
"""

# push.opened, aggregated: an open ($3: 1, or 0 for a click alone) and a click on the
# action $4 (NULL: none) of the event $2 are added to the endpoint's delivery for that
# event not yet tried (attempts = 0: its body not yet sent), or start a new one, due $5 s
# on so the opens of that while go out as one call. Index: webhook_endpoints_by_app, and
# webhook_deliveries_by_endpoint read newest first, only the last 50 rows of the endpoint
# (a delivery beyond them is not added to: a new one starts, the sum is the same). The
# claim takes a row's lock: an open that finds it tried starts a new delivery. Two opens
# at once may both start one; each is counted in exactly one.
COUNT_OPENED = """
WITH wanting AS (
    SELECT id, disabled_at FROM webhook_endpoints
    WHERE app_id = $1 AND 'push.opened' = ANY(kinds)
), added AS (
    UPDATE webhook_deliveries AS d
    SET payload = jsonb_build_object(
            'event_id', $2::bigint,
            'opened', (d.payload ->> 'opened')::bigint + $3,
            'clicks', CASE WHEN $4::text IS NULL THEN d.payload -> 'clicks'
                           ELSE (d.payload -> 'clicks') || jsonb_build_object(
                               $4::text,
                               coalesce((d.payload -> 'clicks' ->> $4::text)::bigint, 0) + 1)
                      END)
    FROM wanting AS w
    CROSS JOIN LATERAL (
        SELECT r.id FROM (
            SELECT id, kind, status, attempts, payload FROM webhook_deliveries
            WHERE endpoint_id = w.id ORDER BY id DESC LIMIT 50
        ) AS r
        WHERE r.kind = 'push.opened' AND r.attempts = 0
          AND r.status = CASE WHEN w.disabled_at IS NULL THEN 'pending' ELSE 'failed' END
          AND (r.payload ->> 'event_id')::bigint = $2
        LIMIT 1
    ) AS unsent
    WHERE d.id = unsent.id AND d.attempts = 0 AND d.status <> 'delivered'
    RETURNING d.endpoint_id
), started AS (
    INSERT INTO webhook_deliveries
        (endpoint_id, app_id, kind, payload, status, last_answer, next_attempt_at)
    SELECT w.id, $1, 'push.opened',
           jsonb_build_object(
               'event_id', $2::bigint, 'opened', $3::bigint,
               'clicks', CASE WHEN $4::text IS NULL THEN '{}'::jsonb
                              ELSE jsonb_build_object($4::text, 1) END),
           CASE WHEN w.disabled_at IS NULL THEN 'pending' ELSE 'failed' END,
           CASE WHEN w.disabled_at IS NOT NULL THEN 'endpoint disabled' END,
           now() + make_interval(secs => $5)
    FROM wanting AS w WHERE w.id NOT IN (SELECT endpoint_id FROM added)
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) + (SELECT count(*) FROM started)
"""

# Index: webhook_deliveries_pkey. A row claimed for an endpoint disabled since: failed,
# with that said, for a replay.
FAIL_DISABLED = """
UPDATE webhook_deliveries
SET status = 'failed', last_answer = 'endpoint disabled', lease_owner = NULL
WHERE id = $1 AND lease_owner = $2 AND status = 'pending'
"""

_DELIVERY_COLUMNS = """id, endpoint_id, kind, webhook_id, status, attempts, next_attempt_at,
       last_status, last_answer, created_at, delivered_at"""

# Index: webhook_deliveries_by_endpoint, newest first. Another app's endpoint has none.
RECENT_DELIVERIES = f"""
SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
WHERE endpoint_id = $1 AND app_id = $2
ORDER BY id DESC LIMIT $3
"""

# Indexes: webhook_deliveries_pkey, webhook_endpoints_pkey. A failed delivery of the app
# is sent again now, with a new retry window and the same webhook-id; its endpoint is
# enabled again. Returns its id, nothing if the app has no such failed delivery.
REPLAY_DELIVERY = """
WITH replayed AS (
    UPDATE webhook_deliveries
    SET status = 'pending', next_attempt_at = now(), window_start = now(), lease_owner = NULL
    WHERE id = $1 AND app_id = $2 AND status = 'failed'
    RETURNING id, endpoint_id
), enabled AS (
    UPDATE webhook_endpoints SET disabled_at = NULL, failing_since = NULL
    WHERE id = (SELECT endpoint_id FROM replayed) AND disabled_at IS NOT NULL
)
SELECT id FROM replayed
"""

# Indexes: webhook_endpoints_pkey, webhook_deliveries_by_endpoint. The endpoint enabled
# again and every failed delivery of it sent again (as REPLAY_DELIVERY does one); how
# many, or nothing for an endpoint the app does not have.
REPLAY_ENDPOINT = """
WITH enabled AS (
    UPDATE webhook_endpoints SET disabled_at = NULL, failing_since = NULL
    WHERE id = $1 AND app_id = $2
    RETURNING id
), replayed AS (
    UPDATE webhook_deliveries
    SET status = 'pending', next_attempt_at = now(), window_start = now(), lease_owner = NULL
    WHERE endpoint_id = (SELECT id FROM enabled) AND status = 'failed'
    RETURNING 1
)
SELECT (SELECT count(*) FROM replayed) AS replayed FROM enabled
"""


# Index: webhook_deliveries_pkey, oldest first: delivered rows are at the table's start,
# so the scan stops after $2 of them (only rows still pending or failed are read again).
PURGE_DELIVERED = """
DELETE FROM webhook_deliveries
WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => $1)
    ORDER BY id LIMIT $2
)
"""

# The signing secrets by the key that sealed them: the start-up check and the rotation.
SECRETS_BY_KEK = "SELECT kek_id, count(*) AS secrets FROM webhook_endpoints GROUP BY kek_id"

# Every endpoint's secret's key, for a rotation to go through one by one.
ENDPOINT_SEALS = "SELECT id, app_id, kek_id FROM webhook_endpoints ORDER BY id"

# Index: webhook_endpoints_pkey. Held until the rotation's transaction reseals it.
LOCK_ENDPOINT_SEAL = """
SELECT id, app_id, secret_sealed, kek_id FROM webhook_endpoints WHERE id = $1 FOR UPDATE
"""

# Index: webhook_endpoints_pkey.
RESEAL_ENDPOINT = "UPDATE webhook_endpoints SET secret_sealed = $2, kek_id = $3 WHERE id = $1"


@dataclass(frozen=True, slots=True)
class SealedSecret:
    id: int
    app_id: int
    kek_id: str
    secret_sealed: bytes = b""


def _endpoint(row: asyncpg.Record) -> Endpoint:
    return Endpoint(**dict(row))


async def insert_endpoint(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    url: str,
    kinds: Sequence[str],
    secret_sealed: bytes,
    kek_id: str,
) -> Endpoint:
    """Register an endpoint of the app, its secret sealed (``INSERT_ENDPOINT``)."""
    row = await conn.fetchrow(INSERT_ENDPOINT, app_id, url, list(kinds), secret_sealed, kek_id)
    return _endpoint(row)


async def list_endpoints(conn: asyncpg.Connection, *, app_id: int) -> list[Endpoint]:
    """The app's endpoints, oldest first (``LIST_ENDPOINTS``)."""
    return [_endpoint(row) for row in await conn.fetch(LIST_ENDPOINTS, app_id)]


async def endpoint(conn: asyncpg.Connection, *, app_id: int, endpoint_id: int) -> Endpoint | None:
    """The app's endpoint, or None (``ENDPOINT``)."""
    row = await conn.fetchrow(ENDPOINT, endpoint_id, app_id)
    return None if row is None else _endpoint(row)


async def delete_endpoint(conn: asyncpg.Connection, *, app_id: int, endpoint_id: int) -> bool:
    """Delete the app's endpoint and its deliveries; False if the app has no such one
    (``DELETE_ENDPOINT``)."""
    status: str = await conn.execute(DELETE_ENDPOINT, endpoint_id, app_id)
    return status != "DELETE 0"


async def enqueue(conn: asyncpg.Connection, *, app_id: int, kind: str, payload: Any) -> int:
    """Write a delivery of ``payload`` (JSON-able: the connection's jsonb codec encodes
    it) to every endpoint of the app that wants
    ``kind``, in the caller's transaction; how many (``ENQUEUE``)."""
    made: int = await conn.fetchval(ENQUEUE, app_id, kind, payload)
    return made


async def wants(conn: asyncpg.Connection, *, app_id: int, kind: str) -> bool:
    """Whether an endpoint of the app wants ``kind``, disabled or not: ``enqueue`` would
    write a row for it (``WANTS``)."""
    wanted: bool = await conn.fetchval(WANTS, app_id, kind)
    return wanted


async def count_opened(
    conn: asyncpg.Connection,
    *,
    app_id: int,
    event_id: int,
    opened: int,
    action: str | None,
    gather_seconds: float,
) -> int:
    """Add an open (``opened`` 1; 0 for a click alone) and a click on ``action`` of the
    event to each push.opened endpoint's delivery not yet sent, or start one due
    ``gather_seconds`` on; how many endpoints (``COUNT_OPENED``)."""
    counted: int = await conn.fetchval(
        COUNT_OPENED, app_id, event_id, opened, action, gather_seconds
    )
    return counted


async def enqueue_test(
    conn: asyncpg.Connection, *, app_id: int, endpoint_id: int, kind: str, payload: Any
) -> int | None:
    """A delivery of ``kind`` to this endpoint of the app only; its id, or None if the app
    has no such endpoint (``ENQUEUE_TEST``)."""
    made: int | None = await conn.fetchval(ENQUEUE_TEST, endpoint_id, app_id, kind, payload)
    return made


async def claim_deliveries(
    conn: asyncpg.Connection, *, limit: int, owner: UUID, lease_seconds: float
) -> list[Claimed]:
    """Up to ``limit`` due deliveries, held by ``owner`` for ``lease_seconds``
    (``CLAIM_DELIVERIES``)."""
    rows = await conn.fetch(CLAIM_DELIVERIES, limit, owner, lease_seconds)
    return [Claimed(**dict(row)) for row in rows]


async def release_unanswered_claim(
    conn: asyncpg.Connection, *, owner: UUID, lease_seconds: float
) -> int:
    """What the claim of ``owner`` took, if it committed unanswered, due again now and its
    attempt uncounted; how many rows (``RELEASE_UNANSWERED_CLAIM``)."""
    done: str = await conn.execute(RELEASE_UNANSWERED_CLAIM, owner, lease_seconds)
    return int(done.split()[-1])


async def record_delivered(
    conn: asyncpg.Connection, *, delivery_id: int, owner: UUID, status_code: int
) -> bool:
    """The endpoint answered 2xx; False if ``owner`` no longer held the row
    (``RECORD_DELIVERED``)."""
    done: int = await conn.fetchval(RECORD_DELIVERED, delivery_id, owner, status_code)
    return done == 1


async def record_failure(
    conn: asyncpg.Connection,
    *,
    delivery_id: int,
    owner: UUID,
    status_code: int | None,
    answer: str,
    retry_in: float,
    window_seconds: float,
    disable_after_seconds: float,
) -> str | None:
    """A failed call: the row is due again ``retry_in`` s on, or failed once its window is
    over; its endpoint may be disabled. The row's status after, None if ``owner`` no
    longer held it (``RECORD_FAILURE``)."""
    status: str | None = await conn.fetchval(
        RECORD_FAILURE,
        delivery_id,
        owner,
        status_code,
        answer[:ANSWER_CHARS],
        retry_in,
        window_seconds,
        disable_after_seconds,
    )
    return status


async def fail_disabled(conn: asyncpg.Connection, *, delivery_id: int, owner: UUID) -> None:
    """A claimed row whose endpoint is disabled: failed, for a replay (``FAIL_DISABLED``)."""
    await conn.execute(FAIL_DISABLED, delivery_id, owner)


async def recent_deliveries(
    conn: asyncpg.Connection, *, app_id: int, endpoint_id: int, limit: int
) -> list[Delivery]:
    """The endpoint's last ``limit`` deliveries, newest first (``RECENT_DELIVERIES``)."""
    rows = await conn.fetch(RECENT_DELIVERIES, endpoint_id, app_id, limit)
    return [Delivery(**dict(row)) for row in rows]


async def replay_delivery(conn: asyncpg.Connection, *, app_id: int, delivery_id: int) -> bool:
    """Send a failed delivery of the app again (same webhook-id); False if it has no such
    failed one (``REPLAY_DELIVERY``)."""
    found: int | None = await conn.fetchval(REPLAY_DELIVERY, delivery_id, app_id)
    return found is not None


async def replay_endpoint(conn: asyncpg.Connection, *, app_id: int, endpoint_id: int) -> int | None:
    """Enable the app's endpoint again and send its failed deliveries again; how many,
    or None if the app has no such endpoint (``REPLAY_ENDPOINT``)."""
    replayed: int | None = await conn.fetchval(REPLAY_ENDPOINT, endpoint_id, app_id)
    return replayed


async def secrets_by_kek(conn: asyncpg.Connection) -> dict[str, int]:
    """How many signing secrets each key sealed, by kek id (``SECRETS_BY_KEK``)."""
    return {row["kek_id"]: row["secrets"] for row in await conn.fetch(SECRETS_BY_KEK)}


async def secret_refs(conn: asyncpg.Connection) -> list[SealedSecret]:
    """Each endpoint's id, app and the key that sealed its secret (``ENDPOINT_SEALS``)."""
    return [SealedSecret(**dict(row)) for row in await conn.fetch(ENDPOINT_SEALS)]


async def lock_secret(conn: asyncpg.Connection, *, endpoint_id: int) -> SealedSecret | None:
    """The endpoint's sealed secret, its row locked; None if it is gone (``LOCK_ENDPOINT_SEAL``)."""
    row = await conn.fetchrow(LOCK_ENDPOINT_SEAL, endpoint_id)
    return None if row is None else SealedSecret(**dict(row))


async def reseal_secret(
    conn: asyncpg.Connection, *, endpoint_id: int, sealed: bytes, kek_id: str
) -> None:
    """Store the endpoint's secret sealed anew (``RESEAL_ENDPOINT``)."""
    await conn.execute(RESEAL_ENDPOINT, endpoint_id, sealed, kek_id)


async def purge_delivered(
    conn: asyncpg.Connection, *, older_than_seconds: float, limit: int
) -> int:
    """Delete up to ``limit`` rows delivered more than ``older_than_seconds`` ago; how many
    (``PURGE_DELIVERED``)."""
    status: str = await conn.execute(PURGE_DELIVERED, older_than_seconds, limit)
    return int(status.split()[-1])
