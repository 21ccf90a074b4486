"""The import's loop and the export's: chunks of rows through COPY and one set-based
statement each, pages of rows by key. One connection, one transaction per chunk.

Memory: one chunk of tuples at a time (CHUNK_ROWS), rejects handed to the caller as they
come, never kept; a file of any size runs in the same few tens of MB (bench/import.py
measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from fanout.bulk.readers import Numbered
from fanout.bulk.rows import RowError, row_of
from fanout.errors import FanoutError
from fanout.store import apps, devices, staging, subscriptions
from fanout.store.devices import StagedOutcome

# Rows per chunk: one COPY and one statement each. 20,000 devices is ~4 MB of tuples and
# a statement of well under a second, so a progress bar moves and a lock is short.
CHUNK_ROWS = 20_000
EXPORT_PAGE = 10_000
# Concurrent chunks lock rows in key order (each statement's DISTINCT ON / ORDER BY), so
# they wait on each other rather than deadlock; a deadlock all the same is retried.
DEADLOCK_TRIES = 3
# Rows read between two turns of the event loop while a chunk is in the database.
YIELD_EVERY = 100  # 1,000: 22,500 rows/s, 100: 28,000 (100,000 devices, in-process)


async def _upsert_staged_users(
    conn: asyncpg.Connection, *, app_id: int, rows: int
) -> StagedOutcome:
    """The users' two statements, in this order (store/subscriptions.py's
    staged_users_statements says why two)."""
    inserted = await subscriptions.insert_staged_users(conn, app_id=app_id)
    updated = await subscriptions.update_staged_users(conn, app_id=app_id)
    return StagedOutcome(inserted, updated, rows - inserted - updated, [])


_STAGED: dict[str, Callable[..., Any]] = {
    "devices": devices.upsert_staged_devices,
    "subscriptions": subscriptions.subscribe_staged,
}

# What a row is one of: its key in the target table (see the staging tuples, bulk/rows.py).
_KEY_OF: dict[str, Callable[[tuple[Any, ...]], Any]] = {
    "users": lambda row: row[1],
    "devices": lambda row: (row[2], row[3]),
    "subscriptions": lambda row: (row[1], row[2]),
}

UNKNOWN_USER = "user_id: no such user in this app (import users first)"
MISSED_TOPIC = "topic: deleted while this import ran; import again"
SOURCED_TOPIC = "topic: its subscribers are read from a source; subscriptions are not taken"


class AppGone(FanoutError, LookupError):
    """The app was deleted while its import ran."""


@dataclass(slots=True)
class ImportCounts:
    """What an import did (or, in a dry run, would do), in rows of the file."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    dry_run: bool = False

    @property
    def changed(self) -> int:
        return self.inserted + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "dry_run": self.dry_run,
        }


async def import_rows(
    conn: asyncpg.Connection,
    *,
    kind: str,
    app_id: int,
    numbered: Iterable[Numbered] | AsyncIterable[Numbered],
    mapping: str | None = None,
    dry_run: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    more_connections: Sequence[asyncpg.Connection] = (),
    on_reject: Callable[[int, str], None] = lambda line, reason: None,
    on_progress: Callable[[int], None] = lambda rows: None,
) -> ImportCounts:
    """Import numbered records of ``kind`` into the app ``app_id``; a bad row is handed to
    ``on_reject`` (line, reason) and the others land. A dry run does all of it, database
    checks included, in transactions it rolls back: the counts say what would change.
    With ``more_connections``, that many more chunks are in the database at once."""
    counts = ImportCounts(dry_run=dry_run)
    connections = (conn, *more_connections)
    key_of = _KEY_OF[kind]
    # The chunk's statements check the foreign keys themselves: without the per-row
    # triggers where the role may (store/staging.py says when).
    skip_fk_triggers = await staging.may_skip_fk_triggers(conn)

    async def flush(connection: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        for attempt in range(1, DEADLOCK_TRIES + 1):
            try:
                outcome = await _move_chunk(
                    connection, kind, app_id, rows, dry_run, skip_fk_triggers
                )
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == DEADLOCK_TRIES:
                    raise
        counts.inserted += outcome.inserted
        counts.updated += outcome.updated
        counts.unchanged += outcome.unchanged
        for line in outcome.unknown_lines:
            on_reject(line, UNKNOWN_USER)
        for line in outcome.missed_lines:
            on_reject(line, MISSED_TOPIC)
        for line in outcome.sourced_lines:
            on_reject(line, SOURCED_TOPIC)
        counts.rejected += (
            len(outcome.unknown_lines) + len(outcome.missed_lines) + len(outcome.sourced_lines)
        )
        on_progress(counts.rows)

    # One chunk buffer and at most one chunk in the database per connection. A row goes
    # to the connection of its key's hash: a key's lines all take one connection, in file
    # order, so the last line wins as it would on one connection, and concurrent chunks
    # never hold the same key.
    chunks: list[list[tuple[Any, ...]]] = [[] for _ in connections]
    in_flight: list[asyncio.Task[None] | None] = [None for _ in connections]
    width = len(connections)

    def take(line: int, record: Any) -> int:
        """Check and buffer one record; the slot whose chunk it filled, else -1."""
        try:
            row = record if type(record) is tuple else row_of(kind, line, record, mapping)
        except RowError as exc:
            counts.rejected += 1
            on_reject(line, str(exc))
            return -1
        slot = hash(key_of(row)) % width if width > 1 else 0
        chunk = chunks[slot]
        chunk.append(row)
        return slot if len(chunk) >= chunk_rows else -1

    async def send(slot: int) -> None:
        # This chunk goes to the database while the next rows are read and checked:
        # PostgreSQL's work and Python's overlap.
        if (task := in_flight[slot]) is not None:
            await task
        in_flight[slot] = asyncio.create_task(flush(connections[slot], chunks[slot]))
        chunks[slot] = []

    try:
        # A file's records are a plain iterator: read without an async generator's
        # per-record await (an HTTP body's come as they arrive).
        if isinstance(numbered, AsyncIterable):
            async for line, record in numbered:
                counts.rows += 1
                if (slot := take(line, record)) >= 0:
                    await send(slot)
                elif counts.rows % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the chunks in flight send and receive
        else:
            for line, record in numbered:
                counts.rows += 1
                if (slot := take(line, record)) >= 0:
                    await send(slot)
                elif counts.rows % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        for slot, connection in enumerate(connections):
            if (task := in_flight[slot]) is not None:
                in_flight[slot] = None
                await task
            if chunks[slot]:
                await flush(connection, chunks[slot])
    finally:
        pending = [task for task in in_flight if task is not None and not task.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
    on_progress(counts.rows)
    return counts


async def _move_chunk(
    conn: asyncpg.Connection,
    kind: str,
    app_id: int,
    rows: list[tuple[Any, ...]],
    dry_run: bool,
    skip_fk_triggers: bool,
) -> StagedOutcome:
    """One chunk in one transaction: COPY to staging, the kind's statement; rolled back
    in a dry run. Without the foreign keys' triggers, the app's row is locked as theirs
    would lock it for each new user or topic (the rest is in the kind's statement)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await staging.stage(conn, kind=kind, records=rows, skip_fk_triggers=skip_fk_triggers)
        if (
            skip_fk_triggers
            and kind in ("users", "subscriptions")
            and not await apps.lock_app_key(conn, app_id=app_id)
        ):
            raise AppGone(f"app {app_id} was deleted while this import ran")
        if kind == "subscriptions":
            await subscriptions.insert_staged_topics(conn, app_id=app_id)
        outcome: StagedOutcome = (
            await _upsert_staged_users(conn, app_id=app_id, rows=len(rows))
            if kind == "users"
            else await _STAGED[kind](conn, app_id=app_id)
        )
        if skip_fk_triggers:
            await staging.restore_fk_triggers(conn)
    except BaseException:
        await transaction.rollback()
        raise
    if dry_run:
        await transaction.rollback()
    else:
        await transaction.commit()
    return outcome


def _device_record(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "user_id": row["user_id"],
        "platform": row["platform"],
        "token": row["token"],
        "web_push_p256dh": row["web_push_p256dh"],
        "web_push_auth": row["web_push_auth"],
        "locale": row["locale"],
        "apns_environment": (
            ("sandbox" if row["apns_sandbox"] else "production")
            if row["platform"] == "apns"
            else None
        ),
    }


async def export_records(
    conn: asyncpg.Connection, *, kind: str, app_id: int, page_rows: int = EXPORT_PAGE
) -> AsyncIterator[dict[str, Any]]:
    """The app's active devices or its subscriptions, as the records an import reads,
    a keyset page at a time (each page its own statement: no long transaction, and it
    works behind a transaction-pooling PgBouncer, which a server-side cursor does not)."""
    if kind == "devices":
        after = 0
        while page := await devices.export_devices_page(
            conn, app_id=app_id, after_id=after, limit=page_rows
        ):
            for row in page:
                yield _device_record(row)
            after = page[-1]["id"]
    elif kind == "subscriptions":
        after_topic, after_user = 0, 0
        while page := await subscriptions.export_subscriptions_page(
            conn,
            app_id=app_id,
            after_topic_id=after_topic,
            after_user_id=after_user,
            limit=page_rows,
        ):
            for row in page:
                yield {"topic": row["topic"], "user_id": row["user_id"]}
            after_topic, after_user = page[-1]["topic_id"], page[-1]["uid"]
    else:
        raise ValueError(f"cannot export {kind}")
