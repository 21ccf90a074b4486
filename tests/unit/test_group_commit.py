"""Group commit: concurrent publishes share a transaction, each answered with its own event."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time

import asyncpg
import orjson
import pytest

from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.stages.group_commit import (
    COALESCED_GROUP,
    Enqueuer,
    GroupCommit,
    GroupCommitClosed,
    RefusedByDatabase,
    groupable,
)
from fanout.stages.publish import IdempotencyConflict, Published, PublishOptions, prepare_event
from fanout.store.lifecycle import NewEvent

APP = 1  # the default app


def event(
    user: str, *, title: str = "hi", key: str | None = None, api_key: int | None = None
) -> NewEvent:
    return prepare_event(
        Notification(title=title), app_id=APP, user=user, idempotency_key=key, api_key_id=api_key
    )


@pytest.fixture
async def group(pool: asyncpg.Pool, queues: Queues) -> AsyncIterator[GroupCommit]:
    async def opened() -> Queues:
        return queues

    committer = GroupCommit(pool, Enqueuer(pool, opened, overdue_after=60), overdue_after=60)
    yield committer
    await committer.close()


async def statuses(pool: asyncpg.Pool, ids: list[int]) -> dict[int, str]:
    rows = await pool.fetch("SELECT id, status FROM events WHERE id = ANY($1::bigint[])", ids)
    return {row["id"]: row["status"] for row in rows}


def test_only_events_not_held_are_grouped() -> None:
    assert groupable(PublishOptions())
    assert groupable(
        PublishOptions(quiet_hours="drop", expires_at=datetime(2099, 1, 1, tzinfo=UTC))
    )
    assert not groupable(PublishOptions(send_at=datetime(2099, 1, 1, tzinfo=UTC)))
    assert not groupable(PublishOptions(deliver_at_local=time(9)))
    # A tag filter is committed with its event, one at a time.
    assert not groupable(PublishOptions(tag_filter={"eq": {"plan": "premium"}, "conds": []}))
    # A rate of its own likewise (the group's INSERT applies only the app's default rate).
    assert not groupable(PublishOptions(throttle_per_minute=600))


async def test_concurrent_publishes_each_get_their_own_event(
    group: GroupCommit, pool: asyncpg.Pool
) -> None:
    run = secrets.token_hex(4)
    users = [f"{run}-{i}" for i in range(200)]
    answers = await asyncio.gather(*(group.publish(event(user)) for user in users))
    ids = [answer.event_id for answer in answers]
    assert len(set(ids)) == len(users) and all(a.created for a in answers)
    rows = await pool.fetch(
        """SELECT e.id, u.external_id FROM events e JOIN users u ON u.id = e.user_id
           WHERE e.id = ANY($1::bigint[])""",
        ids,
    )
    assert {row["id"]: row["external_id"] for row in rows} == dict(zip(ids, users, strict=True))
    assert group.groups < len(users)  # they shared transactions


async def test_idempotency_keys_within_one_group_and_across_groups(
    group: GroupCommit, pool: asyncpg.Pool
) -> None:
    run = secrets.token_hex(4)
    first, again, other, conflict = await asyncio.gather(
        group.publish(event(f"{run}-a", key=f"{run}-k")),
        group.publish(event(f"{run}-a", key=f"{run}-k")),
        group.publish(event(f"{run}-b", key=f"{run}-k2")),
        group.publish(event(f"{run}-a", title="other", key=f"{run}-k")),
        return_exceptions=True,
    )
    assert isinstance(first, Published) and isinstance(again, Published)
    assert isinstance(other, Published) and other.created
    assert first.created and not again.created and again.event_id == first.event_id
    assert isinstance(conflict, IdempotencyConflict)  # it alone: the others stand
    later = await group.publish(event(f"{run}-a", key=f"{run}-k"))
    assert later == Published(first.event_id, created=False)
    with pytest.raises(IdempotencyConflict):
        await group.publish(event(f"{run}-b", key=f"{run}-k"))
    # Another API key's scope: the same key is another event.
    scoped = await group.publish(event(f"{run}-a", key=f"{run}-k", api_key=None))
    assert scoped.event_id == first.event_id
    count = await pool.fetchval(
        "SELECT count(*) FROM events WHERE idempotency_key LIKE $1", f"{run}%"
    )
    assert count == 2


async def test_a_value_the_database_refuses_fails_only_its_own_event(
    group: GroupCommit, pool: asyncpg.Pool
) -> None:
    run = secrets.token_hex(4)
    bad = NewEvent(app_id=APP, notification={"title": "nul \u0000 here"}, user=f"{run}-bad")
    outcomes = await group.publish_many([event(f"{run}-1"), bad, event(f"{run}-2")])
    assert isinstance(outcomes[0], Published) and isinstance(outcomes[2], Published)
    assert isinstance(outcomes[1], RefusedByDatabase)
    assert "nul" not in str(outcomes[1])  # never the value
    found = await statuses(pool, [outcomes[0].event_id, outcomes[2].event_id])
    assert len(found) == 2


async def test_a_grouped_event_is_stored_with_every_field_it_was_given(
    group: GroupCommit, pool: asyncpg.Pool
) -> None:
    # The group's rows travel as one JSON document (issue #26): the fingerprint as hex, the
    # expiry as text, the notification as an object; each must arrive as given.
    run = secrets.token_hex(4)
    expires = datetime(2999, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    notification = Notification(title='caf\u00e9 \U0001f600 "q" \\', data={"k": "v\nw"})
    given = [
        prepare_event(
            notification,
            app_id=APP,
            user=f"{run}-a",
            idempotency_key=f"{run}-k",
            api_key_id=None,
            options=PublishOptions(quiet_hours="drop", expires_at=expires),
        ),
        prepare_event(Notification(title="plain"), app_id=APP, topic=f"{run}-t"),
    ]
    outcomes = await group.publish_many(given)
    assert all(isinstance(o, Published) and o.created for o in outcomes)
    ids = [o.event_id for o in outcomes if isinstance(o, Published)]
    rows = await pool.fetch(
        """SELECT e.id, e.notification::text AS notification, e.idempotency_key, e.request_fingerprint, e.quiet_hours,
                  e.expires_at, e.api_key_id, u.external_id AS user_key, t.key AS topic,
                  e.throttle_per_minute IS NOT DISTINCT FROM a.default_throttle_per_minute
                      AS apps_rate
           FROM events e JOIN apps a ON a.id = e.app_id LEFT JOIN users u ON u.id = e.user_id
           LEFT JOIN topics t ON t.id = e.topic_id WHERE e.id = ANY($1::bigint[])""",
        ids,
    )
    stored = {row["id"]: row for row in rows}
    for event_id, new_event in zip(ids, given, strict=True):
        row = stored[event_id]
        assert orjson.loads(row["notification"]) == new_event.notification
        assert row["idempotency_key"] == new_event.idempotency_key
        assert row["request_fingerprint"] == new_event.request_fingerprint
        assert row["quiet_hours"] == new_event.quiet_hours
        assert row["expires_at"] == new_event.expires_at
        assert row["api_key_id"] is None
        assert (row["user_key"], row["topic"]) == (new_event.user, new_event.topic)
        assert row["apps_rate"]
    assert given[0].request_fingerprint is not None  # the hex path was taken


async def fanout_tasks(queues: Queues, expected: int) -> list[FanoutTask]:
    """The fan-out messages on the queue, until they name ``expected`` events."""
    tasks: list[FanoutTask] = []
    while sum(len(task.events) or 1 for task in tasks) < expected:
        messages = await queues.fanout.receive(10, wait_seconds=1)
        assert messages, "fan-out messages missing"
        for message in messages:
            task = decode(message.body)
            assert isinstance(task, FanoutTask)
            tasks.append(task)
    return tasks


async def test_concurrent_publishes_are_enqueued_a_message_each(
    group: GroupCommit, pool: asyncpg.Pool, queues: Queues
) -> None:
    run = secrets.token_hex(4)
    answers = await asyncio.gather(*(group.publish(event(f"{run}-{i}")) for i in range(25)))
    ids = {a.event_id for a in answers}
    await group.close()  # drains the enqueue
    assert set((await statuses(pool, list(ids))).values()) == {"enqueued"}
    tasks = await fanout_tasks(queues, len(ids))
    assert all(not task.events for task in tasks)  # coalescing is off
    assert {task.event_id for task in tasks} == ids


async def test_a_batch_of_events_shares_fanout_messages_without_coalescing(
    group: GroupCommit, pool: asyncpg.Pool, queues: Queues
) -> None:
    # A batch request's items arrive together: a message each made 1,000 items cost 100
    # SendMessageBatch calls. They share messages of COALESCED_GROUP events, each planned
    # on its own by the group's fan-out (stages/coalescing.py).
    run = secrets.token_hex(4)
    count = COALESCED_GROUP + 25
    outcomes = await group.publish_many([event(f"{run}-{i}") for i in range(count)])
    ids = [o.event_id for o in outcomes if isinstance(o, Published)]
    await group.close()
    assert set((await statuses(pool, ids)).values()) == {"enqueued"}
    tasks = await fanout_tasks(queues, count)
    assert sorted(tasks, key=len_of_events, reverse=True) == [
        FanoutTask.group(ids[:COALESCED_GROUP]),
        FanoutTask.group(ids[COALESCED_GROUP:]),
    ]


def len_of_events(task: FanoutTask) -> int:
    return len(task.events)


async def test_coalescing_enqueues_a_group_as_one_fanout_message(
    pool: asyncpg.Pool, queues: Queues
) -> None:
    async def opened() -> Queues:
        return queues

    group = GroupCommit(pool, Enqueuer(pool, opened, overdue_after=60, coalesce=True))
    run = secrets.token_hex(4)
    outcomes = await group.publish_many([event(f"{run}-{i}") for i in range(25)])
    await group.close()
    ids = [o.event_id for o in outcomes if isinstance(o, Published)]
    assert set((await statuses(pool, ids)).values()) == {"enqueued"}
    messages = await queues.fanout.receive(10, wait_seconds=1)
    assert [decode(m.body) for m in messages] == [FanoutTask.group(ids)]


async def test_a_thousand_coalesced_events_share_one_fanout_message(
    pool: asyncpg.Pool, queues: Queues
) -> None:
    # ~6 SQS requests a group (its fan-out message and its bundle, each sent, received,
    # deleted): groups of at most 500 could not go below 0.012 requests a push (issue #26
    # asks 0.01).
    async def opened() -> Queues:
        return queues

    group = GroupCommit(pool, Enqueuer(pool, opened, overdue_after=60, coalesce=True))
    run = secrets.token_hex(4)
    outcomes = await group.publish_many([event(f"{run}-{i}") for i in range(1_000)])
    await group.close()
    ids = [o.event_id for o in outcomes if isinstance(o, Published)]
    messages = await queues.fanout.receive(10, wait_seconds=1)
    assert [decode(m.body) for m in messages] == [FanoutTask.group(ids)]


async def test_an_enqueue_that_fails_leaves_the_events_due_for_the_reconciler(
    pool: asyncpg.Pool,
) -> None:
    failed: list[int] = []

    async def unreachable() -> Queues:
        raise OSError("SQS is down")

    committer = GroupCommit(
        pool, Enqueuer(pool, unreachable, on_failure=failed.append), overdue_after=5
    )
    run = secrets.token_hex(4)
    answers = await asyncio.gather(*(committer.publish(event(f"{run}-{i}")) for i in range(5)))
    await committer.close()
    ids = [a.event_id for a in answers]
    assert set((await statuses(pool, ids)).values()) == {"pending"}
    due = await pool.fetchval(
        "SELECT bool_and(due_at IS NOT NULL) FROM events WHERE id = ANY($1::bigint[])", ids
    )
    assert due and sum(failed) == 5


async def test_close_answers_every_publish_waiting_and_takes_no_new_one(
    pool: asyncpg.Pool, queues: Queues
) -> None:
    async def opened() -> Queues:
        return queues

    committer = GroupCommit(pool, Enqueuer(pool, opened), max_group=3)
    run = secrets.token_hex(4)
    waiting = [asyncio.create_task(committer.publish(event(f"{run}-{i}"))) for i in range(10)]
    await asyncio.sleep(0)  # every publish has joined the queue
    await committer.close()
    answers = [task.result() for task in waiting]
    assert len({a.event_id for a in answers}) == 10
    with pytest.raises(GroupCommitClosed):
        await committer.publish(event(f"{run}-late"))
