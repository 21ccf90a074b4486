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

The page query applies the audience rules (opt-outs, topic mutes, frequency caps:
``store.queries.AUDIENCE_RULES``): a subscriber held back comes as one row naming the
reason, is counted when the cursor passes them (the checkpoint stores the totals, so a
resumed shard counts nobody twice), and the users of each batch sent are recorded for
the caps in the checkpoint's own statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from fanout import store
from fanout.config import Settings
from fanout.metrics import AUDIENCE_HELD_BACK, EVENTS_FINISHED
from fanout.queue.messages import FanoutTask, PoisonMessage
from fanout.queue.sqs import Queues
from fanout.stages import leases
from fanout.stages.batching import (
    BatchPacker,
    PackedBatch,
    batch_max_bytes,
    bytes_short,
)

log = logging.getLogger(__name__)

MAX_USER_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ShardReport:
    event_id: int
    shard: int
    recipients: int = 0
    devices: int = 0
    batches: int = 0
    held_back: dict[str, int] = field(default_factory=dict)  # filtered out, by reason
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
    held_back: Counter[str]

    def hold_back(self, counts: dict[str, int]) -> None:
        """Count recipients the audience rules filtered out, now behind the cursor."""
        for reason, count in counts.items():
            self.held_back[reason] += count
            AUDIENCE_HELD_BACK.labels(reason).inc(count)


@dataclass(frozen=True, slots=True)
class _Audience:
    """What the shard's page query needs to apply the audience rules, and whether the
    pushes must be recorded for the frequency caps (only while some cap counts them)."""

    category: str | None
    record_sends: bool


async def run_fanout_task(
    task: FanoutTask,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
    reader: asyncpg.Pool | None = None,
) -> list[ShardReport]:
    """Plan an event (and run its first shard), or run one shard. ``reader``: the pool the
    recipient pages are read from (a replica: FANOUT_DATABASE_READ_URL); else ``pool``."""
    if task.shard is None:
        return await plan_event(
            task.event_id, pool, queues, settings, time_left=time_left, reader=reader
        )
    return [
        await run_shard(
            task.event_id, task.shard, pool, queues, settings, time_left=time_left, reader=reader
        )
    ]


async def plan_event(
    event_id: int,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
    reader: asyncpg.Pool | None = None,
) -> list[ShardReport]:
    """Split the event into shards, send a message for each but the first, run the first.

    Re-running it (a redelivered message) plans nothing twice: it re-sends messages for
    the shards not yet done, which are no-ops if those shards are running or finished.
    """
    async with store.acquire(pool) as conn:
        event = await store.load_event(conn, event_id=event_id)
        if event is None:
            raise PoisonMessage(f"unknown event {event_id}")
        if event.status not in ("pending", "enqueued", "fanning_out"):
            return []  # fanned out, or ended
        if not _fits_a_batch(event, queues, settings):
            await store.fail_event(
                conn, event_id=event_id, reason="notification too large for a batch"
            )
            log.error("event %d: its notification cannot fit a delivery batch", event_id)
            return []
        unfinished = await store.unfinished_shards(conn, event_id=event_id)
        if not unfinished and event.status != "fanning_out":
            if reader is None:
                bounds = await _shard_bounds(conn, event, settings.shard_size)
            else:  # a read of the topic's whole index: the replica's work too
                async with store.acquire(reader) as replica:
                    bounds = await _shard_bounds(replica, event, settings.shard_size)
            async with conn.transaction():
                await store.insert_shards(
                    conn,
                    event_id=event_id,
                    bounds=bounds,
                    overdue_after=settings.reconcile_after_seconds,
                )
                await store.mark_event_fanning_out(conn, event_id=event_id)
            unfinished = list(range(len(bounds)))
            log.info("event %d: planned %d shard(s)", event_id, len(bounds))
    if not unfinished:
        return []
    first, rest = unfinished[0], unfinished[1:]
    await queues.fanout.send_many([FanoutTask(event_id, shard).encode() for shard in rest])
    return [
        await run_shard(event_id, first, pool, queues, settings, time_left=time_left, reader=reader)
    ]


def _fits_a_batch(event: store.Event, queues: Queues, settings: Settings) -> bool:
    """False for a notification published before it was checked at the door."""
    max_bytes = batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes)
    return not bytes_short(event.notification, max_bytes)


async def _shard_bounds(
    conn: asyncpg.Connection, event: store.Event, shard_size: int
) -> list[tuple[int, int]]:
    """[lo, hi) user-id ranges of about ``shard_size`` subscribers each."""
    if event.user_id is not None:  # a 1:1 send: one user, one shard
        return [(event.user_id, event.user_id + 1)]
    assert event.topic_id is not None
    bounds = []
    lo = 0
    while True:
        hi = await store.next_shard_boundary(
            conn, topic_id=event.topic_id, from_user_id=lo, shard_size=shard_size
        )
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
    reader: asyncpg.Pool | None = None,
) -> ShardReport:
    """Stream one shard's devices into delivery batches on the delivery queue.

    ``time_left`` (seconds, e.g. a Lambda's remaining time) makes the shard stop at a
    checkpoint when it runs short and re-enqueue itself to go on from there.
    """
    lease = settings.visibility_timeout
    overdue_after = settings.reconcile_after_seconds
    async with store.acquire(pool) as conn:
        claim = await store.claim_shard(
            conn,
            event_id=event_id,
            shard=shard,
            lease_seconds=lease,
            overdue_after=overdue_after,
        )
        if claim is None:
            held = await store.shard_status(conn, event_id=event_id, shard=shard)
            if held is None:
                raise PoisonMessage(f"unknown shard {shard} of event {event_id}")
            if held.status in ("done", "failed"):
                return ShardReport(event_id, shard, already_done=True)
            # Held by another invocation: this copy is redundant while the holder lives, and
            # is wanted once its lease is over if the holder died (the runtime brings it
            # back then; PostgreSQL and the reconciler make sure it is not lost either way).
            log.info("shard %d of event %d is being fanned out elsewhere", shard, event_id)
            return ShardReport(event_id, shard, busy=True, lease_left=held.lease_left)
        try:
            return await _stream_shard(
                conn, event_id, shard, claim, queues, settings, time_left=time_left, reader=reader
            )
        except BaseException as failure:
            await leases.give_up(_releaser(pool, event_id, shard, settings), failure, lease)


def _releaser(
    pool: asyncpg.Pool, event_id: int, shard: int, settings: Settings
) -> Callable[[str], Awaitable[object]]:
    # On a connection of its own: the shard's may be broken, or busy with a cancelled page.
    async def release(reason: str) -> None:
        async with store.acquire(pool) as conn:
            await store.release_shard(
                conn,
                event_id=event_id,
                shard=shard,
                overdue_after=settings.reconcile_after_seconds,
                reason=reason,
            )

    return release


async def _stream_shard(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    claim: store.ShardClaim,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None,
    reader: asyncpg.Pool | None = None,
) -> ShardReport:
    """Page through the shard's users from its checkpoint, pack, send, checkpoint."""
    lease = settings.visibility_timeout
    event = await store.load_event(conn, event_id=event_id)
    assert event is not None  # the shard's row refers to it
    cursor = claim.cursor_user_id
    progress = _Progress(
        cursor=claim.lo_user_id - 1 if cursor is None else cursor,
        recipients=claim.recipients,
        devices=claim.devices,
        batches=claim.batches,
        held_back=Counter(claim.held_back),
    )
    category = event.notification.get("category")
    audience = _Audience(category, await store.caps_apply(conn, category=category))
    packer = BatchPacker(
        event_id=event_id,
        shard=shard,
        notification=event.notification,
        max_bytes=batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes),
        published_at=event.created_at.timestamp(),
    )
    sent: list[PackedBatch] = []  # sent to SQS, not yet recorded

    async def checkpoint() -> None:
        """Record the batches sent and the cursor, renew the lease: this shard is alive."""
        await _checkpoint(conn, event_id, shard, progress, sent, audience, lease, settings)
        sent.clear()

    async def read_page(after: int) -> list[asyncpg.Record]:
        if reader is None:
            return await _fetch_page(conn, event, after, claim.hi_user_id, audience, settings)
        # The replica's: a connection per page, so none is held while a page is packed.
        async with store.acquire(reader) as replica:
            return await _fetch_page(replica, event, after, claim.hi_user_id, audience, settings)

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
            return await _yield_shard(
                conn, queues, event_id, shard, progress, sent, audience, settings
            )
    if tail := packer.flush():
        await _send(tail, queues, progress)
        sent += tail
    progress.hold_back(packer.take_held_back())  # those after the last batch
    async with conn.transaction():
        await checkpoint()
        await store.lock_event(conn, event_id=event_id)
        await store.finish_shard(
            conn,
            event_id=event_id,
            shard=shard,
            recipients=progress.recipients,
            devices=progress.devices,
            batches=progress.batches,
            held_back=dict(progress.held_back),
        )
        fanned_out = await store.mark_event_fanned_out(
            conn, event_id=event_id, overdue_after=settings.reconcile_after_seconds
        )
    # The last shard: the event may have nothing left open.
    if fanned_out and (ended := await store.finish_event(conn, event_id=event_id)):
        EVENTS_FINISHED.labels(ended).inc()
    return ShardReport(
        event_id,
        shard,
        progress.recipients,
        progress.devices,
        progress.batches,
        dict(progress.held_back),
    )


async def _fetch_page(
    conn: asyncpg.Connection,
    event: store.Event,
    cursor: int,
    hi: int,
    audience: _Audience,
    settings: Settings,
) -> list[asyncpg.Record]:
    if event.user_id is not None:
        return await store.user_recipients(
            conn,
            user_id=event.user_id,
            after_user_id=cursor,
            event_id=event.id,
            category=audience.category,
        )
    assert event.topic_id is not None
    return await store.topic_recipients_page(
        conn,
        topic_id=event.topic_id,
        after_user_id=cursor,
        before_user_id=hi,
        limit=settings.page_size,
        event_id=event.id,
        category=audience.category,
    )


async def _send(batches: list[PackedBatch], queues: Queues, progress: _Progress) -> None:
    await queues.delivery.send_many([b.body for b in batches])
    progress.cursor = batches[-1].last_user
    progress.recipients += sum(b.users for b in batches)
    progress.devices += sum(b.devices for b in batches)
    progress.batches += len(batches)
    for batch in batches:
        if batch.held_back:
            progress.hold_back(batch.held_back)


async def _checkpoint(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    progress: _Progress,
    sent: Sequence[PackedBatch],
    audience: _Audience,
    lease: int,
    settings: Settings,
) -> None:
    # A push counts toward the caps once its batch is on the delivery queue (recorded
    # here, with the batch): bounded, once per user and event, whatever delivery does.
    counted = [user for b in sent for user in b.user_ids] if audience.record_sends else []
    await store.checkpoint_shard(
        conn,
        event_id=event_id,
        shard=shard,
        cursor=progress.cursor,
        recipients=progress.recipients,
        devices=progress.devices,
        batches=progress.batches,
        held_back=dict(progress.held_back),
        accepted=sent,
        category=audience.category,
        counted_users=counted,
        lease_seconds=lease,
        overdue_after=settings.reconcile_after_seconds,
    )


async def _yield_shard(
    conn: asyncpg.Connection,
    queues: Queues,
    event_id: int,
    shard: int,
    progress: _Progress,
    sent: list[PackedBatch],
    audience: _Audience,
    settings: Settings,
) -> ShardReport:
    """Out of time (or the worker is stopping): hand the rest of the shard to a fresh
    message and free the lease, so whoever receives it goes on at once."""
    await _checkpoint(conn, event_id, shard, progress, sent, audience, 0, settings)
    await queues.fanout.send(FanoutTask(event_id, shard).encode())
    log.info(
        "event %d shard %d: out of time at user %d, re-enqueued", event_id, shard, progress.cursor
    )
    return ShardReport(
        event_id,
        shard,
        progress.recipients,
        progress.devices,
        progress.batches,
        dict(progress.held_back),
        finished=False,
    )
