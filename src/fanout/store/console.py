"""What the operator console reads, what the delivery records per device it did not send
to, and the console's sign-in sessions.

Every function runs one statement of ``queries.py`` (named in its docstring, where the
index it relies on is written) and takes its parameters by name. The console's table
reads return asyncpg's rows as they come: they go straight into a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from fanout.store import queries

Rows = list[asyncpg.Record]


async def _rows(conn: asyncpg.Connection | asyncpg.Pool, query: str, *args: object) -> Rows:
    rows: Rows = await conn.fetch(query, *args)
    return rows


async def record_batch_detail(
    conn: asyncpg.Connection,
    *,
    event_id: int,
    batch_key: str,
    by_platform: Mapping[str, Mapping[str, int]],
    device_ids: Sequence[int],
    platforms: Sequence[str],
    kinds: Sequence[str],
    reasons: Sequence[str | None],
) -> None:
    """Record the batch's outcomes per platform and, in the same statement, one row per
    device it did not send to (the four sequences are that table's columns)
    (``RECORD_BATCH_DETAIL``)."""
    await conn.execute(
        queries.RECORD_BATCH_DETAIL,
        event_id,
        batch_key,
        by_platform,
        device_ids,
        platforms,
        kinds,
        reasons,
    )


async def list_events(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    topic: str | None,
    status: str | None,
    event_id: int | None,
    limit: int,
) -> Rows:
    """The newest events (of a topic, in a status, or one), each with EVENT_PROGRESS's
    columns plus its topic, user and title (``EVENT_LIST``)."""
    return await _rows(conn, queries.EVENT_LIST, topic, status, event_id, limit)


async def event_throughput(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, bucket_seconds: float
) -> Rows:
    """Devices sent per ``bucket_seconds`` after publication (``EVENT_THROUGHPUT``)."""
    return await _rows(conn, queries.EVENT_THROUGHPUT, event_id, bucket_seconds)


async def event_latency_percentiles(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, fractions: Sequence[float]
) -> dict[float, float | None]:
    """Seconds from publication to a recorded send at each fraction of the devices sent
    (``EVENT_LATENCY_PERCENTILES``)."""
    rows = await conn.fetch(queries.EVENT_LATENCY_PERCENTILES, event_id, fractions)
    return {row["fraction"]: row["seconds"] for row in rows}


async def event_outcomes_by_platform(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> Rows:
    """(platform, outcome, devices) summed over the event's batches
    (``EVENT_OUTCOMES_BY_PLATFORM``)."""
    return await _rows(conn, queries.EVENT_OUTCOMES_BY_PLATFORM, event_id)


async def event_failures_by_reason(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """(platform, outcome, reason, devices), the most common first
    (``EVENT_FAILURES_BY_REASON``)."""
    return await _rows(conn, queries.EVENT_FAILURES_BY_REASON, event_id, limit)


async def event_device_failures(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, outcome: str, limit: int
) -> Rows:
    """The event's devices of one outcome other than sent, oldest first
    (``EVENT_DEVICE_FAILURES``)."""
    return await _rows(conn, queries.EVENT_DEVICE_FAILURES, event_id, outcome, limit)


async def event_shards(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """The event's shards in order (``EVENT_SHARDS``)."""
    return await _rows(conn, queries.EVENT_SHARDS, event_id, limit)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    done: int
    running: int
    queued: int
    retry_batches: int
    retried_devices: int
    resent: int  # sent again by the reconciler: their message was late, lost or dead-lettered
    without_detail: int  # done without per-device detail: given up, or from before schema 10


async def event_batch_summary(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int
) -> BatchSummary:
    """The event's batches counted by state (``EVENT_BATCH_SUMMARY``)."""
    row = await conn.fetchrow(queries.EVENT_BATCH_SUMMARY, event_id)
    return BatchSummary(**row)


async def event_batches(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, limit: int
) -> Rows:
    """Open batches first, then the latest done (``EVENT_BATCHES``)."""
    return await _rows(conn, queries.EVENT_BATCHES, event_id, limit)


@dataclass(frozen=True, slots=True)
class UserRef:
    id: int
    external_id: str


async def user_by_external_id(
    conn: asyncpg.Connection | asyncpg.Pool, *, external_id: str
) -> UserRef | None:
    """The user with this external id, without creating one (``USER_BY_EXTERNAL_ID``)."""
    row = await conn.fetchrow(queries.USER_BY_EXTERNAL_ID, external_id)
    return None if row is None else UserRef(**row)


async def device_owner(
    conn: asyncpg.Connection | asyncpg.Pool, *, device_id: int
) -> UserRef | None:
    """The user a device belongs to (``DEVICE_OWNER``)."""
    row = await conn.fetchrow(queries.DEVICE_OWNER, device_id)
    return None if row is None else UserRef(**row)


@dataclass(frozen=True, slots=True)
class DeviceHistory:
    """A device as the console shows it: never its token."""

    id: int
    platform: str
    locale: str | None
    active: bool
    created_at: datetime
    deactivated_at: datetime | None
    deactivated_reason: str | None


async def user_device_history(
    conn: asyncpg.Connection | asyncpg.Pool, *, user_id: int
) -> list[DeviceHistory]:
    """Every device of the user, active or not (``USER_DEVICE_HISTORY``)."""
    rows = await conn.fetch(queries.USER_DEVICE_HISTORY, user_id)
    return [DeviceHistory(**row) for row in rows]


async def batches_carrying(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    event_id: int,
    user_id: int,
    device_ids: Sequence[int],
) -> Rows:
    """The event's batches that carried the user (by range) or any of these devices (retry
    batches, by id) (``BATCHES_CARRYING``)."""
    return await _rows(conn, queries.BATCHES_CARRYING, event_id, user_id, device_ids)


async def shard_of_user(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, user_id: int
) -> asyncpg.Record | None:
    """The event's shard whose range holds the user (``SHARD_OF_USER``)."""
    return await conn.fetchrow(queries.SHARD_OF_USER, event_id, user_id)


async def devices_failures(
    conn: asyncpg.Connection | asyncpg.Pool, *, event_id: int, device_ids: Sequence[int]
) -> Rows:
    """What went wrong for these devices in this event, in order (``DEVICES_FAILURES``)."""
    return await _rows(conn, queries.DEVICES_FAILURES, event_id, device_ids)


async def recent_outcomes_by_platform(
    conn: asyncpg.Connection | asyncpg.Pool, *, seconds: float
) -> Rows:
    """(platform, outcome, devices) of the batches recorded in the last ``seconds``
    (``RECENT_OUTCOMES_BY_PLATFORM``)."""
    return await _rows(conn, queries.RECENT_OUTCOMES_BY_PLATFORM, seconds)


async def recent_failures_by_reason(
    conn: asyncpg.Connection | asyncpg.Pool, *, seconds: float, limit: int
) -> Rows:
    """(platform, outcome, reason, devices) of the last ``seconds``
    (``RECENT_FAILURES_BY_REASON``)."""
    return await _rows(conn, queries.RECENT_FAILURES_BY_REASON, seconds, limit)


@dataclass(frozen=True, slots=True)
class OldestWaiting:
    oldest_event: datetime | None
    oldest_batch: datetime | None
    now: datetime


async def oldest_waiting(conn: asyncpg.Connection | asyncpg.Pool) -> OldestWaiting:
    """When the oldest event and batch still waiting for a worker were queued
    (``OLDEST_WAITING``)."""
    return OldestWaiting(**await conn.fetchrow(queries.OLDEST_WAITING))


async def insert_console_session(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes, api_key_id: int, hours: int
) -> None:
    """A session for this key, ending in ``hours`` (``INSERT_CONSOLE_SESSION``)."""
    await conn.execute(queries.INSERT_CONSOLE_SESSION, token_hash, api_key_id, hours)


@dataclass(frozen=True, slots=True)
class SessionKey:
    id: int
    key_id: str
    scopes: list[str]
    name: str


async def console_session_key(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes
) -> SessionKey | None:
    """The live key of a live session (``CONSOLE_SESSION_KEY``)."""
    row = await conn.fetchrow(queries.CONSOLE_SESSION_KEY, token_hash)
    return None if row is None else SessionKey(**row)


async def delete_console_session(
    conn: asyncpg.Connection | asyncpg.Pool, *, token_hash: bytes
) -> None:
    """Sign out (``DELETE_CONSOLE_SESSION``)."""
    await conn.execute(queries.DELETE_CONSOLE_SESSION, token_hash)


async def delete_expired_console_sessions(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    """Forget sessions past their end (``DELETE_EXPIRED_CONSOLE_SESSIONS``)."""
    await conn.execute(queries.DELETE_EXPIRED_CONSOLE_SESSIONS)
