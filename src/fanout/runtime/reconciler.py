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

It runs in every ``fanout worker`` (``run_reconciler``) and, on AWS, as its own
scheduled function (``runtime.lambdas.reconcile_handler``); many at once share the work
(``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from fanout.config import Settings
from fanout.metrics import EVENTS_FINISHED, RECONCILER_ACTIONS
from fanout.queue.admin import observe_queue_depths
from fanout.queue.messages import DeliveryBatch, FanoutTask
from fanout.queue.sqs import Queues
from fanout.stages.batching import users_of_key
from fanout.store import acquire, audience, batches, shards
from fanout.store.events import (
    claim_due_events,
    fail_event,
    finish_event,
    load_event,
    mark_event_enqueued,
    mark_event_fanned_out,
)

log = logging.getLogger(__name__)

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
    due = _Due(settings.reconcile_after_seconds, look_ahead, event_id)
    await _events(pool, queues, settings, due, report)
    await _shards(pool, queues, settings, due, report)
    await _batches(pool, queues, settings, due, report)
    if event_id is None:
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


@dataclass(frozen=True)
class _Due:
    """What every ``store.claim_due_*`` is asked for, besides how many."""

    overdue_after: float
    look_ahead: float
    event_id: int | None

    def claim(self) -> dict[str, Any]:
        """The keyword arguments of a ``store.claim_due_*`` call."""
        return {
            "limit": _PER_PASS,
            "overdue_after": self.overdue_after,
            "look_ahead": self.look_ahead,
            "event_id": self.event_id,
        }


async def _events(
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    due: _Due,
    report: ReconcileReport,
) -> None:
    async with pool.acquire() as conn:
        rows = await claim_due_events(conn, **due.claim())
        to_send = []
        to_release = []
        for row in rows:
            if row.status == "fanned_out":  # waiting for its last batch: has it ended?
                if ended := await finish_event(conn, event_id=row.id):
                    EVENTS_FINISHED.labels(ended).inc()
                    report.events_finished += 1
            elif row.status == "scheduled":  # its time has come: enqueued from here
                await mark_event_enqueued(
                    conn, event_id=row.id, overdue_after=settings.reconcile_after_seconds
                )
                to_release.append(row.id)
            elif row.status == "fanning_out":  # a wave or deferred recipients are due
                to_release.append(row.id)
            elif row.status in ("pending", "enqueued"):
                if row.resends > settings.reconcile_max_resends:
                    reason = f"fan-out never started after {row.resends - 1} resends"
                    await fail_event(conn, event_id=row.id, reason=reason)
                    report.given_up.append(f"event {row.id}")
                else:
                    to_send.append(row.id)
    if to_release:
        await queues.fanout.send_many([FanoutTask(event_id).encode() for event_id in to_release])
        report.events_released += len(to_release)
    if to_send:
        await queues.fanout.send_many([FanoutTask(event_id).encode() for event_id in to_send])
        async with pool.acquire() as conn:
            for event_id in to_send:
                await mark_event_enqueued(
                    conn, event_id=event_id, overdue_after=settings.reconcile_after_seconds
                )
        report.events_resent += len(to_send)


async def _shards(
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    due: _Due,
    report: ReconcileReport,
) -> None:
    async with pool.acquire() as conn:
        rows = await shards.claim_due_shards(conn, **due.claim())
        to_send = []
        for row in rows:
            event_id, shard = row.event_id, row.shard_no
            if row.resends > settings.reconcile_max_resends:
                reason = f"given up after {row.resends - 1} resends: {row.last_error}"
                await shards.give_up_shard(conn, event_id=event_id, shard=shard, reason=reason)
                await _maybe_end(conn, event_id, settings, report)
                report.given_up.append(f"shard {shard} of event {event_id}")
            else:
                to_send.append(FanoutTask(event_id, shard).encode())
    if to_send:
        await queues.fanout.send_many(to_send)
        report.shards_resent += len(to_send)


async def _batches(
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    due: _Due,
    report: ReconcileReport,
) -> None:
    async with pool.acquire() as conn:
        rows = await batches.claim_due_batches(conn, **due.claim())
        events: dict[int, Any] = {}
        to_send = []
        for row in rows:
            event_id, key = row.event_id, row.batch_key
            users = (
                (row.first_user_id, row.last_user_id)
                if row.first_user_id is not None and row.last_user_id is not None
                else users_of_key(key)  # claimed before the fan-out recorded it
            )
            rereadable = users is not None or row.device_ids is not None
            if row.resends > settings.reconcile_max_resends or not rereadable:
                # Not re-readable: a retry batch sent before this bookkeeping existed.
                reason = f"given up after {row.resends - 1} resends"
                if row.last_error:
                    reason += f": {row.last_error}"
                await batches.give_up_batch(
                    conn, event_id=event_id, batch_key=key, reason=reason[:200]
                )
                if ended := await finish_event(conn, event_id=event_id):
                    EVENTS_FINISHED.labels(ended).inc()
                report.given_up.append(f"batch {key} of event {event_id}")
                continue
            if event_id not in events:
                events[event_id] = await load_event(conn, event_id=event_id)
            event = events[event_id]
            assert event is not None  # the batch's row refers to it
            batch = DeliveryBatch(event_id, key, row.attempt, event.notification)
            batch.published_at = event.created_at.timestamp()
            if row.device_ids is not None:
                batch.device_ids = list(row.device_ids)
            else:
                batch.users = users
            to_send.append(batch.encode())
    if to_send:
        await queues.delivery.send_many(to_send)
        report.batches_resent += len(to_send)


async def _maybe_end(
    conn: asyncpg.Connection, event_id: int, settings: Settings, report: ReconcileReport
) -> None:
    """After a shard is given up: the event may now be fanned out, and may have ended."""
    await mark_event_fanned_out(
        conn, event_id=event_id, overdue_after=settings.reconcile_after_seconds
    )
    if ended := await finish_event(conn, event_id=event_id):
        EVENTS_FINISHED.labels(ended).inc()
        report.events_finished += 1


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
