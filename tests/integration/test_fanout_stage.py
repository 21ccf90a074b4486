"""The fan-out stage against real PostgreSQL and SQS (moto's server over HTTP)."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from prometheus_client import REGISTRY

from fanout.config import Settings
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, PoisonMessage, decode
from fanout.queue.sqs import Queues
from fanout.stages.fanout import plan_event, run_shard
from fanout.stages.publish import record_event
from fanout.store import events, subscriptions
from tests.helpers import add_device, batches_of, device_counts, drain, make_topic

NOTE = Notification(title="New book")


def small(settings: Settings, **changes: object) -> Settings:
    """Tiny shards, pages and batches, so a small topic crosses every boundary."""
    return settings.model_copy(
        update={"shard_size": 97, "page_size": 13, "batch_max_bytes": 4096, **changes}
    )


async def fan_out_everything(
    event_id: int, pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    """Plan the event, then run every shard message it sent, like the worker would."""
    await plan_event(event_id, pool, queues, settings)
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event_id, task.shard, pool, queues, settings)


async def test_paging_across_shard_boundaries_misses_and_doubles_nobody(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    # Users with 0, 1 and 3 devices, so pages and batches end in every kind of place.
    topic = await make_topic(pool, 1000, devices_per_user=(1, 0, 3, 1))
    event = await record_event(pool, NOTE, topic=topic.key)
    await fan_out_everything(event.event_id, pool, queues, small(settings))

    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert sorted(counts) == sorted(topic.device_ids)
    assert set(counts.values()) == {1}
    async with pool.acquire() as conn:
        progress = await conn.fetchrow(events.EVENT_PROGRESS, event.event_id)
    assert progress["status"] == "fanned_out"  # its batches are still on the queue
    assert progress["shards"] == progress["shards_done"] == 11  # 1000 / 97, rounded up
    assert progress["devices"] == len(topic.device_ids)
    assert progress["recipients"] == 750  # users with at least one device


async def test_concurrent_subscribe_and_unsubscribe_never_doubles_or_skips_the_steady(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 600)
    steady = set(topic.device_ids[::2])  # never touched while the fan-out runs
    leaving = topic.user_ids[1::2]
    event = await record_event(pool, NOTE, topic=topic.key)
    joined: list[int] = []

    async def churn() -> None:
        async with pool.acquire() as conn:
            for i, user_id in enumerate(leaving):
                await conn.execute(
                    "DELETE FROM subscriptions WHERE topic_id = $1 AND user_id = $2",
                    topic.id,
                    user_id,
                )
                newcomer = await conn.fetchval(subscriptions.UPSERT_USER, f"{topic.key}-new-{i}", 1)
                await conn.execute(
                    "INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2)",
                    topic.id,
                    newcomer,
                )
                joined.append(await add_device(conn, newcomer, f"new-{topic.key}-{i}"))
                await asyncio.sleep(0)

    await asyncio.gather(
        fan_out_everything(event.event_id, pool, queues, small(settings, shard_size=50)), churn()
    )
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert steady <= set(counts)
    assert set(counts.values()) == {1}
    assert set(counts) <= set(topic.device_ids) | set(joined)


async def test_redelivered_plan_message_fans_out_once(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 300)
    event = await record_event(pool, NOTE, topic=topic.key)
    tuned = small(settings)
    await fan_out_everything(event.event_id, pool, queues, tuned)
    first = device_counts(batches_of(await drain(queues.delivery)))

    # The same plan message again, and the shard messages again: nothing more is sent.
    await fan_out_everything(event.event_id, pool, queues, tuned)
    for shard in range(4):
        report = await run_shard(event.event_id, shard, pool, queues, tuned)
        assert report.already_done
    assert await drain(queues.delivery) == []
    assert sum(first.values()) == len(topic.device_ids)


async def test_a_shard_being_fanned_out_is_not_started_twice(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 400)
    event = await record_event(pool, NOTE, topic=topic.key)
    tuned = small(settings, shard_size=10_000)
    await asyncio.gather(
        plan_event(event.event_id, pool, queues, tuned),
        plan_event(event.event_id, pool, queues, tuned),
    )
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert sorted(counts) == sorted(topic.device_ids)
    assert set(counts.values()) == {1}


async def test_shard_out_of_time_checkpoints_and_resumes_where_it_stopped(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 500)
    event = await record_event(pool, NOTE, topic=topic.key)
    tuned = small(settings, shard_size=10_000)
    budget = itertools.chain([60.0, 60.0], itertools.repeat(1.0))  # runs short on page 3

    reports = await plan_event(event.event_id, pool, queues, tuned, time_left=lambda: next(budget))
    assert not reports[0].finished
    [body] = await drain(queues.fanout)
    task = decode(body)
    assert task == FanoutTask(event.event_id, 0)
    resumed = await run_shard(event.event_id, 0, pool, queues, tuned)
    assert resumed.finished

    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert sorted(counts) == sorted(topic.device_ids)
    assert set(counts.values()) == {1}


async def test_one_to_one_event_reaches_only_that_users_devices(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 3, devices_per_user=(2,))
    async with pool.acquire() as conn:
        external = await conn.fetchval(
            "SELECT external_id FROM users WHERE id = $1", topic.user_ids[1]
        )
    event = await record_event(pool, NOTE, user=external)
    await plan_event(event.event_id, pool, queues, settings)
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert sorted(counts) == topic.device_ids[2:4]


async def test_unknown_event_is_poison(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    with pytest.raises(PoisonMessage, match="unknown event"):
        await plan_event(2**40, pool, queues, settings)


async def test_a_shard_whose_lease_was_taken_stops_at_its_checkpoint_and_loses_nothing(
    pool: asyncpg.Pool, queues: Queues, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await make_topic(pool, 200)
    event = await record_event(pool, NOTE, topic=topic.key)
    tuned = small(settings, shard_size=10_000)
    send_many = queues.delivery.send_many
    sends = 0

    async def send_then_lose_the_lease(bodies: list[str]) -> None:
        nonlocal sends
        sends += 1
        await send_many(bodies)
        # Meanwhile this invocation stalled past its lease and another one took the shard.
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE fanout_shards SET lease_owner = gen_random_uuid() WHERE event_id = $1",
                event.event_id,
            )

    lost_before = REGISTRY.get_sample_value("fanout_leases_lost_total", {"unit": "shard"}) or 0
    monkeypatch.setattr(queues.delivery, "send_many", send_then_lose_the_lease)
    [stale] = await plan_event(event.event_id, pool, queues, tuned)
    monkeypatch.undo()

    # It stopped at the checkpoint after its first send, and says its copy is redundant.
    assert stale.busy and sends == 1
    assert REGISTRY.get_sample_value("fanout_leases_lost_total", {"unit": "shard"}) == (
        lost_before + 1
    )
    sent_by_stale = {b.key for b in batches_of(await drain(queues.delivery))}
    async with pool.acquire() as conn:
        cursor = await conn.fetchval(
            "SELECT cursor_user_id FROM fanout_shards WHERE event_id = $1", event.event_id
        )
        recorded = await conn.fetch(
            "SELECT batch_key FROM delivery_batches WHERE event_id = $1", event.event_id
        )
        # The holder (here: its lease over, so the next run takes the shard).
        await conn.execute(
            "UPDATE fanout_shards SET lease_until = now() WHERE event_id = $1", event.event_id
        )
    assert cursor is None  # nothing moved on in its name: the holder reads those users
    assert {r["batch_key"] for r in recorded} == sent_by_stale  # but PostgreSQL knows them

    holder = await run_shard(event.event_id, 0, pool, queues, tuned)
    assert holder.finished and not holder.busy
    resent = batches_of(await drain(queues.delivery))
    # The same batches again, by key (so each is delivered once), and every device.
    assert sent_by_stale <= {b.key for b in resent}
    counts = device_counts(resent)
    assert sorted(counts) == sorted(topic.device_ids) and set(counts.values()) == {1}


async def test_a_backlog_limit_holds_however_fast_the_sender_fills_the_queue(
    queues: Queues,
) -> None:
    """The queue's depth is read at most every half second; what this process sends in
    between counts on top of the last reading, so a sender that fills the queue faster than
    that still stops at the limit (before, it went on until the next reading)."""
    delivery = queues.delivery
    for n in range(3):
        await delivery.wait_for_room(3)  # the first reads the depth: 0
        await delivery.send_many([f"batch {n}"])
    with pytest.raises(TimeoutError):  # three waiting, nobody takes them: no room, ever
        await asyncio.wait_for(delivery.wait_for_room(3), timeout=2.0)
    assert await delivery.depth() == 3
