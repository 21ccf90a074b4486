"""PostgreSQL drives liveness: whatever the queue loses, the reconciler sends again.

Each test loses messages by draining a queue (what a queue server that dies does) and
then runs reconciler passes with ``look_ahead`` (acting as a later pass would), so
nothing here waits on the clock. Devices are counted at the sink.
"""

from __future__ import annotations

import dataclasses
import uuid
from types import SimpleNamespace

import pytest

from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.messages import DeliveryBatch, FanoutTask, decode
from fanout.queue.sqs import Queue
from fanout.runtime.pipeline import Pipeline, Result
from fanout.runtime.reconciler import reconcile_once
from fanout.stages.delivery import deliver_batch
from fanout.stages.fanout import plan_event, run_shard
from fanout.stages.publish import NotificationTooLarge, publish, record_event
from fanout.store import batches, shards
from tests.helpers import (
    add_device,
    batches_of,
    drain,
    lose_every_resend,
    make_topic,
    run_everything,
    status,
    want_devices_failed,
)

NOTE = Notification(title="New book")
LATER = 24 * 3600.0  # look-ahead: every deadline has passed


def small(pipeline: Pipeline, **changes: object) -> None:
    """Small shards and batches, so one event makes many of each."""
    pipeline.settings = pipeline.settings.model_copy(
        update={"batch_max_bytes": 4096, "shard_size": 97, "page_size": 13, **changes}
    )


def delivered_once(
    sink: EmbeddedSink, event_id: int, device_ids: list[int]
) -> tuple[int, int, int]:
    """(delivered, duplicates, lost) of one event among ``device_ids``, at the sink."""
    counts = [sink.sink.ledger.count(d, str(event_id)) for d in device_ids]
    return sum(c >= 1 for c in counts), sum(max(0, c - 1) for c in counts), counts.count(0)


async def test_delivery_batches_lost_by_the_queue_are_reread_from_their_users(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline)
    topic = await make_topic(pipeline.pool, 300, devices_per_user=(1, 0, 2))
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything_but_delivery(pipeline)
    lost = batches_of(await drain(pipeline.queues.delivery))  # the queue loses every batch
    assert len(lost) >= 3

    report = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=LATER, event_id=event.event_id
    )

    assert report.batches_resent == len(lost)
    resent = batches_of(await drain(pipeline.queues.delivery))
    assert {b.key for b in resent} == {b.key for b in lost}
    assert all(b.users is not None and not b.devices for b in resent)  # tiny: no devices
    for batch in resent:
        await deliver_batch(
            batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
        )
    assert delivered_once(sink, event.event_id, topic.device_ids) == (len(topic.device_ids), 0, 0)
    final = await status(pipeline, event.event_id)
    assert (final.status, final.sent, final.pending) == ("delivered", len(topic.device_ids), 0)


async def run_everything_but_delivery(pipeline: Pipeline) -> None:
    for body in await drain(pipeline.queues.fanout):
        await pipeline.handle(body)


async def test_a_lost_retry_batch_is_reread_from_its_recorded_devices(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 20, token_prefix="flaky")  # refused once each
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    [batch] = batches_of(await drain(pipeline.queues.delivery))
    first = await deliver_batch(
        batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
    )
    assert first.retried == 20
    assert len(await drain(pipeline.queues.delivery)) == 1  # the retry batch, lost

    await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=LATER, event_id=event.event_id
    )

    [resent] = batches_of(await drain(pipeline.queues.delivery))
    assert resent.key.endswith("/r1") and sorted(resent.device_ids or []) == topic.device_ids
    await deliver_batch(
        resent, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
    )
    assert delivered_once(sink, event.event_id, topic.device_ids) == (20, 0, 0)
    assert (await status(pipeline, event.event_id)).status == "delivered"


async def test_lost_fanout_messages_are_sent_again_and_resume_at_the_checkpoint(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline)
    topic = await make_topic(pipeline.pool, 400)
    published = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    assert len(await drain(pipeline.queues.fanout)) == 1  # the event's message, lost
    await reconcile_once(
        pipeline.pool,
        pipeline.queues,
        pipeline.settings,
        look_ahead=LATER,
        event_id=published.event_id,
    )
    [plan] = [decode(b) for b in await drain(pipeline.queues.fanout)]
    assert plan == FanoutTask(published.event_id)
    await pipeline.handle(plan.encode())  # plans 5 shards, runs the first, sends 4 messages
    assert len(await drain(pipeline.queues.fanout)) == 4  # lost too

    await reconcile_once(
        pipeline.pool,
        pipeline.queues,
        pipeline.settings,
        look_ahead=LATER,
        event_id=published.event_id,
    )
    await run_everything(pipeline)

    assert delivered_once(sink, published.event_id, topic.device_ids) == (400, 0, 0)
    final = await status(pipeline, published.event_id)
    assert (final.status, final.shards_done, final.devices) == ("delivered", 5, 400)


async def test_a_copy_of_held_work_comes_back_when_the_lease_ends_and_is_never_dead_lettered(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    [body] = await drain(pipeline.queues.delivery)
    batch = decode(body)
    assert isinstance(batch, DeliveryBatch)
    async with pipeline.pool.acquire() as conn:  # another invocation holds it, 30 s more
        await conn.execute(
            "UPDATE delivery_batches SET status = 'running', lease_until = now() + '30 s'"
            " WHERE event_id = $1",
            event.event_id,
        )
    queue = pipeline.queues.delivery
    await queue.send(body)
    [message] = await queue.receive(1, wait_seconds=1)

    queue.max_receive_count = 5
    assert await pipeline.run_message(queue, message) == (Result.DEFERRED, None)
    assert await queue.receive(1, wait_seconds=1) == []  # hidden until the lease ends
    # On its last receive it is dropped, not dead-lettered: PostgreSQL knows the batch.
    last = dataclasses.replace(message, receive_count=4)
    assert await pipeline.run_message(queue, last) == (Result.DONE, None)
    assert sink.sink.ledger.unique == 0


async def test_a_failed_shard_gives_its_lease_up_so_its_retry_goes_on_at_once(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline, shard_size=10_000)
    topic = await make_topic(pipeline.pool, 100)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    real_queue = pipeline.queues.delivery
    broken = Queue(
        real_queue.client,
        real_queue.url + "-gone",  # SQS answers: no such queue
        max_message_bytes=real_queue.max_message_bytes,
        dead_letter_url=None,
        max_receive_count=None,
    )
    object.__setattr__(pipeline.queues, "delivery", broken)
    with pytest.raises(Exception, match=r"NonExistentQueue|QueueDoesNotExist"):
        await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    object.__setattr__(pipeline.queues, "delivery", real_queue)
    async with pipeline.pool.acquire() as conn:
        shard = await conn.fetchrow(
            "SELECT status, lease_until <= now() AS free, last_error FROM fanout_shards"
            " WHERE event_id = $1",
            event.event_id,
        )
    assert shard["status"] == "running" and shard["free"]  # given up, not held
    assert shard["last_error"]

    report = await run_shard(event.event_id, 0, pipeline.pool, pipeline.queues, pipeline.settings)

    assert not report.busy and report.devices == 100


async def test_every_event_ends_in_a_terminal_state_with_counts_by_reason(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    good = await make_topic(pipeline.pool, 6)
    mixed = await make_topic(pipeline.pool, 4)
    async with pipeline.pool.acquire() as conn:
        for user in mixed.user_ids[:2]:
            await add_device(conn, user, f"reject-{user}")
            await add_device(conn, user, f"invalid-{user}")
    rejected = await make_topic(pipeline.pool, 3, token_prefix="reject")
    nobody = await make_topic(pipeline.pool, 0)
    events = {}
    for name, topic in [
        ("good", good),
        ("mixed", mixed),
        ("rejected", rejected),
        ("nobody", nobody),
    ]:
        events[name] = (await record_event(pipeline.pool, NOTE, topic=topic.key)).event_id
        await pipeline.handle(FanoutTask(events[name]).encode())
    await run_everything(pipeline)

    ended = {name: await status(pipeline, event_id) for name, event_id in events.items()}
    assert {name: s.status for name, s in ended.items()} == {
        "good": "delivered",
        "mixed": "partially_delivered",
        "rejected": "failed",
        "nobody": "no_recipients",
    }
    assert all(s.terminal and s.finished_at is not None for s in ended.values())
    mixed_status = ended["mixed"]
    assert (mixed_status.sent, mixed_status.failed, mixed_status.invalid) == (4, 2, 2)
    assert sum(mixed_status.failure_reasons.values()) == 2
    assert ended["good"].pending == 0


async def test_work_resent_too_often_is_given_up_so_the_event_still_ends(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"reconcile_max_resends": 2})
    topic = await make_topic(pipeline.pool, 5)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    await lose_every_resend(pipeline, event.event_id, look_ahead=LATER)  # resends lost too
    final = await status(pipeline, event.event_id)
    assert (final.status, final.failed) == ("failed", 5)
    assert any("given up" in reason for reason in final.failure_reasons)


async def _failed_rows(pipeline: Pipeline) -> list[dict[str, object]]:
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM webhook_deliveries WHERE kind = 'devices.failed' ORDER BY id"
        )
    return [row["payload"] for row in rows]


async def test_a_batch_given_up_writes_the_devices_failed_webhook_naming_its_devices(
    pipeline: Pipeline,
) -> None:
    """The reconciler's give-up fails the batch's devices for good: the backend hears of
    them as it does of those the delivery saw fail, one row per batch, with the fact."""
    small(pipeline, reconcile_max_resends=2)
    await want_devices_failed(pipeline.pool)
    topic = await make_topic(pipeline.pool, 300, devices_per_user=(1, 0, 2))
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything_but_delivery(pipeline)
    await lose_every_resend(pipeline, event.event_id, look_ahead=LATER)  # batches, resends

    final = await status(pipeline, event.event_id)
    assert (final.status, final.failed) == ("failed", len(topic.device_ids))
    rows = await _failed_rows(pipeline)
    async with pipeline.pool.acquire() as conn:
        batch_keys = await conn.fetch(
            "SELECT batch_key FROM delivery_batches WHERE event_id = $1", event.event_id
        )
    assert len(rows) == len(batch_keys) >= 3  # one row per batch given up
    assert {row["batch"] for row in rows} == {b["batch_key"] for b in batch_keys}
    listed = [device for row in rows for device in row["devices"]]  # type: ignore[attr-defined]
    assert sorted(device["device_id"] for device in listed) == sorted(topic.device_ids)
    assert all(row["event_id"] == event.event_id for row in rows)
    assert all(device["reason"].startswith("given up after 2 resends") for device in listed)
    assert all(device["platform"] and device["token"] for device in listed)


async def test_a_retry_batch_given_up_names_its_recorded_devices(
    pipeline: Pipeline,
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"reconcile_max_resends": 2})
    await want_devices_failed(pipeline.pool)
    topic = await make_topic(pipeline.pool, 20, token_prefix="flaky")  # refused once each
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    [batch] = batches_of(await drain(pipeline.queues.delivery))
    first = await deliver_batch(
        batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
    )
    assert first.retried == 20 and await _failed_rows(pipeline) == []
    await lose_every_resend(pipeline, event.event_id, look_ahead=LATER)  # the retry, resends

    [row] = await _failed_rows(pipeline)
    assert row["batch"].endswith("/r1")  # type: ignore[attr-defined]
    listed = row["devices"]
    assert sorted(device["device_id"] for device in listed) == topic.device_ids  # type: ignore[attr-defined]


async def test_a_notification_no_batch_can_carry_is_refused_at_publish(
    pipeline: Pipeline,
) -> None:
    # 600 locales, each well under 4 KB rendered, 1.2 MB together: more than a message.
    huge = Notification(
        title="t",
        localized={f"en-x{i:04d}": {"title": "T" * 1000, "body": "B" * 1000} for i in range(600)},
    )
    topic = await make_topic(pipeline.pool, 1)
    with pytest.raises(NotificationTooLarge, match="FANOUT_BATCH_MAX_BYTES"):
        await publish(pipeline.pool, pipeline.queues, huge, topic=topic.key)
    async with pipeline.pool.acquire() as conn:
        assert not await conn.fetchval("SELECT count(*) FROM events WHERE topic_id = $1", topic.id)


async def test_status_is_the_same_model_for_every_reader(pipeline: Pipeline) -> None:
    topic = await make_topic(pipeline.pool, 1)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    found = await status(pipeline, event.event_id)
    assert found.status == "pending" and not found.terminal
    assert set(found.model_dump()) >= {"sent", "failed", "invalid", "skipped", "failure_reasons"}


async def test_work_the_reconciler_gave_up_is_not_written_over_by_its_owner(
    pipeline: Pipeline,
) -> None:
    """A shard or batch resent too often is given up (its devices failed, so the event
    ends); an owner still alive behind it is struck off: its checkpoint and finish are
    refused, never turning it back into done work with new counts or new batches."""
    topic = await make_topic(pipeline.pool, 1)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    owner = uuid.uuid4()
    batch = SimpleNamespace(key="s0:1-1", devices=1, first_user=1, last_user=1)
    progress = {"recipients": 1, "devices": 1, "batches": 1, "held_back": {}}
    async with pipeline.pool.acquire() as conn:
        await shards.insert_shards(
            conn, event_id=event.event_id, bounds=[(0, 10)], overdue_after=60
        )
        assert await shards.claim_shard(
            conn, event_id=event.event_id, shard=0, owner=owner, lease_seconds=60,
            overdue_after=60,
        )  # fmt: skip
        await shards.give_up_shard(conn, event_id=event.event_id, shard=0, reason="given up")
        checkpoint = await shards.checkpoint_shard(
            conn, event_id=event.event_id, shard=0, cursor=5, **progress, accepted=[batch],
            category=None, counted_users=[], owner=owner, lease_seconds=60, overdue_after=60,
        )  # fmt: skip
        assert not checkpoint.held
        assert not await shards.finish_shard(
            conn, event_id=event.event_id, shard=0, **progress, owner=owner
        )
        shard = await conn.fetchrow(
            "SELECT status, due_at FROM fanout_shards WHERE event_id = $1", event.event_id
        )
        assert (shard["status"], shard["due_at"]) == ("failed", None)

        key = {"event_id": event.event_id, "batch_key": "s0:2-2"}
        assert await batches.claim_batch(
            conn, **key, attempt=0, devices=1, owner=owner, lease_seconds=60, overdue_after=60
        )
        await batches.give_up_batch(conn, **key, reason="given up")
        assert not await batches.finish_batch(
            conn, **key, sent=1, failed=0, invalid=0, skipped=0, retried=0,
            failure_reasons=None, owner=owner,
        )  # fmt: skip
        row = await conn.fetchrow(
            "SELECT sent, failed FROM delivery_batches WHERE event_id = $1 AND batch_key = $2",
            *key.values(),
        )
        assert (row["sent"], row["failed"]) == (0, 1)


async def test_a_stale_owner_is_refused_and_its_release_leaves_the_holder_alone(
    pipeline: Pipeline,
) -> None:
    """A lease that lapsed and was taken: every renewal, checkpoint, finish and release in
    the old owner's name is refused or does nothing; the new owner's go through."""
    topic = await make_topic(pipeline.pool, 1)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    stale, holder = uuid.uuid4(), uuid.uuid4()
    batch = SimpleNamespace(key="s0:1-1", devices=1, first_user=1, last_user=1)
    async with pipeline.pool.acquire() as conn:
        await shards.insert_shards(
            conn, event_id=event.event_id, bounds=[(0, 10)], overdue_after=60
        )
        # The stale owner's lease ends at once (0 s); the holder takes the shard after it.
        for owner, lease in ((stale, 0), (holder, 60)):
            assert await shards.claim_shard(
                conn,
                event_id=event.event_id,
                shard=0,
                owner=owner,
                lease_seconds=lease,
                overdue_after=60,
            )
        progress = {"recipients": 1, "devices": 1, "batches": 1, "held_back": {}}
        refused = await shards.checkpoint_shard(
            conn,
            event_id=event.event_id,
            shard=0,
            cursor=5,
            **progress,
            accepted=[batch],
            category=None,
            counted_users=[],
            owner=stale,
            lease_seconds=60,
            overdue_after=60,
        )
        assert not refused.held
        assert not await shards.finish_shard(
            conn, event_id=event.event_id, shard=0, **progress, owner=stale
        )
        await shards.release_shard(
            conn, event_id=event.event_id, shard=0, owner=stale, overdue_after=60, reason="x"
        )
        row = await conn.fetchrow(
            "SELECT status, cursor_user_id, lease_owner, lease_until > now() AS live"
            " FROM fanout_shards WHERE event_id = $1",
            event.event_id,
        )
        assert dict(row) == {
            "status": "running",
            "cursor_user_id": None,  # the stale checkpoint moved nothing on
            "lease_owner": holder,
            "live": True,  # and its release did not free the holder's lease
        }
        # The batch the stale owner sent is recorded all the same: nothing on SQS is
        # unknown to PostgreSQL.
        assert await batches.batch_status(conn, event_id=event.event_id, batch_key=batch.key)
        assert await shards.finish_shard(
            conn, event_id=event.event_id, shard=0, **progress, owner=holder
        )

        for owner, lease in ((stale, 0), (holder, 60)):
            assert await batches.claim_batch(
                conn,
                event_id=event.event_id,
                batch_key=batch.key,
                attempt=0,
                devices=1,
                owner=owner,
                lease_seconds=lease,
                overdue_after=60,
            )
        lease = {"lease_seconds": 60, "overdue_after": 60}
        key = {"event_id": event.event_id, "batch_key": batch.key}
        outcome = {"sent": 1, "failed": 0, "invalid": 0, "skipped": 0, "retried": 0}
        assert not await batches.renew_batch_lease(conn, **key, owner=stale, **lease)
        assert not await batches.finish_batch(
            conn, **key, **outcome, failure_reasons=None, owner=stale
        )
        assert await batches.finish_batch_held(conn, **key, owner=stale, reason="x") is None
        await batches.release_batch(conn, **key, owner=stale, overdue_after=60, reason="x")
        held = await batches.batch_status(conn, **key)
        assert held is not None and (held.status, held.lease_left > 0) == ("running", True)
        assert await batches.renew_batch_lease(conn, **key, owner=holder, **lease)
        assert await batches.finish_batch(
            conn, **key, **outcome, failure_reasons=None, owner=holder
        )


async def test_an_owner_takes_its_own_live_lease_again_and_nobody_else_does(
    pipeline: Pipeline,
) -> None:
    """What a claim that committed unanswered needs: its owner's retry takes it back
    while the lease is live; another invocation finds it busy."""
    topic = await make_topic(pipeline.pool, 1)
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    owner = uuid.uuid4()
    shard = {"event_id": event.event_id, "shard": 0, "lease_seconds": 600, "overdue_after": 60}
    batch = {
        "event_id": event.event_id,
        "batch_key": "s0:1-1",
        "attempt": 0,
        "devices": 1,
        "lease_seconds": 600,
        "overdue_after": 60,
    }
    async with pipeline.pool.acquire() as conn:
        await shards.insert_shards(
            conn, event_id=event.event_id, bounds=[(0, 10)], overdue_after=60
        )
        assert await shards.claim_shard(conn, **shard, owner=owner)
        assert await shards.claim_shard(conn, **shard, owner=owner)
        assert await shards.claim_shard(conn, **shard, owner=uuid.uuid4()) is None
        assert await batches.claim_batch(conn, **batch, owner=owner)
        assert await batches.claim_batch(conn, **batch, owner=owner)
        assert await batches.claim_batch(conn, **batch, owner=uuid.uuid4()) is None
