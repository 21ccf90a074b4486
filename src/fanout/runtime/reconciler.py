"""The reconciler: PostgreSQL drives liveness, the queue is only transport.

Every unit of work has a row from the moment it exists, and while it is unfinished a
``due_at``: an event until its fan-out starts (and, once fanned out, until it ends), a
shard until it is done, a delivery batch (and each retry batch) until its outcome is
recorded. Working on a unit moves its ``due_at`` on (a claim, a checkpoint, a renewed
lease). A unit past its ``due_at`` has lost its message, or its message was
dead-lettered, or its holder died: the reconciler sends the message again from what
PostgreSQL holds: the event's fan-out task, the shard's task (it resumes at its
checkpoint), a fan-out batch by its range of users, a retry batch by its device ids.
A message sent twice is harmless: every stage skips work that is done or held.

Events held in PostgreSQL (stages/publish.py, stages/fanout.py) are released by the same
scan: a 'scheduled' event is due at its ``send_at`` (or first wave) and is enqueued then;
an event fanning out with a wave or deferred recipients still held is due at the first of
them and is sent to be planned again, which fans that release out.

A unit resent ``reconcile_max_resends`` times is given up, so that every event ends:
its devices count failed, with the reason. Each pass costs a few indexed statements
and a row per overdue unit, never a row per device.

A paced event's batches (stages/pacing.py) are recorded with the time they may go and no
``due_at``: nothing of them is on SQS. The pacer's sweep (``release_paced``: every pass,
and every second in each worker, ``run_pacer``) sends those whose time has come, giving each
a ``due_at`` as it does, so from there they are ordinary batches.

It runs in every ``fanout worker`` (``run_reconciler``) and, on AWS, as its own
scheduled function (``runtime.lambdas.reconcile_handler``); many at once share the work
(``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from fanout.config import Settings
from fanout.metrics import RECONCILER_ACTIONS
from fanout.queue.admin import observe_queue_depths
from fanout.queue.messages import DeliveryBatch, FanoutTask
from fanout.queue.sqs import Queue, Queues
from fanout.stages import delivery
from fanout.stages.batching import users_of_key
from fanout.store import acquire, audience, batches, events, lifecycle, shards, webhooks
from fanout.store.batches import DueBatch
from fanout.store.events import DueEvent, Event
from fanout.store.lifecycle import EventState
from fanout.store.shards import DueShard
from fanout.webhooks.payloads import FAILED, given_up_report

log = logging.getLogger(__name__)

Row = TypeVar("Row")

# Units taken per statement and pass: a pass stays short, and the next one takes more.
_PER_PASS = 500
# Four GetQueueAttributes calls (both queues, both DLQs) per worker every 15 s, rather than
# every pass (5 s): a scrape interval's worth, and a third of the SQS requests.
QUEUE_DEPTHS_EVERY = 15.0


@dataclass
class ReconcileReport:
    """What one pass did."""

    events_resent: int = 0
    events_released: int = 0  # scheduled events enqueued, holds sent to be planned
    events_finished: int = 0
    shards_resent: int = 0
    batches_resent: int = 0
    batches_released: int = 0  # paced batches sent as their time came (not a fault)
    given_up: list[str] = field(default_factory=list)

    @property
    def actions(self) -> int:
        return (
            self.events_resent
            + self.events_released
            + self.events_finished
            + self.shards_resent
            + self.batches_resent
            + len(self.given_up)
        )


async def reconcile_once(
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    look_ahead: float = 0.0,
    event_id: int | None = None,
) -> ReconcileReport:
    """One pass over every overdue unit (of one event, with ``event_id``). ``look_ahead``
    (seconds) treats units due that soon as due now: tests use it to act as a later pass
    would, without waiting."""
    report = ReconcileReport()
    run = _Pass(settings, report, look_ahead, event_id)
    await _reconcile(pool, queues, run, _EVENTS)
    await _reconcile(pool, queues, run, _SHARDS)
    await _reconcile(pool, queues, run, _BATCHES)
    if event_id is None:
        await _reconcile(pool, queues, run, _PACED)
        await _prune_user_sends(pool)
    _count_actions(report)
    if report.actions:
        log.warning(
            "reconciler: released %d event(s); resent %d event(s), %d shard(s), %d batch(es); "
            "ended %d event(s)%s",
            report.events_released,
            report.events_resent,
            report.shards_resent,
            report.batches_resent,
            report.events_finished,
            f"; gave up {', '.join(report.given_up)}" if report.given_up else "",
        )
    return report


# Recorded pushes (user_sends) deleted per pass at most: a bounded statement, never a
# long lock, however much has aged out at once.
_PRUNE_PER_PASS = 10_000


def _count_actions(report: ReconcileReport) -> None:
    for kind, count in (
        ("event_resent", report.events_resent),
        ("event_finished", report.events_finished),
        ("shard_resent", report.shards_resent),
        ("batch_resent", report.batches_resent),
        ("given_up", len(report.given_up)),
    ):
        # Every kind every pass (0 too): a series that exists from the first pass on.
        RECONCILER_ACTIONS.labels(kind).inc(count)


@dataclass
class _Pass:
    """One pass: what every table's claim is asked for besides how many, what the pass has
    done so far, and the events it has read (a batch's message carries its notification)."""

    settings: Settings
    report: ReconcileReport
    look_ahead: float
    event_id: int | None
    loaded: dict[int, Event] = field(default_factory=dict)

    def claim(self) -> dict[str, Any]:
        """The keyword arguments of a ``claim_due_*`` call."""
        return {
            "limit": _PER_PASS,
            "overdue_after": self.settings.reconcile_after_seconds,
            "look_ahead": self.look_ahead,
            "event_id": self.event_id,
        }

    def too_often(self, resends: int) -> bool:
        return resends > self.settings.reconcile_max_resends


@dataclass(frozen=True)
class _Resend:
    """A unit to send again: its message, the report's count it adds to, and what is
    recorded once the message is on the queue."""

    message: str
    counted_as: str
    then: Callable[[asyncpg.Connection], Awaitable[None]] | None = None


@dataclass(frozen=True)
class _Table(Generic[Row]):
    """A table of units the reconciler scans: how its overdue rows are claimed, what each
    becomes (a resend, or None when it was given up or settled in PostgreSQL), and the
    queue its messages go to."""

    claim: Callable[..., Awaitable[Sequence[Row]]]
    visit: Callable[[asyncpg.Connection, Row, _Pass], Awaitable[_Resend | None]]
    queue: Callable[[Queues], Queue]


async def _reconcile(pool: asyncpg.Pool, queues: Queues, run: _Pass, table: _Table[Row]) -> None:
    """Claim the table's overdue units, visit each, send the resends in one go."""
    async with pool.acquire() as conn:
        resends = []
        for row in await table.claim(conn, **run.claim()):
            if (resend := await table.visit(conn, row, run)) is not None:
                resends.append(resend)
    if not resends:
        return
    await table.queue(queues).send_many([resend.message for resend in resends])
    if then := [resend.then for resend in resends if resend.then is not None]:
        async with pool.acquire() as conn:
            for record in then:
                await record(conn)
    for resend in resends:
        setattr(run.report, resend.counted_as, getattr(run.report, resend.counted_as) + 1)


async def _event(conn: asyncpg.Connection, row: DueEvent, run: _Pass) -> _Resend | None:
    message = FanoutTask(row.id).encode()
    overdue_after = run.settings.reconcile_after_seconds
    match row.status:
        case EventState.FANNED_OUT:  # waiting for its last batch: has it ended?
            if await lifecycle.finish(conn, event_id=row.id):
                run.report.events_finished += 1
        case EventState.SCHEDULED:  # its time has come: enqueued from here
            await lifecycle.mark_enqueued(conn, event_id=row.id, overdue_after=overdue_after)
            return _Resend(message, "events_released")
        case EventState.FANNING_OUT:  # a wave or deferred recipients are due
            return _Resend(message, "events_released")
        case EventState.PENDING | EventState.ENQUEUED if run.too_often(row.resends):
            reason = f"fan-out never started after {row.resends - 1} resends"
            await lifecycle.fail(conn, event_id=row.id, reason=reason)
            run.report.given_up.append(f"event {row.id}")
        case EventState.PENDING | EventState.ENQUEUED:
            return _Resend(
                message,
                "events_resent",
                then=functools.partial(
                    lifecycle.mark_enqueued, event_id=row.id, overdue_after=overdue_after
                ),
            )
    return None


async def _shard(conn: asyncpg.Connection, row: DueShard, run: _Pass) -> _Resend | None:
    event_id, shard = row.event_id, row.shard_no
    if not run.too_often(row.resends):
        return _Resend(FanoutTask(event_id, shard).encode(), "shards_resent")
    reason = f"given up after {row.resends - 1} resends: {row.last_error}"
    await shards.give_up_shard(conn, event_id=event_id, shard=shard, reason=reason)
    # The event may now be fanned out, and may have ended.
    overdue_after = run.settings.reconcile_after_seconds
    await lifecycle.mark_fanned_out(conn, event_id=event_id, overdue_after=overdue_after)
    if await lifecycle.finish(conn, event_id=event_id):
        run.report.events_finished += 1
    run.report.given_up.append(f"shard {shard} of event {event_id}")
    return None


async def _batch(conn: asyncpg.Connection, row: DueBatch, run: _Pass) -> _Resend | None:
    event_id, key = row.event_id, row.batch_key
    users = (
        (row.first_user_id, row.last_user_id)
        if row.first_user_id is not None and row.last_user_id is not None
        else users_of_key(key)  # claimed before the fan-out recorded it
    )
    rereadable = users is not None or row.device_ids is not None
    if run.too_often(row.resends) or not rereadable:
        # Not re-readable: a retry batch sent before this bookkeeping existed.
        reason = f"given up after {row.resends - 1} resends"
        if row.last_error:
            reason += f": {row.last_error}"
        reason = reason[:200]
        # Its devices failed for good: the devices.failed webhook is written with the fact
        # (the outbox), as the delivery writes those it saw fail.
        async with conn.transaction():
            if await batches.give_up_batch(conn, event_id=event_id, batch_key=key, reason=reason):
                await _report_given_up(conn, row, users, reason, run)
        await lifecycle.finish(conn, event_id=event_id)
        run.report.given_up.append(f"batch {key} of event {event_id}")
        return None
    return _Resend(await _batch_message(conn, row, users, run), "batches_resent")


async def _report_given_up(
    conn: asyncpg.Connection,
    row: DueBatch,
    users: tuple[int, int] | None,
    reason: str,
    run: _Pass,
) -> None:
    """Write the ``devices.failed`` webhook of a batch given up, in the caller's
    transaction: its devices re-read as its resend would read them. Only when an endpoint
    of the event's app wants it (the re-read is a query of its own); a batch with neither
    device ids nor users to re-read has no list to give."""
    batch, event = await _batch_of(conn, row, users, run)
    if not batch.rereads or not await webhooks.wants(conn, app_id=event.app_id, kind=FAILED):
        return
    delivery.fill_devices(batch, await delivery.batch_device_rows(conn, batch, run.settings))
    report = given_up_report(
        list(batch.iter_devices()),
        event_id=row.event_id,
        batch_key=row.batch_key,
        reason=reason,
        live_activity=delivery.is_live_activity(batch),
    )
    if report is not None:
        kind, payload = report
        await webhooks.enqueue(conn, app_id=event.app_id, kind=kind, payload=payload)


async def _batch_of(
    conn: asyncpg.Connection, row: DueBatch, users: tuple[int, int] | None, run: _Pass
) -> tuple[DeliveryBatch, Event]:
    """The batch (its devices to be re-read from PostgreSQL) and its event."""
    event_id = row.event_id
    if event_id not in run.loaded:
        loaded = await events.load_event(conn, event_id=event_id)
        assert loaded is not None  # the batch's row refers to it
        run.loaded[event_id] = loaded
    event = run.loaded[event_id]
    batch = DeliveryBatch(event_id, row.batch_key, row.attempt, event.notification)
    batch.published_at = event.created_at.timestamp()
    if row.device_ids is not None:
        batch.device_ids = list(row.device_ids)
    else:
        batch.users = users
    return batch, event


async def _batch_message(
    conn: asyncpg.Connection, row: DueBatch, users: tuple[int, int] | None, run: _Pass
) -> str:
    """The batch's message, its devices re-read from PostgreSQL by the delivery."""
    batch, _ = await _batch_of(conn, row, users, run)
    return batch.encode()


async def _paced(conn: asyncpg.Connection, row: DueBatch, run: _Pass) -> _Resend | None:
    """A paced batch whose time has come: its message, read by its range of users."""
    assert row.first_user_id is not None and row.last_user_id is not None  # the fan-out's
    users = (row.first_user_id, row.last_user_id)
    return _Resend(await _batch_message(conn, row, users, run), "batches_released")


# The three tables, in the order a pass scans them: an event before its shards, a shard
# before its batches.
_EVENTS = _Table(events.claim_due_events, _event, lambda queues: queues.fanout)
_SHARDS = _Table(shards.claim_due_shards, _shard, lambda queues: queues.fanout)
_BATCHES = _Table(batches.claim_due_batches, _batch, lambda queues: queues.delivery)


def _claim_paced(conn: asyncpg.Connection, **claim: Any) -> Awaitable[list[DueBatch]]:
    return batches.release_paced_batches(
        conn,
        limit=claim["limit"],
        overdue_after=claim["overdue_after"],
        look_ahead=claim["look_ahead"],
    )


_PACED = _Table(_claim_paced, _paced, lambda queues: queues.delivery)


async def release_paced(
    pool: asyncpg.Pool, queues: Queues, settings: Settings, *, look_ahead: float = 0.0
) -> int:
    """Send every paced batch whose time has come (``look_ahead`` seconds count as
    passed); how many were sent."""
    report = ReconcileReport()
    await _reconcile(pool, queues, _Pass(settings, report, look_ahead, None), _PACED)
    return report.batches_released


async def run_pacer(
    pool: asyncpg.Pool, queues: Queues, settings: Settings, stopping: asyncio.Event
) -> None:
    """Send the paced batches that have come due every ``pacing_interval_seconds`` until
    ``stopping`` is set; a failed sweep is logged and the next one tries again (a batch
    claimed but not sent has its due_at: the reconciler sends it)."""
    period = settings.pacing_interval_seconds
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
        if stopping.is_set():
            return
        try:
            while await release_paced(pool, queues, settings) >= _PER_PASS:
                pass  # more are due than a sweep takes: take them now
        except Exception as exc:
            log.warning("pacer sweep failed (tries again in %.0fs): %r", period, exc)


async def run_reconciler(
    pool: asyncpg.Pool, queues: Queues, settings: Settings, stopping: asyncio.Event
) -> None:
    """Reconcile every ``reconcile_interval_seconds`` until ``stopping`` is set; a failed
    pass (the database or the queue away) is logged and the next one tries again. The
    queues' depths (the SQS gauges) are read after a pass, at most every
    ``QUEUE_DEPTHS_EVERY`` seconds."""
    period = settings.reconcile_interval_seconds
    depths_read = -math.inf
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)
        if stopping.is_set():
            return
        try:
            await reconcile_once(pool, queues, settings)
        except Exception as exc:
            log.warning("reconciler pass failed (tries again in %.0fs): %r", period, exc)
        if time.monotonic() - depths_read >= QUEUE_DEPTHS_EVERY:
            depths_read = time.monotonic()
            try:
                await observe_queue_depths(queues)
            except Exception as exc:  # only the gauges go stale
                log.debug("could not read the queues' depths: %r", exc)


async def _prune_user_sends(pool: asyncpg.Pool) -> None:
    """Forget pushes too old for any frequency cap's window, a bounded chunk per pass."""
    async with acquire(pool) as conn:
        await audience.prune_user_sends(conn, limit=_PRUNE_PER_PASS)
