"""The fan-out stage: an event's subscribers and devices, out of PostgreSQL, into batches on SQS.

An event is fanned out in shards: ranges of user id holding about ``shard_size``
subscribers each. Planning an event writes its shards; each shard then streams its
users with keyset pages (``user_id > cursor``), packs their devices into delivery
batches and sends them, checkpointing the cursor after every send and recording the
batches it sent (one row each, with its range of users). A shard is claimed with a
lease, so a duplicate message is dropped instead of fanning out twice; a failed one
gives its lease up; a crashed one resumes from its checkpoint. PostgreSQL knows every
shard and batch with a deadline, so whatever happens to their messages the reconciler
sends them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from fanout.config import Settings
from fanout.queue.messages import FanoutTask, PoisonMessage
from fanout.queue.sqs import Queues
from fanout.stages import leases
from fanout.stages.batching import (
    MIN_DEVICE_ROOM_BYTES,
    BatchPacker,
    PackedBatch,
    batch_max_bytes,
    room_for_devices,
)
from fanout.store import queries

log = logging.getLogger(__name__)

MAX_USER_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ShardReport:
    event_id: int
    shard: int
    recipients: int = 0
    devices: int = 0
    batches: int = 0
    already_done: bool = False
    busy: bool = False  # another invocation holds it: this copy of the message is redundant
    lease_left: float = 0.0  # when busy: seconds until the holder's lease ends
    finished: bool = True  # False: stopped early for time, re-enqueued from its checkpoint


@dataclass(slots=True)
class _Progress:
    cursor: int
    recipients: int
    devices: int
    batches: int


async def run_fanout_task(
    task: FanoutTask,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
) -> list[ShardReport]:
    """Plan an event (and run its first shard), or run one shard."""
    if task.shard is None:
        return await plan_event(task.event_id, pool, queues, settings, time_left=time_left)
    return [await run_shard(task.event_id, task.shard, pool, queues, settings, time_left=time_left)]


async def plan_event(
    event_id: int,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
) -> list[ShardReport]:
    """Split the event into shards, send a message for each but the first, run the first.

    Re-running it (a redelivered message) plans nothing twice: it re-sends messages for
    the shards not yet done, which are no-ops if those shards are running or finished.
    """
    async with pool.acquire() as conn:
        event = await conn.fetchrow(queries.LOAD_EVENT, event_id)
        if event is None:
            raise PoisonMessage(f"unknown event {event_id}")
        if event["status"] not in ("pending", "enqueued", "fanning_out"):
            return []  # fanned out, or ended
        if not _fits_a_batch(event, queues, settings):
            await conn.execute(queries.FAIL_EVENT, event_id, "notification too large for a batch")
            log.error("event %d: its notification cannot fit a delivery batch", event_id)
            return []
        unfinished = [r["shard_no"] for r in await conn.fetch(queries.UNFINISHED_SHARDS, event_id)]
        if not unfinished and event["status"] != "fanning_out":
            bounds = await _shard_bounds(conn, event, settings.shard_size)
            async with conn.transaction():
                await conn.execute(
                    queries.INSERT_SHARDS,
                    event_id,
                    list(range(len(bounds))),
                    [lo for lo, _ in bounds],
                    [hi for _, hi in bounds],
                    settings.reconcile_after_seconds,
                )
                await conn.execute(queries.MARK_EVENT_FANNING_OUT, event_id)
            unfinished = list(range(len(bounds)))
            log.info("event %d: planned %d shard(s)", event_id, len(bounds))
    if not unfinished:
        return []
    first, rest = unfinished[0], unfinished[1:]
    await queues.fanout.send_many([FanoutTask(event_id, shard).encode() for shard in rest])
    return [await run_shard(event_id, first, pool, queues, settings, time_left=time_left)]


def _fits_a_batch(event: asyncpg.Record, queues: Queues, settings: Settings) -> bool:
    """False for a notification published before it was checked at the door."""
    max_bytes = batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes)
    return room_for_devices(event["notification"], max_bytes) >= MIN_DEVICE_ROOM_BYTES


async def _shard_bounds(
    conn: asyncpg.Connection, event: asyncpg.Record, shard_size: int
) -> list[tuple[int, int]]:
    """[lo, hi) user-id ranges of about ``shard_size`` subscribers each."""
    if event["user_id"] is not None:  # a 1:1 send: one user, one shard
        return [(event["user_id"], event["user_id"] + 1)]
    bounds = []
    lo = 0
    while True:
        hi = await conn.fetchval(queries.NEXT_SHARD_BOUNDARY, event["topic_id"], lo, shard_size)
        if hi is None:
            bounds.append((lo, MAX_USER_ID))
            return bounds
        bounds.append((lo, hi))
        lo = hi


async def run_shard(
    event_id: int,
    shard: int,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
) -> ShardReport:
    """Stream one shard's devices into delivery batches on the delivery queue.

    ``time_left`` (seconds, e.g. a Lambda's remaining time) makes the shard stop at a
    checkpoint when it runs short and re-enqueue itself to go on from there.
    """
    lease = settings.visibility_timeout
    overdue_after = settings.reconcile_after_seconds
    async with pool.acquire() as conn:
        claim = await conn.fetchrow(queries.CLAIM_SHARD, event_id, shard, lease, overdue_after)
        if claim is None:
            held = await conn.fetchrow(queries.SHARD_STATUS, event_id, shard)
            if held is None:
                raise PoisonMessage(f"unknown shard {shard} of event {event_id}")
            if held["status"] in ("done", "failed"):
                return ShardReport(event_id, shard, already_done=True)
            # Held by another invocation: this copy is redundant while the holder lives, and
            # is wanted once its lease is over if the holder died (the runtime brings it
            # back then; PostgreSQL and the reconciler make sure it is not lost either way).
            log.info("shard %d of event %d is being fanned out elsewhere", shard, event_id)
            return ShardReport(event_id, shard, busy=True, lease_left=held["lease_left"])
        try:
            return await _stream_shard(
                conn, event_id, shard, claim, queues, settings, time_left=time_left
            )
        except BaseException as failure:
            await leases.give_up(_releaser(pool, event_id, shard, settings), failure, lease)


def _releaser(
    pool: asyncpg.Pool, event_id: int, shard: int, settings: Settings
) -> Callable[[str], Awaitable[object]]:
    # On a connection of its own: the shard's may be broken, or busy with a cancelled page.
    async def release(reason: str) -> None:
        async with pool.acquire() as conn:
            await conn.execute(
                queries.RELEASE_SHARD, event_id, shard, settings.reconcile_after_seconds, reason
            )

    return release


async def _stream_shard(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    claim: asyncpg.Record,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None,
) -> ShardReport:
    """Page through the shard's users from its checkpoint, pack, send, checkpoint."""
    lease = settings.visibility_timeout
    event = await conn.fetchrow(queries.LOAD_EVENT, event_id)
    cursor = claim["cursor_user_id"]
    progress = _Progress(
        cursor=claim["lo_user_id"] - 1 if cursor is None else cursor,
        recipients=claim["recipients"],
        devices=claim["devices"],
        batches=claim["batches"],
    )
    packer = BatchPacker(
        event_id=event_id,
        shard=shard,
        notification=event["notification"],
        max_bytes=batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes),
    )
    sent: list[PackedBatch] = []  # sent to SQS, not yet recorded

    async def checkpoint() -> None:
        """Record the batches sent and the cursor, renew the lease: this shard is alive."""
        await _checkpoint(conn, event_id, shard, progress, sent, lease, settings)
        sent.clear()

    async def read_page(after: int) -> list[asyncpg.Record]:
        return await _fetch_page(conn, event, after, claim["hi_user_id"], settings)

    rows = await read_page(progress.cursor)
    while rows:
        # The database reads the next page while this one is packed and sent, rather
        # than the database, this process and the queue each waiting for the others.
        # (Fewer rows than a page of subscribers: this is the last page.)
        next_page = None
        if len(rows) >= settings.page_size:
            next_page = asyncio.create_task(read_page(rows[-1][0]))
        try:
            full, subscribers_in_page = packer.add_rows(rows)
            if subscribers_in_page < settings.page_size:
                full += packer.flush()
            if full:
                await _send(full, queues, progress)
                sent += full
        except BaseException:
            if next_page is not None:
                next_page.cancel()
                await asyncio.gather(next_page, return_exceptions=True)
            raise
        rows = await next_page if next_page is not None else []
        if full:
            await checkpoint()
            if settings.delivery_backlog_limit is not None:
                await queues.delivery.wait_for_room(
                    settings.delivery_backlog_limit, keep_alive=checkpoint
                )
        if rows and time_left is not None and time_left() < 10.0:
            return await _yield_shard(conn, queues, event_id, shard, progress, sent, settings)
    if tail := packer.flush():
        await _send(tail, queues, progress)
        sent += tail
    async with conn.transaction():
        await checkpoint()
        await conn.execute(queries.LOCK_EVENT, event_id)
        await conn.execute(
            queries.FINISH_SHARD,
            event_id,
            shard,
            progress.recipients,
            progress.devices,
            progress.batches,
        )
        fanned_out = await conn.execute(
            queries.MARK_EVENT_FANNED_OUT, event_id, settings.reconcile_after_seconds
        )
    if fanned_out.endswith(" 1"):  # the last shard: the event may have nothing left open
        await conn.execute(queries.FINISH_EVENT, event_id)
    return ShardReport(event_id, shard, progress.recipients, progress.devices, progress.batches)


async def _fetch_page(
    conn: asyncpg.Connection, event: asyncpg.Record, cursor: int, hi: int, settings: Settings
) -> list[asyncpg.Record]:
    if event["user_id"] is not None:
        rows: list[asyncpg.Record] = await conn.fetch(
            queries.USER_RECIPIENTS, event["user_id"], cursor
        )
    else:
        rows = await conn.fetch(
            queries.TOPIC_RECIPIENTS_PAGE, event["topic_id"], cursor, hi, settings.page_size
        )
    return rows


async def _send(batches: list[PackedBatch], queues: Queues, progress: _Progress) -> None:
    await queues.delivery.send_many([b.body for b in batches])
    progress.cursor = batches[-1].last_user
    progress.recipients += sum(b.users for b in batches)
    progress.devices += sum(b.devices for b in batches)
    progress.batches += len(batches)


async def _checkpoint(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    progress: _Progress,
    sent: list[PackedBatch],
    lease: int,
    settings: Settings,
) -> None:
    await conn.execute(
        queries.CHECKPOINT_SHARD,
        event_id,
        shard,
        progress.cursor,
        progress.recipients,
        progress.devices,
        progress.batches,
        lease,
        settings.reconcile_after_seconds,
        settings.reconcile_after_seconds,
        [b.key for b in sent],
        [b.devices for b in sent],
        [b.first_user for b in sent],
        [b.last_user for b in sent],
    )


async def _yield_shard(
    conn: asyncpg.Connection,
    queues: Queues,
    event_id: int,
    shard: int,
    progress: _Progress,
    sent: list[PackedBatch],
    settings: Settings,
) -> ShardReport:
    """Out of time (or the worker is stopping): hand the rest of the shard to a fresh
    message and free the lease, so whoever receives it goes on at once."""
    await _checkpoint(conn, event_id, shard, progress, sent, 0, settings)
    await queues.fanout.send(FanoutTask(event_id, shard).encode())
    log.info(
        "event %d shard %d: out of time at user %d, re-enqueued", event_id, shard, progress.cursor
    )
    return ShardReport(
        event_id, shard, progress.recipients, progress.devices, progress.batches, finished=False
    )
