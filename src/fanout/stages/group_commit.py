"""Group commit: concurrent publishes share one transaction and one SQS request.

Publishing one event costs a round trip to PostgreSQL (its commit) and one to SQS (its
fan-out message); one at a time, an API process published ~175 events/s however idle
PostgreSQL was (issue #26). Here the requests that arrive while a commit is under way wait
for the next one, and a single committer task writes them all in one statement
(``lifecycle.create_many``: their users and topics found or created, the events inserted,
one round trip), then hands the events to an ``Enqueuer`` that sends their fan-out
messages ten to a SendMessageBatch and marks them enqueued in one statement. With
FANOUT_COALESCE_DIRECT on, a group's events share one fan-out message instead
(stages/coalescing.py). The events of one ``publish_many`` (a batch request's items) share
fan-out messages whatever that setting: they arrive together anyway, and a message each
made a request of 1,000 items cost 100 SendMessageBatch calls, which took longer than the
enqueue's two seconds on a loaded 2-core machine (every batch request's events were left to
the reconciler; 2,000-2,800 notifications/s accepted, issue #26).

The promises are publishing's own (stages/publish.py):
- committed before acknowledged: a request is answered once the transaction holding its
  event has committed, and only then;
- the enqueue is the outbox's: an event committed and not enqueued (SQS down, the process
  killed between commit and send) is due, and the reconciler sends it;
- idempotency keys as before, within a group too: a key used before (in an earlier group,
  or by an earlier request of this group) answers the first event, or a conflict for a
  different request; one request's conflict is its own, the group's others are committed;
- a statement that fails for one request's data (PostgreSQL refuses a value) does not fail
  the others: the group is committed again one event at a time.

Only events that need nothing but a row go this way (``groupable``): a held event (a
``send_at``, local-time waves) plans its waves in its own transaction (stages/publish.py).
The per-key rate limit is the API's, before any of this. ``close`` drains: the requests
queued are committed and answered, and the enqueues under way finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from fanout.errors import FanoutError
from fanout.queue.messages import FanoutTask
from fanout.queue.sqs import MAX_BATCH_ENTRIES, Queues
from fanout.stages.publish import (
    DEFAULT_OVERDUE_AFTER,
    IdempotencyConflict,
    Published,
    PublishOptions,
)
from fanout.store import events, lifecycle
from fanout.store.events import IdempotencyScope
from fanout.store.lifecycle import NewEvent

log = logging.getLogger(__name__)

# A group's statement carries every event as array elements; 500 keeps it well under a
# megabyte of notifications and its answer quick, while a group that large already means
# the process is bounded by PostgreSQL, not by round trips.
DEFAULT_MAX_GROUP = 500
# Committed events wait for their fan-out messages in one list, which a single sender
# empties up to this many at a time: while one enqueue is under way the next groups' events
# gather, so the SQS requests per event stay at a tenth whatever the rate (eight groups'
# enqueues at once made moto, in-process, answer in 3-4 s instead of 0.3).
MAX_ENQUEUE = 1_000
# Coalescing: the events one fan-out message plans together. A group costs ~6 SQS requests
# (its fan-out message and its delivery bundle, each sent, received, deleted), so this bounds
# the requests per push from below: 500 made it 0.012, above issue #26's 0.01 whatever the
# window; 1,000 (one enqueue's worth, one bundle's: MAX_BUNDLE_BATCHES) makes it 0.006. A
# group's plain 1:1 events are fanned out together in a few statements
# (fanout.fan_out_directs), so a longer list no longer holds one fan-out invocation long.
COALESCED_GROUP = 1_000
# Coalescing: how long committed events wait for others to share their fan-out message
# (FANOUT_COALESCE_WINDOW_SECONDS). A group costs ~4.5 SQS requests (its fan-out message and
# its bundle, each sent and received; the deletes ten to a call), so requests per push
# ~ 4.5 / (rate x window), and a send waits about half the window. Measured (bench/direct.py,
# 30,000 sends asked at 1,000/s, the API keeping ~800/s on the loaded 2-core machine, the
# bundle delivered in three statements): 0.25 s, 0.019 requests a push, publish -> push p50
# 0.57 s; 0.5 s, 0.011 and 0.80 s; 0.6 s, 0.0097 and 1.06 s. 0.5 s is the window at which
# 1,000 sends/s make groups of ~500 (~0.009 a push) within issue #26's p50 of 1 s. A slow
# stream pays it for nothing to share (at 10 sends/s each send waits ~0.5 s); a group of
# COALESCED_GROUP ends the wait.
COALESCE_WINDOW_SECONDS = 0.5
# Past this many events waiting to be enqueued, a commit waits for room (backpressure on
# commits rather than an unbounded list while SQS is slow).
MAX_UNSENT = 10_000
# SendMessageBatch calls of one enqueue under way at once.
SENDS_AT_ONCE = 4
# A topic or user created by a concurrent transaction after a group's snapshot leaves its
# event without an id: the statement is run again for those (the next one sees it).
RESOLVE_TRIES = 3

# Errors about a value of one event (class 22 data exceptions, 23 integrity, 54 limits,
# e.g. an index row too large): committing the events one at a time isolates it. Any
# other error (the connection, the server) would meet every event again and is raised.
_ABOUT_THE_DATA = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
)

Outcome = Published | FanoutError


def groupable(options: PublishOptions) -> bool:
    """Whether an event with these options can be committed in a group: one that is not
    held (no ``send_at``, no local-time waves: those plan in their own transaction) and
    has no tag filter or rate of its own (the group's INSERT has no column for them: such an
    event is committed on its own rather than grouped without them; an app's default rate
    the INSERT applies)."""
    return (
        options.send_at is None
        and options.deliver_at_local is None
        and options.tag_filter is None
        and options.throttle_per_minute is None
    )


class RefusedByDatabase(FanoutError, RuntimeError):
    """PostgreSQL refused this event (and only it) of a group."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the event could not be committed: {cause}")


class GroupCommitClosed(FanoutError, RuntimeError):
    """The process is stopping: no new publish is taken."""


class Enqueuer:
    """Sends a group's fan-out messages (ten per SendMessageBatch, the calls concurrently)
    and marks the events enqueued in one statement. A failure, or a wait past
    ``timeout``, leaves them to the reconciler (they are committed and due)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queues: Callable[[], Awaitable[Queues]],
        *,
        overdue_after: float = DEFAULT_OVERDUE_AFTER,
        timeout: float | None = None,
        on_failure: Callable[[int], None] | None = None,
        coalesce: bool = False,
        coalesce_window: float = COALESCE_WINDOW_SECONDS,
    ) -> None:
        self._pool = pool
        self._queues = queues
        self._coalesce = coalesce
        self.coalesce_window = coalesce_window
        self._overdue_after = overdue_after
        self._timeout = timeout
        self._on_failure = on_failure

    @property
    def coalesces(self) -> bool:
        """Whether a group's events share one fan-out message (FANOUT_COALESCE_DIRECT)."""
        return self._coalesce

    async def enqueue(self, event_ids: Sequence[int], *, shared: Sequence[int] = ()) -> bool:
        """Send the events' fan-out messages and mark them enqueued; False (logged, and
        ``on_failure`` told how many) if that did not happen. The ``shared`` events (a
        batch request's) share fan-out messages, ``COALESCED_GROUP`` to one, whether or
        not ``event_ids`` do (FANOUT_COALESCE_DIRECT)."""
        if not event_ids and not shared:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                queues = await self._queues()
                bodies = self._messages(event_ids, shared)
                sends = asyncio.Semaphore(SENDS_AT_ONCE)

                async def send(chunk: list[str]) -> None:
                    async with sends:
                        await queues.fanout.send_many(chunk)

                await asyncio.gather(
                    *(
                        send(bodies[i : i + MAX_BATCH_ENTRIES])
                        for i in range(0, len(bodies), MAX_BATCH_ENTRIES)
                    )
                )
                async with self._pool.acquire() as conn:
                    await lifecycle.mark_enqueued_many(
                        conn, event_ids=[*event_ids, *shared], overdue_after=self._overdue_after
                    )
        except Exception as exc:
            count = len(event_ids) + len(shared)
            log.warning("%d events committed, enqueue deferred to the reconciler: %r", count, exc)
            if self._on_failure is not None:
                self._on_failure(count)
            return False
        return True

    def _messages(self, event_ids: Sequence[int], shared: Sequence[int]) -> list[str]:
        """A fan-out message per event of ``event_ids``, one per ``COALESCED_GROUP`` of
        ``shared``; coalescing (FANOUT_COALESCE_DIRECT), one per ``COALESCED_GROUP`` of
        them all (stages/coalescing.py plans a group's events together)."""
        if self._coalesce:
            return _groups([*event_ids, *shared])
        return [FanoutTask(event_id).encode() for event_id in event_ids] + _groups(shared)


def _groups(event_ids: Sequence[int]) -> list[str]:
    return [
        FanoutTask.group(event_ids[i : i + COALESCED_GROUP]).encode()
        for i in range(0, len(event_ids), COALESCED_GROUP)
    ]


@dataclass(slots=True)
class _Waiting:
    event: NewEvent
    answer: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """The API process's publishing: ``publish`` joins the next group, ``publish_many``
    commits its events as a group of their own; ``start`` and ``close`` run the committer."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        enqueuer: Enqueuer,
        *,
        overdue_after: float = DEFAULT_OVERDUE_AFTER,
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._pool = pool
        self._enqueuer = enqueuer
        self._overdue_after = overdue_after
        self._max_group = max_group
        self._waiting: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._closing = False
        self._committer: asyncio.Task[None] | None = None
        self._unsent: list[int] = []  # committed, their fan-out messages not yet sent
        self._unsent_shared: list[int] = []  # likewise, of publish_many: messages shared
        self._unsent_since = 0.0  # when the first of them was (loop time)
        self._unsent_arrived = asyncio.Event()
        self._room = asyncio.Event()  # set while fewer than MAX_UNSENT wait
        self._room.set()
        self._sender: asyncio.Task[None] | None = None
        self.groups = 0  # groups committed (for tests and the benchmarks)

    def start(self) -> None:
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups(), name="group-commit")
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_unsent(), name="group-enqueue")

    async def publish(self, event: NewEvent) -> Published:
        """Commit the event with whatever else is waiting; answered once committed.
        Raises what its own commit raised (``IdempotencyConflict``, a database error)."""
        if self._closing:
            raise GroupCommitClosed("the API is stopping; publish again")
        self.start()
        waiting = _Waiting(event)
        self._waiting.append(waiting)
        self._arrived.set()
        outcome = await asyncio.shield(waiting.answer)  # a client gone does not undo it
        if isinstance(outcome, FanoutError):
            raise outcome
        return outcome

    async def publish_many(self, new_events: Sequence[NewEvent]) -> list[Outcome]:
        """Commit the events in one transaction (or one at a time if PostgreSQL refuses
        one's data), then enqueue them; an outcome per event, in order: ``Published`` or
        the ``FanoutError`` that refused it (``IdempotencyConflict``)."""
        if self._closing:
            raise GroupCommitClosed("the API is stopping; publish again")
        return await self._commit_and_enqueue(new_events, shared=True)

    def _unsent_count(self) -> int:
        return len(self._unsent) + len(self._unsent_shared)

    async def _commit_and_enqueue(
        self, new_events: Sequence[NewEvent], *, shared: bool = False
    ) -> list[Outcome]:
        self.start()
        await self._room.wait()
        outcomes = await self._commit(new_events)
        self.groups += 1
        if not self._unsent_count():  # the first of a group to come: its window starts now
            self._unsent_since = asyncio.get_running_loop().time()
        (self._unsent_shared if shared else self._unsent).extend(
            o.event_id for o in outcomes if isinstance(o, Published) and o.created
        )
        self._unsent_arrived.set()
        if self._unsent_count() >= MAX_UNSENT:
            self._room.clear()
        return outcomes

    async def close(self, *, grace: float | None = None) -> None:
        """Take no new publish; commit and answer those waiting; send the fan-out messages
        still unsent, for at most ``grace`` seconds (what is left then is the reconciler's:
        committed and due)."""
        self._closing = True
        self._arrived.set()
        if self._committer is not None:
            await self._committer
        self._unsent_arrived.set()
        if self._sender is None:
            return
        try:
            async with asyncio.timeout(grace):
                await self._sender
        except TimeoutError:
            log.warning(
                "stopping with %d events not enqueued: the reconciler sends them",
                self._unsent_count(),
            )

    async def _commit_groups(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                await self._commit_group(group)
            if self._closing:
                return

    async def _commit_group(self, group: list[_Waiting]) -> None:
        try:
            outcomes = await self._commit_and_enqueue([w.event for w in group])
        except Exception as exc:  # the transaction failed: nothing of the group committed
            for waiting in group:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            return
        for waiting, outcome in zip(group, outcomes, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(outcome)

    async def _commit(self, new_events: Sequence[NewEvent]) -> list[Outcome]:
        try:
            return await self._commit_together(new_events)
        except _ABOUT_THE_DATA as exc:
            if len(new_events) == 1:
                return [RefusedByDatabase(exc)]
            # One event's value refused (the error names no row): each on its own.
            log.warning(
                "a group of %d was refused (%r); committing one by one", len(new_events), exc
            )
        outcomes: list[Outcome] = []
        for event in new_events:
            outcomes.extend(await self._commit([event]))
        return outcomes

    async def _commit_together(self, new_events: Sequence[NewEvent]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(new_events)
        left = list(range(len(new_events)))
        async with self._pool.acquire() as conn, conn.transaction():
            for _ in range(RESOLVE_TRIES):
                created = await lifecycle.create_many(
                    conn,
                    new_events=[new_events[i] for i in left],
                    overdue_after=self._overdue_after,
                )
                unresolved, reused = [], []
                for i, row in zip(left, created, strict=True):
                    if row.id is None:
                        unresolved.append(i)
                    elif row.created:
                        outcomes[i] = Published(row.id, created=True)
                    else:
                        reused.append(i)
                if reused:
                    await self._answer_reused(conn, new_events, reused, outcomes)
                left = unresolved
                if not left:
                    break
        return [
            outcome
            if outcome is not None
            else RefusedByDatabase(RuntimeError("its topic or user kept changing"))
            for outcome in outcomes
        ]

    @staticmethod
    async def _answer_reused(
        conn: asyncpg.Connection,
        new_events: Sequence[NewEvent],
        reused: list[int],
        outcomes: list[Outcome | None],
    ) -> None:
        """The events whose idempotency key named one before: that one, or a conflict."""
        scopes = []
        for i in reused:
            event = new_events[i]
            assert event.idempotency_key is not None  # only a reused key inserts nothing
            scopes.append(IdempotencyScope(event.app_id, event.api_key_id, event.idempotency_key))
        firsts = await events.events_by_idempotency_keys(conn, scopes=scopes)
        for i, first in zip(reused, firsts, strict=True):
            if first is None:  # deleted since (its topic or user was)
                outcomes[i] = RefusedByDatabase(
                    RuntimeError("the event of this idempotency key was deleted meanwhile")
                )
            elif first.request_fingerprint not in (None, new_events[i].request_fingerprint):
                outcomes[i] = IdempotencyConflict()
            else:
                outcomes[i] = Published(first.id, created=False)

    async def _gather_a_group(self) -> None:
        """Coalescing: let the events committed within the window
        (FANOUT_COALESCE_WINDOW_SECONDS), or ``COALESCED_GROUP`` of them, share one fan-out
        message. They are committed and answered already; a crash meanwhile leaves them
        due, for the reconciler."""
        deadline = self._unsent_since + self._enqueuer.coalesce_window
        while not self._closing and self._unsent_count() < COALESCED_GROUP:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unsent_arrived.wait(), left)
            self._unsent_arrived.clear()

    async def _send_unsent(self) -> None:
        """The one sender: whatever has been committed since its last enqueue, at once."""
        while True:
            await self._unsent_arrived.wait()
            self._unsent_arrived.clear()
            while self._unsent_count():
                if self._enqueuer.coalesces:
                    await self._gather_a_group()
                event_ids = self._unsent[:MAX_ENQUEUE]
                del self._unsent[:MAX_ENQUEUE]
                shared = self._unsent_shared[:MAX_ENQUEUE]
                del self._unsent_shared[:MAX_ENQUEUE]
                # Those left came while this group gathered: their window starts now.
                self._unsent_since = asyncio.get_running_loop().time()
                # Never raises: failures are logged.
                await self._enqueuer.enqueue(event_ids, shared=shared)
                if self._unsent_count() < MAX_UNSENT:
                    self._room.set()
            if self._closing and (self._committer is None or self._committer.done()):
                return
