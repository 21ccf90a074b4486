"""Coalescing 1:1 sends (FANOUT_COALESCE_DIRECT): a group's events share SQS requests.

A 1:1 event on its own costs a fan-out message and a one-device delivery batch, each sent,
received and deleted: ~5 SQS requests a push (issue #26). With coalescing, the group
commit's ``Enqueuer`` sends one fan-out message per group (``FanoutTask.group``), and the
fan-out stage fans the group's 1:1 events out together here, their delivery batches packed
into bundles: one SQS message holds many events' batches (``DeliveryBundle``).

The smallest shape that keeps every per-event guarantee: only the SQS messages and the
round trips are shared, nothing an event owns. Each plain 1:1 event is fanned out by
``fan_out_directs`` with the statements ``plan_event`` and ``run_shard`` would run for it
alone, each run for the whole group at once (its shard, audience rules, quiet hours, caps);
any other, or one re-planned, by ``plan_event`` as if it had come alone; and each of its
batches is its own event's ``DeliveryBatch`` (its key, its notification, its devices), so
no device can be sent another event's content, and each batch and event is claimed,
recorded, counted and finished as its own row (a cancel or expiry holds exactly that
event's batches; each event ends on its own), a bundle's rows in one statement each
(``stages.bundle_delivery``). A bundle received twice delivers nothing twice (each
batch is recognised by its key); a bundle lost, or never sent because the fan-out died
after recording its batches, is re-sent batch by batch by the reconciler (every batch is
recorded with a deadline).

A bundle's batches are claimed, recorded and their events ended in one statement each for
the whole bundle (``stages.bundle_delivery``), each row still its own batch's. The one
ordering that differs: a bundle is sent when
full or when the group is fanned out, so a batch may be recorded before it is on the queue
(a fan-out dying in between leaves it to the reconciler, late but not lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import asyncpg

from fanout.config import Settings
from fanout.providers import Provider
from fanout.queue.messages import DeliveryBundle, FanoutTask, bundle_bytes, encode_bundle
from fanout.queue.sqs import Queue, Queues
from fanout.stages.batching import batch_max_bytes
from fanout.stages.bundle_delivery import deliver_together
from fanout.stages.delivery import BatchReport, deliver_batch, is_live_activity
from fanout.stages.fanout import ShardReport, fan_out_directs, plain_direct, plan_event
from fanout.store import acquire, events, live_activities

log = logging.getLogger(__name__)

# Batches in one bundle at most: a bundle is delivered batch by batch (WORK_AT_ONCE at a
# time), and its message is deleted once all are done; 1,000 one-device batches (~0.5 MB)
# make the SQS requests per push ~0.003 while a redelivered bundle re-checks at most this many.
MAX_BUNDLE_BATCHES = 1_000
# Events of a group planned, or batches of a bundle delivered, at once: each holds one
# pooled connection while it runs (FANOUT_DATABASE_POOL_SIZE, 10 by default).
WORK_AT_ONCE = 8

T = TypeVar("T")


class BundlingQueue(Queue):
    """The delivery queue as a group's fan-out sees it: what is sent is gathered and goes
    out in bundles, each as soon as it is full; ``flush`` sends the rest."""

    def __init__(self, queue: Queue, max_bytes: int) -> None:
        super().__init__(
            queue.client,
            queue.url,
            max_message_bytes=queue.max_message_bytes,
            dead_letter_url=queue.dead_letter_url,
            max_receive_count=queue.max_receive_count,
        )
        self._queue = queue
        self._max_bytes = max_bytes
        self._bodies: list[str] = []
        self._bytes = 0
        self.bundles = 0  # messages sent (for the tests and the benchmark)

    async def wait_for_room(
        self, limit: int, *, keep_alive: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        # The process's queue asks the depth, at most every half second for all its users.
        await self._queue.wait_for_room(limit, keep_alive=keep_alive)

    async def send_many(self, bodies: Sequence[str], *, delay_seconds: int = 0) -> int:
        if delay_seconds:  # never asked by the fan-out; kept exact all the same
            return await super().send_many(bodies, delay_seconds=delay_seconds)
        full: list[str] = []
        for body in bodies:
            size = len(body.encode())
            if self._bodies and (
                bundle_bytes(self._bytes + size, len(self._bodies) + 1) > self._max_bytes
                or len(self._bodies) >= MAX_BUNDLE_BATCHES
            ):
                full.append(self._take())
            self._bodies.append(body)
            self._bytes += size
        return await self._send(full)

    async def flush(self) -> int:
        """Send what is gathered."""
        return await self._send([self._take()] if self._bodies else [])

    def _take(self) -> str:
        bodies, self._bodies, self._bytes = self._bodies, [], 0
        return bodies[0] if len(bodies) == 1 else encode_bundle(bodies)

    async def _send(self, messages: list[str]) -> int:
        if not messages:
            return 0
        self.bundles += len(messages)
        return await super().send_many(messages)


async def run_fanout_group(
    task: FanoutTask,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
    *,
    time_left: Callable[[], float] | None = None,
    reader: asyncpg.Pool | None = None,
) -> list[ShardReport]:
    """Plan a group's events, their delivery batches bundled. An event that is not a 1:1
    send (a topic's, a Live Activity's) is handed its own fan-out message instead: its
    shards are long streams, not for a group to wait on."""
    bundling = BundlingQueue(
        queues.delivery,
        batch_max_bytes(settings.batch_max_bytes, queues.delivery.max_message_bytes),
    )
    coalesced = replace(queues, delivery=bundling)
    alone: list[int] = []

    async def plan(event_id: int) -> list[ShardReport]:
        async with acquire(pool) as conn:
            event = await events.load_event(conn, event_id=event_id)
        if event is None:  # deleted since (its user or app was): nothing to send
            log.info("event %d of a group is gone", event_id)
            return []
        if event.user_id is None or live_activities.audience_of(event) is not None:
            alone.append(event_id)
            return []
        return await plan_event(
            event_id, pool, coalesced, settings, time_left=time_left, reader=reader
        )

    try:
        async with acquire(pool) as conn:
            loaded = await events.load_events(conn, event_ids=task.events)
        together, left = await fan_out_directs(
            [e for e in loaded if plain_direct(e)], pool, coalesced, settings, reader=reader
        )
        # The others (a topic's, one planned before, one gone), each as if it had come alone.
        rest = sorted(set(task.events) - {e.id for e in loaded if plain_direct(e)} | set(left))
        planned = [together, *await _all(rest, plan)]
    finally:
        # What was planned is sent even if an event failed (the message is then retried:
        # the events planned are re-planned as no-ops).
        await bundling.flush()
        if alone:
            await queues.fanout.send_many([FanoutTask(event_id).encode() for event_id in alone])
    return [report for reports in planned for report in reports]


async def deliver_bundle(
    bundle: DeliveryBundle,
    pool: asyncpg.Pool,
    queues: Queues,
    providers: Mapping[str, Provider],
    settings: Settings,
) -> list[BatchReport]:
    """Deliver the bundle's batches: those that carry their devices together, in a few
    statements for them all (``deliver_together``), any other (re-read from PostgreSQL, a
    Live Activity's) as if it had come alone. Raises (after every batch has been tried)
    the first failure, so the bundle comes back: the batches done are recognised by their
    keys and skipped, the others are delivered."""
    together = [b for b in bundle.batches if not b.rereads and not is_live_activity(b)]
    alone = [b for b in bundle.batches if b.rereads or is_live_activity(b)]

    async def deliver(index: int) -> list[BatchReport]:
        if index < 0:
            return await deliver_together(together, pool, queues, providers, settings)
        return [await deliver_batch(alone[index], pool, queues, providers, settings)]

    done = await _all([-1, *range(len(alone))], deliver)
    return [report for reports in done for report in reports]


async def _all(items: Sequence[int], work: Callable[[int], Awaitable[T]]) -> list[T]:
    """``work`` on every item, WORK_AT_ONCE at a time; every item is tried, then the first
    failure is raised."""
    room = asyncio.Semaphore(WORK_AT_ONCE)

    async def one(item: int) -> T:
        async with room:
            return await work(item)

    outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
