"""The fan-out stage: an event's subscribers and devices, out of PostgreSQL, into batches on SQS.

An event is fanned out in shards: ranges of user id holding about ``shard_size``
subscribers each. Planning an event writes its shards; each shard then streams its
users with keyset pages (``user_id > cursor``), packs their devices into delivery
batches and sends them, checkpointing the cursor after every send and recording the
batches it sent (one row each, with its range of users). A shard is claimed with a
lease in the invocation's name (``stages.leases``), so a duplicate message is dropped
instead of fanning out twice; a failed one gives its lease up; a crashed one resumes from
its checkpoint; one whose lease lapsed and was taken stops at its next checkpoint.
PostgreSQL knows every shard and batch with a deadline, so whatever happens to their
messages the reconciler sends them again.

The page query applies the audience rules (opt-outs, topic mutes, frequency caps:
``store.fragments.AUDIENCE_RULES``): a subscriber held back comes as one row naming the
reason, is counted when the cursor passes them (the checkpoint stores the totals, so a
resumed shard counts nobody twice), and the users of each batch sent are recorded for
the caps in the checkpoint's own statement.

An event may be released in parts (stages/schedule.py): a ``deliver_at_local`` event's
waves as each comes due, and the recipients its pages deferred (inside their quiet hours)
once their windows end. Each release is planned like an event, into shards of its own that
carry its wave's number, whenever the event is planned again (the reconciler sends it
when its next release is due). A cancel or the event's expiry is seen at every checkpoint
(the statement that records a page's batches returns it): the shard stops there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from fanout.config import Settings
from fanout.metrics import AUDIENCE_HELD_BACK, app_label
from fanout.queue.messages import MAX_DEVICES_PER_BATCH, FanoutTask, PoisonMessage
from fanout.queue.sqs import Queues
from fanout.sources import read_event_members
from fanout.stages import leases, pacing
from fanout.stages.batching import (
    BatchPacker,
    PackedBatch,
    batch_max_bytes,
    bytes_short,
)
from fanout.stages.shard_filter import page_filter_of
from fanout.store import acquire, apps, events, lifecycle, live_activities, shards, sources, waves
from fanout.store.audience import caps_apply, caps_apply_many
from fanout.store.recipients import (
    PageFilter,
    UserRead,
    app_recipients_page,
    defer_recipients,
    topic_recipients_page,
    user_recipients,
    users_recipients,
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
    app: str = ""  # the ``app`` label of the held-back counter (the event's app's key)
    # Users deferred by their quiet hours in the pages read, not yet recorded: (user, when).
    deferred: list[tuple[int, datetime]] = field(default_factory=list)
    # A paced event: its rate, and the end of what is scheduled as the last checkpoint saw it.
    throttle: int | None = None
    paced_until: datetime | None = None

    def hold_back(self, counts: dict[str, int]) -> None:
        """Count recipients the audience rules filtered out, now behind the cursor."""
        for reason, count in counts.items():
            self.held_back[reason] += count
            AUDIENCE_HELD_BACK.labels(reason, self.app).inc(count)

    def report(self, event_id: int, shard: int, *, finished: bool = True) -> ShardReport:
        return ShardReport(
            event_id,
            shard,
            self.recipients,
            self.devices,
            self.batches,
            dict(self.held_back),
            finished=finished,
        )


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
    async with acquire(pool) as conn:
        event = await events.load_event(conn, event_id=event_id)
        if event is None:
            raise PoisonMessage(f"unknown event {event_id}")
        if event.status not in lifecycle.FANNING:
            return []  # fanned out, or ended
        if not _fits_a_batch(event, queues, settings):
            await lifecycle.fail(
                conn, event_id=event_id, reason="notification too large for a batch"
            )
            log.error("event %d: its notification cannot fit a delivery batch", event_id)
            return []
        if event.topic_id is not None and event.source_prefix is None:
            # A sourced topic's audience: read from the app's table once, before any shard.
            try:
                members = await read_event_members(
                    conn,
                    event_id=event_id,
                    topic_id=event.topic_id,
                    time_limit=settings.source_read_timeout_seconds,
                )
            except (
                asyncpg.DataError,
                asyncpg.SyntaxOrAccessError,
                asyncpg.ReadOnlySQLTransactionError,
            ) as failure:
                # The key does not fit the query (author:abc for :key::bigint), the app's
                # table changed under it, FANOUT_SOURCE_ROLE may not read it (a grant
                # revoked), or it writes (the sandbox is read-only): no retry would read it.
                # (A timeout or a lost connection raises on: the message comes back and
                # reads it again.)
                reason = f"its source could not be read: {failure}"
                await lifecycle.fail(conn, event_id=event_id, reason=reason)
                log.error("event %d: %s", event_id, reason)
                return []
            if members:
                log.info("event %d: %d member(s) read from its topic's source", event_id, members)
        async with conn.transaction():
            await events.lock_event(conn, event_id=event_id)
            event = await events.load_event(conn, event_id=event_id)
            assert event is not None
            if event.status in lifecycle.FANNING:
                await _plan_releases(conn, event, settings, reader)
        unfinished = await shards.unfinished_shards(conn, event_id=event_id)
        if not unfinished:  # everything is held for later, or nothing is left to send
            if await _end_if_nothing_open(conn, event_id, settings):
                await lifecycle.finish(conn, event_id=event_id)
            return []
    first, rest = unfinished[0], unfinished[1:]
    await queues.fanout.send_many([FanoutTask(event_id, shard).encode() for shard in rest])
    return [
        await run_shard(event_id, first, pool, queues, settings, time_left=time_left, reader=reader)
    ]


async def _plan_releases(
    conn: asyncpg.Connection,
    event: events.Event,
    settings: Settings,
    reader: asyncpg.Pool | None,
) -> None:
    """Under the event's lock: write shards for what is due (the whole audience once, or
    each wave whose time has come, and the recipients whose quiet hours have ended); a
    cancelled or expired event's holds are dropped first. Then the event is due again at
    its next release, if any."""
    event_id = event.id
    if event.stopped:  # what is held is dropped; a first plan still runs, and its shards
        await waves.drop_holds(conn, event_id=event_id)  # stop at once, counting the rest
    now = datetime.now(UTC)
    first = await shards.next_shard_no(conn, event_id=event_id)
    releases: list[tuple[int | None, list[tuple[int, int]]]] = []
    if not event.in_waves:
        if first == 0:  # not planned before
            releases.append((None, await _bounds(conn, reader, event, settings.shard_size)))
    else:
        for due_wave in await waves.plan_due_waves(conn, event_id=event_id, now=now):
            releases.append((due_wave, await _bounds(conn, reader, event, settings.shard_size)))
    deferred = await waves.release_deferred(conn, event_id=event_id, now=now)
    if deferred is not None:  # usually few users: one shard over the whole range
        releases.append((deferred, [(0, MAX_USER_ID)]))
    for wave, bounds in releases:
        await shards.insert_shards(
            conn,
            event_id=event_id,
            bounds=bounds,
            overdue_after=settings.reconcile_after_seconds,
            first_shard=first,
            wave_no=wave,
        )
        first += len(bounds)
        log.info("event %d: planned %d shard(s) of wave %s", event_id, len(bounds), wave)
    await lifecycle.mark_fanning_out(conn, event_id=event_id)
    await events.hold_event_until_next_release(conn, event_id=event_id)


async def _end_if_nothing_open(conn: asyncpg.Connection, event_id: int, settings: Settings) -> bool:
    """Mark the event fanned out if no shard is open and nothing is held; True if so."""
    async with conn.transaction():
        await events.lock_event(conn, event_id=event_id)
        return await lifecycle.mark_fanned_out(
            conn, event_id=event_id, overdue_after=settings.reconcile_after_seconds
        )


async def _bounds(
    conn: asyncpg.Connection, reader: asyncpg.Pool | None, event: events.Event, shard_size: int
) -> list[tuple[int, int]]:
    # A sourced event's members were written just now, on the primary: a replica behind
    # it would find none, and nobody would be sent to. They are read where they were written.
    if reader is None or event.source_prefix is not None:
        return await _shard_bounds(conn, event, shard_size)
    async with acquire(reader) as replica:  # a read of the topic's whole index
        return await _shard_bounds(replica, event, shard_size)


def _fits_a_batch(event: events.Event, queues: Queues, settings: Settings) -> bool:
    """False for a notification published before it was checked at the door."""
    max_bytes = batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes)
    return not bytes_short(event.notification, max_bytes)


async def _shard_bounds(
    conn: asyncpg.Connection, event: events.Event, shard_size: int
) -> list[tuple[int, int]]:
    """[lo, hi) user-id ranges of about ``shard_size`` subscribers each (for a Live
    Activity, token-id ranges of about ``shard_size`` tokens)."""
    if event.user_id is not None:  # a 1:1 send: one user, one shard
        return [(event.user_id, event.user_id + 1)]
    tokens = live_activities.audience_of(event)
    bounds = []
    lo = 0
    while True:
        if tokens is not None:
            hi = await live_activities.next_token_boundary(
                conn, audience=tokens, from_token_id=lo, shard_size=shard_size
            )
        elif event.source_prefix is not None:
            hi = await sources.next_member_boundary(
                conn, event_id=event.id, from_user_id=lo, shard_size=shard_size
            )
        elif event.topic_id is None:  # a tag filter alone: every user of the app
            hi = await shards.next_app_user_boundary(
                conn, app_id=event.app_id, from_user_id=lo, shard_size=shard_size
            )
        else:
            assert event.topic_id is not None
            hi = await shards.next_shard_boundary(
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
    owner = leases.new_owner()
    releaser = _releaser(pool, event_id, shard, owner, settings)
    try:
        claim, held = await leases.claim(
            lambda: _claim(pool, event_id, shard, owner, settings),
            f"claiming shard {shard} of event {event_id}",
        )
    except BaseException as failure:
        # The claim may have committed unanswered: what this owner may hold is given up.
        # Whether it did is not known, so nothing says to wait the lease out (0 s): a
        # next try that finds the shard held waits for its lease then.
        await leases.give_up(releaser, failure, 0)
    if claim is None:
        if held is None:
            raise PoisonMessage(f"unknown shard {shard} of event {event_id}")
        if held.status in ("done", "failed"):
            return ShardReport(event_id, shard, already_done=True)
        # Held by another invocation: this copy is redundant while the holder lives, and
        # is wanted once its lease is over if the holder died (the runtime brings it
        # back then; PostgreSQL and the reconciler make sure it is not lost either way).
        log.info("shard %d of event %d is being fanned out elsewhere", shard, event_id)
        return ShardReport(event_id, shard, busy=True, lease_left=held.lease_left)
    async with acquire(pool) as conn:
        try:
            return await _stream_shard(
                conn,
                event_id,
                shard,
                owner,
                claim,
                queues,
                settings,
                time_left=time_left,
                reader=reader,
            )
        except leases.LeaseLost as refused:
            # Stalled past its lease (a pause, a partition) while another invocation took
            # the shard: that one goes on from the last checkpoint, re-packing the same
            # batches (same keys: recorded and delivered once), so this copy is redundant.
            log.warning("event %d: %s; stopped", event_id, refused)
            return ShardReport(event_id, shard, busy=True, lease_left=lease)
        except BaseException as failure:
            await leases.give_up(releaser, failure, lease)


async def _claim(
    pool: asyncpg.Pool, event_id: int, shard: int, owner: UUID, settings: Settings
) -> tuple[shards.ShardClaim | None, shards.LeaseStatus | None]:
    """The shard claimed for ``owner``, or None and its status (None: no such shard)."""
    async with acquire(pool) as conn:
        claim = await shards.claim_shard(
            conn,
            event_id=event_id,
            shard=shard,
            owner=owner,
            lease_seconds=settings.visibility_timeout,
            overdue_after=settings.reconcile_after_seconds,
        )
        if claim is not None:
            return claim, None
        return None, await shards.shard_status(conn, event_id=event_id, shard=shard)


def _releaser(
    pool: asyncpg.Pool, event_id: int, shard: int, owner: UUID, settings: Settings
) -> Callable[[str], Awaitable[object]]:
    # On a connection of its own: the shard's may be broken, or busy with a cancelled page.
    async def release(reason: str) -> None:
        async with acquire(pool) as conn:
            await shards.release_shard(
                conn,
                event_id=event_id,
                shard=shard,
                owner=owner,
                overdue_after=settings.reconcile_after_seconds,
                reason=reason,
            )

    return release


async def _stream_shard(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    owner: UUID,
    claim: shards.ShardClaim,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None,
    reader: asyncpg.Pool | None = None,
) -> ShardReport:
    """Page through the shard's users from its checkpoint, pack, send, checkpoint (in
    ``owner``'s name); stop at a checkpoint that finds the event cancelled or expired.
    Raises ``LeaseLost`` at a checkpoint another owner's lease refuses."""
    lease = settings.visibility_timeout
    event = await events.load_event(conn, event_id=event_id)
    assert event is not None  # the shard's row refers to it
    cursor = claim.cursor_user_id
    progress = _Progress(
        cursor=claim.lo_user_id - 1 if cursor is None else cursor,
        recipients=claim.recipients,
        devices=claim.devices,
        batches=claim.batches,
        held_back=Counter(claim.held_back),
        # One look-up per shard (thousands of users), for the metric's label.
        app=app_label(await apps.app_key(conn, app_id=event.app_id)),
        throttle=event.throttle_per_minute,
    )
    read_ahead = timedelta(seconds=settings.pacing_read_ahead_seconds)
    if progress.throttle is not None and not event.stopped:
        progress.paced_until = await events.paced_until(conn, event_id=event_id)
        if pacing.far_enough_ahead(progress.paced_until, datetime.now(UTC), read_ahead):
            return await _park_shard(conn, event_id, shard, owner, progress, read_ahead)
    category = event.notification.get("category")
    # A Live Activity's tokens are no topic's subscribers: no cap counts them.
    counted = event.live_activity_id is None and await caps_apply(
        conn, event_id=event.id, category=category
    )
    audience = _Audience(category, counted)
    page_filter = await page_filter_of(
        conn, event, claim.wave_no, settings, read_before=cursor is not None
    )
    packer = BatchPacker(
        event_id=event_id,
        shard=shard,
        notification=event.notification,
        max_bytes=batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes),
        published_at=event.created_at.timestamp(),
        # Paced: a second's worth of the rate per batch, so that the minute goes out evenly.
        max_devices=MAX_DEVICES_PER_BATCH
        if progress.throttle is None
        else pacing.batch_devices(progress.throttle, MAX_DEVICES_PER_BATCH),
    )
    sent: list[PackedBatch] = []  # sent to SQS, not yet recorded

    async def checkpoint() -> str | None:
        """Record the batches sent and the cursor, renew the lease: this shard is alive.
        Returns why the shard must stop, if it must."""
        stopped = await _checkpoint(
            conn, event_id, shard, owner, progress, sent, audience, lease, settings
        )
        sent.clear()
        return stopped

    async def keep_alive() -> None:
        await checkpoint()  # a stop it finds is seen again at the next page's checkpoint

    async def read_page(after: int) -> list[asyncpg.Record]:
        hi = claim.hi_user_id
        if reader is None or event.source_prefix is not None:  # members: see _bounds
            return await _fetch_page(conn, event, after, hi, audience, page_filter, settings)
        # The replica's: a connection per page, so none is held while a page is packed.
        async with acquire(reader) as replica:
            return await _fetch_page(replica, event, after, hi, audience, page_filter, settings)

    stopped = event.stopped
    rows = [] if stopped else await read_page(progress.cursor)
    while rows:
        # The database reads the next page while this one is packed and sent, rather
        # than the database, this process and the queue each waiting for the others.
        # (Fewer rows than a page of subscribers: this is the last page. A tag filter's
        # page has a row per run of users it left out, not per user: read on.)
        next_page = None
        if len(rows) >= settings.page_size or event.tag_filtered:
            next_page = asyncio.create_task(read_page(rows[-1][0]))
        try:
            _keep_deferred(rows, progress)
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
        await _record_deferred(conn, event_id, progress)  # before a checkpoint passes them
        if full:
            if stopped := await checkpoint():
                break
            if pacing.far_enough_ahead(progress.paced_until, datetime.now(UTC), read_ahead):
                # Enough is scheduled: the rest is read when its time is near, from here.
                return await _park_shard(conn, event_id, shard, owner, progress, read_ahead)
            if settings.delivery_backlog_limit is not None:
                await queues.delivery.wait_for_room(
                    settings.delivery_backlog_limit, keep_alive=keep_alive
                )
        if rows and time_left is not None and time_left() < 10.0:
            return await _yield_shard(
                conn, queues, event_id, shard, owner, progress, sent, audience, settings
            )
    if stopped:
        await _count_unread(conn, event, progress, claim.hi_user_id, stopped)
        log.info(
            "event %d shard %d: stopped (%s) at user %d", event_id, shard, stopped, progress.cursor
        )
    else:
        if tail := packer.flush():
            await _send(tail, queues, progress)
            sent += tail
        progress.hold_back(packer.take_held_back())  # those after the last batch
    return await _end_shard(conn, event_id, shard, owner, progress, checkpoint, settings)


async def _end_shard(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    owner: UUID,
    progress: _Progress,
    checkpoint: Callable[[], Awaitable[str | None]],
    settings: Settings,
) -> ShardReport:
    """The last checkpoint and the shard done in one transaction, the event fanned out if
    this was its last shard (or held for its next release); then the event ended if
    nothing of it is left open."""
    async with conn.transaction():
        await checkpoint()
        await events.lock_event(conn, event_id=event_id)
        finished = await shards.finish_shard(
            conn,
            event_id=event_id,
            shard=shard,
            recipients=progress.recipients,
            devices=progress.devices,
            batches=progress.batches,
            held_back=dict(progress.held_back),
            owner=owner,
        )
        if not finished:  # the checkpoint just now was ours: only a race gets here
            raise leases.lost("shard", f"{shard} of event {event_id}")
        fanned_out = await lifecycle.mark_fanned_out(
            conn, event_id=event_id, overdue_after=settings.reconcile_after_seconds
        )
        if not fanned_out:  # recipients this shard deferred may be the next release
            await events.hold_event_until_next_release(conn, event_id=event_id)
    # The last shard: the event may have nothing left open.
    if fanned_out:
        await lifecycle.finish(conn, event_id=event_id)
    return progress.report(event_id, shard)


def _keep_deferred(rows: list[asyncpg.Record], progress: _Progress) -> None:
    """Keep the page's users deferred by their quiet hours, with the time their window ends
    (the fifth column), to record (the packer counts them with the other held back)."""
    progress.deferred += [
        (row[0], row[4]) for row in rows if row[3] == "deferred" and row[4] is not None
    ]


async def _record_deferred(conn: asyncpg.Connection, event_id: int, progress: _Progress) -> None:
    """One statement for the deferred users of the pages read since the last call. Called
    while no page is being read: the connection runs one statement at a time."""
    if progress.deferred:
        users, release_at = zip(*progress.deferred, strict=True)
        await defer_recipients(
            conn, event_id=event_id, user_ids=list(users), release_at=list(release_at)
        )
        progress.deferred.clear()


async def _count_unread(
    conn: asyncpg.Connection, event: events.Event, progress: _Progress, hi: int, reason: str
) -> None:
    """A stopped shard counts the subscribers it did not send to, past its checkpoint, as
    held back for ``reason``: subscribers, not their devices (which were never read)."""
    tokens = live_activities.audience_of(event)
    if tokens is not None:
        left = await live_activities.tokens_left(
            conn, audience=tokens, after_token_id=progress.cursor, before_token_id=hi
        )
    elif event.user_id is not None:  # a 1:1 send: its one user, if not sent to yet
        left = int(progress.cursor < event.user_id)
    elif event.topic_id is None:  # a tag filter alone: every user of the app
        left = await shards.app_users_left(
            conn, app_id=event.app_id, after_user_id=progress.cursor, before_user_id=hi
        )
    elif event.source_prefix is not None:
        left = await sources.members_left(
            conn, event_id=event.id, after_user_id=progress.cursor, before_user_id=hi
        )
    else:
        left = await shards.subscribers_left(
            conn, topic_id=event.topic_id, after_user_id=progress.cursor, before_user_id=hi
        )
    if left:
        progress.hold_back({reason: left})


async def _fetch_page(
    conn: asyncpg.Connection,
    event: events.Event,
    cursor: int,
    hi: int,
    audience: _Audience,
    page_filter: PageFilter,
    settings: Settings,
) -> list[asyncpg.Record]:
    tokens = live_activities.audience_of(event)
    if tokens is not None:
        return await live_activities.activity_tokens_page(
            conn,
            audience=tokens,
            after_token_id=cursor,
            before_token_id=hi,
            limit=settings.page_size,
        )
    if event.user_id is not None:
        return await user_recipients(
            conn,
            user_id=event.user_id,
            after_user_id=cursor,
            event_id=event.id,
            category=audience.category,
            page_filter=page_filter,
        )
    if event.topic_id is None:  # a tag filter alone: every user of the app
        return await app_recipients_page(
            conn,
            app_id=event.app_id,
            after_user_id=cursor,
            before_user_id=hi,
            limit=settings.page_size,
            event_id=event.id,
            category=audience.category,
            page_filter=page_filter,
        )
    if event.source_prefix is not None:  # read from a source: the event's members
        return await sources.member_recipients_page(
            conn,
            topic_id=event.topic_id,
            after_user_id=cursor,
            before_user_id=hi,
            limit=settings.page_size,
            event_id=event.id,
            category=audience.category,
            page_filter=page_filter,
            tag_filtered=event.tag_filtered,
        )
    return await topic_recipients_page(
        conn,
        topic_id=event.topic_id,
        after_user_id=cursor,
        before_user_id=hi,
        limit=settings.page_size,
        event_id=event.id,
        category=audience.category,
        page_filter=page_filter,
        tag_filtered=event.tag_filtered,
    )


async def _send(batches: list[PackedBatch], queues: Queues, progress: _Progress) -> None:
    if progress.throttle is None:  # a paced event's batches go when due (the pacer's sweep)
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
    owner: UUID,
    progress: _Progress,
    sent: Sequence[PackedBatch],
    audience: _Audience,
    lease: int,
    settings: Settings,
) -> str | None:
    if progress.throttle is not None:
        # The batches' slots on the event's pace clock are taken in the checkpoint's own
        # transaction: refused (its lease lost), it takes none.
        async with conn.transaction():
            not_before: list[datetime | None] | None = None
            if sent:
                slot = await events.reserve_pace(
                    conn, event_id=event_id, devices=sum(b.devices for b in sent)
                )
                not_before = list(
                    pacing.schedule(slot.slot_start, [b.devices for b in sent], progress.throttle)
                )
                progress.paced_until = slot.paced_until
            return await _record_checkpoint(
                conn, event_id, shard, owner, progress, sent, audience, lease, settings, not_before
            )
    return await _record_checkpoint(
        conn, event_id, shard, owner, progress, sent, audience, lease, settings, None
    )


async def _record_checkpoint(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    owner: UUID,
    progress: _Progress,
    sent: Sequence[PackedBatch],
    audience: _Audience,
    lease: int,
    settings: Settings,
    not_before: list[datetime | None] | None,
) -> str | None:
    # A push counts toward the caps once its batch is on the delivery queue (recorded
    # here, with the batch): bounded, once per user and event, whatever delivery does.
    counted = [user for b in sent for user in b.user_ids] if audience.record_sends else []
    checkpoint = await shards.checkpoint_shard(
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
        owner=owner,
        lease_seconds=lease,
        overdue_after=settings.reconcile_after_seconds,
        not_before=not_before,
    )
    if not checkpoint.held:  # the batches are recorded; this invocation sends no more
        raise leases.lost("shard", f"{shard} of event {event_id}")
    return checkpoint.stopped


async def _yield_shard(
    conn: asyncpg.Connection,
    queues: Queues,
    event_id: int,
    shard: int,
    owner: UUID,
    progress: _Progress,
    sent: list[PackedBatch],
    audience: _Audience,
    settings: Settings,
) -> ShardReport:
    """Out of time (or the worker is stopping): hand the rest of the shard to a fresh
    message and free the lease, so whoever receives it goes on at once."""
    await _checkpoint(conn, event_id, shard, owner, progress, sent, audience, 0, settings)
    await queues.fanout.send(FanoutTask(event_id, shard).encode())
    log.info(
        "event %d shard %d: out of time at user %d, re-enqueued", event_id, shard, progress.cursor
    )
    return progress.report(event_id, shard, finished=False)


async def _park_shard(
    conn: asyncpg.Connection,
    event_id: int,
    shard: int,
    owner: UUID,
    progress: _Progress,
    read_ahead: timedelta,
) -> ShardReport:
    """A paced event's shard with enough scheduled ahead of now stops at its checkpoint,
    pending until the pace clock is ``read_ahead`` away again: the reconciler sends its
    task then, and it goes on from its cursor (issue #24)."""
    assert progress.paced_until is not None
    resume_at = pacing.resume_at(progress.paced_until, read_ahead)
    if not await shards.park_shard(
        conn, event_id=event_id, shard=shard, owner=owner, resume_at=resume_at
    ):
        raise leases.lost("shard", f"{shard} of event {event_id}")
    log.info(
        "event %d shard %d: paced, scheduled until %s; reads on at %s from user %d",
        event_id,
        shard,
        progress.paced_until.isoformat(),
        resume_at.isoformat(),
        progress.cursor,
    )
    return progress.report(event_id, shard, finished=False)


def plain_direct(event: events.Event) -> bool:
    """Whether a 1:1 event can be fanned out with others (``fan_out_directs``): one user,
    never planned (pending or enqueued: its shard and its fanning-out status are committed
    together), not held in waves, not paced, not read from a source, not stopped."""
    return (
        event.user_id is not None
        and event.live_activity_id is None
        and event.status in (lifecycle.EventState.PENDING, lifecycle.EventState.ENQUEUED)
        and not event.in_waves
        and event.throttle_per_minute is None
        and event.source_prefix is None
        and not event.stopped
    )


async def fan_out_directs(
    candidates: Sequence[events.Event],
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    reader: asyncpg.Pool | None = None,
) -> tuple[list[ShardReport], list[int]]:
    """Fan out a group's plain 1:1 events (``plain_direct``) together, on one connection:
    what ``plan_event`` and ``run_shard`` do for each (the same statements: the event
    locked and planned, its one shard claimed, its user's devices read with its own
    audience rules and quiet hours, its own batches packed and recorded, the shard done,
    the event fanned out and ended if nothing is open), each step run for the whole group
    at once: one statement over the group or one pipelined round trip (asyncpg's
    ``executemany``/``fetchmany``). Planning is one transaction, the shards' ends another.
    Returns the reports, and the events it left to ``plan_event`` (changed since they were
    loaded: planned meanwhile, stopped, too large for a batch, gone).

    Planned one by one, each event of a group cost ~25 statements: ~25 events/s on the
    loaded 2-core machine for groups arriving at 1,000 sends/s (issue #26). A failure
    raises after giving the claimed shards' leases up: the message comes back, and the
    events planned here (fanning out now, not plain) are then ``plan_event``'s."""
    if not candidates:
        return [], []
    lease = settings.visibility_timeout
    overdue = settings.reconcile_after_seconds
    owner = leases.new_owner()
    ids = sorted({event.id for event in candidates})  # one lock order for every group
    async with acquire(pool) as conn:
        async with conn.transaction():
            await events.lock_events(conn, event_ids=ids)
            planned = [
                event
                for event in await events.load_events(conn, event_ids=ids)
                if plain_direct(event) and _fits_a_batch(event, queues, settings)
            ]
            if planned:  # _plan_releases of a first plan: one shard, over its one user
                await shards.insert_user_shards(
                    conn,
                    event_users=[(event.id, _user(event)) for event in planned],
                    overdue_after=overdue,
                )
                planned_ids = [event.id for event in planned]
                await lifecycle.mark_fanning_out_many(conn, event_ids=planned_ids)
                await events.hold_events_until_next_release(conn, event_ids=planned_ids)
                claimed = await shards.claim_first_shards(
                    conn,
                    event_ids=planned_ids,
                    owner=owner,
                    lease_seconds=lease,
                    overdue_after=overdue,
                )
                if claimed != len(planned):  # written just now, under the events' locks
                    raise RuntimeError("a shard written in this transaction was not claimed")
        left = sorted(set(ids) - {event.id for event in planned})
        if not planned:
            return [], left
        log.info("planned %d 1:1 event(s) of a group, a shard each", len(planned))
        try:
            reports = await _stream_directs(conn, planned, owner, queues, settings, reader)
        except BaseException as failure:
            reason = leases.describe(failure)
            for event in planned:  # each a no-op unless this owner still holds it
                with contextlib.suppress(Exception):
                    async with acquire(pool) as other:
                        await shards.release_shard(
                            other,
                            event_id=event.id,
                            shard=0,
                            owner=owner,
                            overdue_after=overdue,
                            reason=reason,
                        )
            raise
    return reports, left


def _user(event: events.Event) -> int:
    assert event.user_id is not None  # plain_direct
    return event.user_id


async def _stream_directs(
    conn: asyncpg.Connection,
    planned: Sequence[events.Event],
    owner: UUID,
    queues: Queues,
    settings: Settings,
    reader: asyncpg.Pool | None,
) -> list[ShardReport]:
    """``_stream_shard`` and ``_end_shard`` for the group's claimed one-user shards: one
    page each (one user), its batches sent (to the bundling queue) and recorded with every
    shard's checkpoint, then in one transaction every shard's end and its event's."""
    lease = settings.visibility_timeout
    max_bytes = batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes)
    app_keys = {
        app_id: app_label(await apps.app_key(conn, app_id=app_id))
        for app_id in {event.app_id for event in planned}
    }
    categories: list[str | None] = [event.notification.get("category") for event in planned]
    counted = await caps_apply_many(
        conn, events=[(event.id, c) for event, c in zip(planned, categories, strict=True)]
    )
    audiences = [_Audience(c, n) for c, n in zip(categories, counted, strict=True)]
    reads = [
        UserRead(
            event_id=event.id,
            user_id=_user(event),
            after_user_id=_user(event) - 1,
            category=audience.category,
            # page_filter_of for a shard of no wave, never read before
            page_filter=PageFilter(
                quiet_hours=event.quiet_hours,
                default_zone=settings.default_time_zone,
                recheck_deferred=False,
            ),
        )
        for event, audience in zip(planned, audiences, strict=True)
    ]
    if reader is None:
        pages = await users_recipients(conn, reads=reads)
    else:  # the replica's, as run_shard reads a page
        async with acquire(reader) as replica:
            pages = await users_recipients(replica, reads=reads)
    checkpoints, finishes, reports = [], [], []
    for event, audience in zip(planned, audiences, strict=True):
        user = _user(event)
        progress = _Progress(
            cursor=user - 1, recipients=0, devices=0, batches=0, held_back=Counter(),
            app=app_keys[event.app_id],
        )  # fmt: skip
        packer = BatchPacker(
            event_id=event.id,
            shard=0,
            notification=event.notification,
            max_bytes=max_bytes,
            published_at=event.created_at.timestamp(),
            max_devices=MAX_DEVICES_PER_BATCH,
        )
        sent: list[PackedBatch] = []
        if rows := pages[event.id]:  # one user: the first page is the last
            _keep_deferred(rows, progress)
            full, _ = packer.add_rows(rows)
            full += packer.flush()
            if full:
                await _send(full, queues, progress)
                sent += full
        # One user: nobody is left after its batches for a stop to leave unread.
        progress.hold_back(packer.take_held_back())
        await _record_deferred(conn, event.id, progress)  # rare: a user in quiet hours
        checkpoints.append(
            shards.checkpoint_arguments(
                event_id=event.id,
                shard=0,
                cursor=progress.cursor,
                recipients=progress.recipients,
                devices=progress.devices,
                batches=progress.batches,
                held_back=dict(progress.held_back),
                accepted=sent,
                category=audience.category,
                counted_users=[u for b in sent for u in b.user_ids]
                if audience.record_sends
                else [],
                owner=owner,
                lease_seconds=lease,
                overdue_after=settings.reconcile_after_seconds,
            )
        )
        finishes.append(
            (
                event.id,
                0,
                progress.recipients,
                progress.devices,
                progress.batches,
                dict(progress.held_back),
            )
        )
        reports.append(progress.report(event.id, 0))
    ids = [event.id for event in planned]
    # The batches recorded before the shards' ends, as run_shard's checkpoint records them
    # (even for a lease lost: they may be on the queue), then each end as _end_shard's.
    recorded = await shards.checkpoint_shards(conn, each=checkpoints)
    for event_id, checkpoint in zip(ids, recorded, strict=True):
        if not checkpoint.held:
            raise leases.lost("shard", f"0 of event {event_id}")
    async with conn.transaction():
        await events.lock_events(conn, event_ids=ids)
        if await shards.finish_shards(conn, each=finishes, owner=owner) != len(ids):
            raise leases.lost("shard", "0 of an event of the group")
        fanned_out = await lifecycle.mark_fanned_out_many(
            conn, event_ids=ids, overdue_after=settings.reconcile_after_seconds
        )
        # Those with recipients deferred by their quiet hours: due at the first release.
        await events.hold_events_until_next_release(
            conn, event_ids=[i for i in ids if i not in fanned_out]
        )
    await lifecycle.finish_many(conn, event_ids=[i for i in ids if i in fanned_out])
    return reports
