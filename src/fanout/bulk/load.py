"""The import's loop and the export's: chunks of rows through COPY and one set-based
statement each, pages of rows by key. One connection, one transaction per chunk.

Memory: one chunk of tuples at a time (CHUNK_ROWS), rejects handed to the caller as they
come, never kept; a file of any size runs in the same few tens of MB (bench/import.py
measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from fanout.bulk.readers import Numbered
from fanout.bulk.rows import RowError, row_of
from fanout.store import devices, staging, subscriptions

# Rows per chunk: one COPY and one statement each. 20,000 devices is ~4 MB of tuples and
# a statement of well under a second, so a progress bar moves and a lock is short.
CHUNK_ROWS = 20_000
EXPORT_PAGE = 10_000
# Rows read between two turns of the event loop while a chunk is in the database.
YIELD_EVERY = 100  # 1,000: 22,500 rows/s, 100: 28,000 (100,000 devices, in-process)

_STAGED: dict[str, Callable[..., Any]] = {
    "users": subscriptions.upsert_staged_users,
    "devices": devices.upsert_staged_devices,
    "subscriptions": subscriptions.subscribe_staged,
}

UNKNOWN_USER = "user_id: no such user in this app (import users first)"
MISSED_TOPIC = "topic: created by another request at the same instant; import again"


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


async def _aiter(numbered: Iterable[Numbered] | AsyncIterable[Numbered]) -> AsyncIterator[Numbered]:
    if isinstance(numbered, AsyncIterable):
        async for item in numbered:
            yield item
    else:
        for item in numbered:
            yield item


async def import_rows(
    conn: asyncpg.Connection,
    *,
    kind: str,
    app_id: int,
    numbered: Iterable[Numbered] | AsyncIterable[Numbered],
    mapping: str | None = None,
    dry_run: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    on_reject: Callable[[int, str], None] = lambda line, reason: None,
    on_progress: Callable[[int], None] = lambda rows: None,
) -> ImportCounts:
    """Import numbered records of ``kind`` into the app ``app_id``; a bad row is handed to
    ``on_reject`` (line, reason) and the others land. A dry run does all of it, database
    checks included, in transactions it rolls back: the counts say what would change."""
    counts = ImportCounts(dry_run=dry_run)
    chunk: list[tuple[Any, ...]] = []
    in_flight: asyncio.Task[None] | None = None

    async def flush(rows: list[tuple[Any, ...]]) -> None:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await staging.stage(conn, kind=kind, records=rows)
            outcome = await _STAGED[kind](conn, app_id=app_id)
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
        counts.inserted += outcome.inserted
        counts.updated += outcome.updated
        counts.unchanged += outcome.unchanged
        for line in outcome.unknown_lines:
            on_reject(line, UNKNOWN_USER)
        for line in outcome.missed_lines:
            on_reject(line, MISSED_TOPIC)
        counts.rejected += len(outcome.unknown_lines) + len(outcome.missed_lines)
        on_progress(counts.rows)

    try:
        async for line, record in _aiter(numbered):
            counts.rows += 1
            try:
                chunk.append(row_of(kind, line, record, mapping))
            except RowError as exc:
                counts.rejected += 1
                on_reject(line, str(exc))
            if len(chunk) >= chunk_rows:
                # One chunk in the database while the next is read and checked: the
                # server's work and Python's overlap (two processes, two cores).
                if in_flight is not None:
                    await in_flight
                in_flight, chunk = asyncio.create_task(flush(chunk)), []
            elif counts.rows % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the chunk in flight send and receive
        if in_flight is not None:
            await in_flight
            in_flight = None
        if chunk:
            await flush(chunk)
    finally:
        if in_flight is not None and not in_flight.done():
            in_flight.cancel()
            with contextlib.suppress(BaseException):
                await in_flight
    on_progress(counts.rows)
    return counts


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
