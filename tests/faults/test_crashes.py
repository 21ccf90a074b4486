"""Workers killed with SIGKILL mid-work: after a restart everything arrives, once or twice.

The workers are real `fanout worker` processes; the sink counts in this process.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import LiveActivity, Notification
from fanout.queue.sqs import Queues
from fanout.stages.fanout import plan_event
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import PublishOptions, publish, record_event
from tests.faults.conftest import (
    WorkerProcess,
    report,
    sink_worker,
    wait_until_delivered,
    worker_in_process,
)
from tests.helpers import add_live_activity_tokens, make_topic, queue_counts, wait_for
from tests.integration.test_sourced_topics import FOLLOWERS, add_source, follow_table, followers

NOTE = Notification(title="New book")


async def largest_batch(pool: asyncpg.Pool, event_id: int) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT max(devices) FROM delivery_batches WHERE event_id = $1", event_id
            )
        )


async def assert_nothing_lost(
    pool: asyncpg.Pool, sink: EmbeddedSink, event_id: int, devices: int
) -> None:
    """Every device got the push; duplicates within one batch, all with the event's key."""
    ledger = sink.sink.ledger
    report("killed", devices, ledger)
    assert ledger.unique == devices, "a device was lost"
    assert ledger.duplicates <= await largest_batch(pool, event_id)
    assert ledger.duplicate_collapse_keys <= {str(event_id)}


async def test_delivery_worker_killed_mid_batch(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    topic = await make_topic(pool, 3000)
    event = await record_event(pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pool, queues, fault_settings)  # batches wait on SQS
    sink.sink.delay = 0.3  # each batch takes a while, so the kill lands inside one
    worker = sink_worker(
        fault_settings, "delivery", sink.url, tmp_path, FANOUT_WORKER_CONCURRENCY="1"
    )
    workers.append(worker)
    worker.start()
    await wait_for(lambda: sink.sink.ledger.unique >= 500, "500 devices delivered")
    worker.kill()
    sink.sink.delay = 0.0

    worker.start()
    await wait_until_delivered(pool, event.event_id, 3000)
    await assert_nothing_lost(pool, sink, event.event_id, 3000)


async def test_delivery_worker_killed_mid_live_activity_update(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    await add_live_activity_tokens(pool, "match:killed", 3000)
    update = Notification(
        kind="liveactivity",
        priority="normal",
        live_activity=LiveActivity(event="update", content_state={"minute": 61}),
    )
    event = (await publish_update(pool, queues, update, activity_key="match:killed")).published
    await plan_event(event.event_id, pool, queues, fault_settings)  # batches wait on SQS
    sink.sink.delay = 0.3  # each batch takes a while, so the kill lands inside one
    worker = sink_worker(
        fault_settings, "delivery", sink.url, tmp_path, FANOUT_WORKER_CONCURRENCY="1"
    )
    workers.append(worker)
    worker.start()
    await wait_for(lambda: sink.sink.ledger.unique >= 500, "500 tokens sent to")
    worker.kill()
    sink.sink.delay = 0.0

    worker.start()
    await wait_until_delivered(pool, event.event_id, 3000)
    await assert_nothing_lost(pool, sink, event.event_id, 3000)


async def test_fanout_worker_killed_mid_shard(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    topic = await make_topic(pool, 3000)
    # With nobody delivering, the fan-out stalls at a backlog of 3 batches: mid-shard.
    worker = sink_worker(
        fault_settings,
        "fanout",
        sink.url,
        tmp_path,
        FANOUT_DELIVERY_BACKLOG_LIMIT="3",
        FANOUT_PAGE_SIZE="20",
    )
    workers.append(worker)
    worker.start()
    event = await publish(pool, queues, NOTE, topic=topic.key)

    async def checkpointed() -> bool:
        async with pool.acquire() as conn:
            cursor = await conn.fetchval(
                "SELECT cursor_user_id FROM fanout_shards WHERE event_id = $1", event.event_id
            )
        return cursor is not None

    await wait_for(checkpointed, "the shard's first checkpoint")
    worker.kill()
    async with pool.acquire() as conn:
        shard = await conn.fetchrow(
            "SELECT status, cursor_user_id FROM fanout_shards WHERE event_id = $1", event.event_id
        )
    assert shard["status"] == "running"

    restarted = sink_worker(fault_settings, "fanout", sink.url, tmp_path, FANOUT_PAGE_SIZE="20")
    workers.append(restarted)
    restarted.start()
    async with worker_in_process(fault_settings, sink):
        progress = await wait_until_delivered(pool, event.event_id, 3000)
    await assert_nothing_lost(pool, sink, event.event_id, 3000)
    async with pool.acquire() as conn:
        attempts = await conn.fetchval(
            "SELECT attempts FROM fanout_shards WHERE event_id = $1", event.event_id
        )
    assert attempts >= 2  # it really was resumed, from its checkpoint
    assert progress["devices"] == 3000


async def test_a_paced_event_survives_a_delivery_worker_killed_mid_way(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """Two delivery workers share a paced event's schedule (each one's pacer sends what is
    due); one is SIGKILLed mid-way. Every device arrives, none before its batch's time in
    PostgreSQL (so no window ever holds more than the rate allows: the sink's own receive
    times against the schedule), and a duplicate only within the batch the kill cut."""
    topic = await make_topic(pool, 600)
    event = await record_event(
        pool, NOTE, topic=topic.key, options=PublishOptions(throttle_per_minute=6000)
    )
    await plan_event(event.event_id, pool, queues, fault_settings)  # scheduled, none on SQS
    async with pool.acquire() as conn:
        schedule = await conn.fetch(
            """SELECT first_user_id, last_user_id, devices, not_before FROM delivery_batches
               WHERE event_id = $1""",
            event.event_id,
        )
    # 100 a second: at most a second's worth each (fewer where the bytes limit cuts first).
    assert sum(b["devices"] for b in schedule) == 600
    assert max(b["devices"] for b in schedule) <= 100
    not_before = {
        user: batch["not_before"].timestamp()
        for batch in schedule
        for user in topic.user_ids
        if batch["first_user_id"] <= user <= batch["last_user_id"]
    }
    device_time = {d: not_before[u] for u, d in zip(topic.user_ids, topic.device_ids, strict=True)}

    received_at: dict[int, float] = {}
    answer = sink.sink.answer

    def timed(device_id: int, token: str, collapse_key: str) -> str:
        received_at.setdefault(device_id, time.time())
        return answer(device_id, token, collapse_key)

    sink.sink.answer = timed  # type: ignore[method-assign]
    sink.sink.delay = 0.2  # a batch takes a while, so the kill lands inside one
    for _ in range(2):
        # One batch at a time each, so the kill cuts one batch: with eight, a loaded machine
        # let several due batches be mid-send at once (200-600 duplicates, not one batch's).
        worker = sink_worker(
            fault_settings,
            "delivery",
            sink.url,
            tmp_path,
            FANOUT_PACING_INTERVAL_SECONDS="0.2",
            FANOUT_WORKER_CONCURRENCY="1",
        )
        workers.append(worker)
        worker.start()
    await wait_for(lambda: sink.sink.ledger.unique >= 150, "150 devices delivered")
    workers[0].kill()
    sink.sink.delay = 0.0

    await wait_until_delivered(pool, event.event_id, 600)
    await assert_nothing_lost(pool, sink, event.event_id, 600)
    early = [d for d, at in received_at.items() if at < device_time[d] - 0.01]
    assert early == [], f"{len(early)} devices received before their time"


async def test_a_sourced_event_survives_its_fanout_worker_killed_mid_shard(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """Issue #25: the followers of author 7 in the app's own table, read once at planning;
    the fan-out resumes from its checkpoint over the same members."""
    await follow_table(pool)
    await add_source(pool, fault_settings, "author:", FOLLOWERS)
    users = await make_topic(pool, 4000)
    chosen = await followers(pool, 7, users)  # every other user: 2,000 devices
    worker = sink_worker(
        fault_settings,
        "fanout",
        sink.url,
        tmp_path,
        FANOUT_DELIVERY_BACKLOG_LIMIT="3",
        FANOUT_PAGE_SIZE="20",
    )
    workers.append(worker)
    worker.start()
    event = await publish(pool, queues, NOTE, topic="author:7")

    async def checkpointed() -> bool:
        async with pool.acquire() as conn:
            cursor = await conn.fetchval(
                "SELECT cursor_user_id FROM fanout_shards WHERE event_id = $1", event.event_id
            )
        return cursor is not None

    await wait_for(checkpointed, "the shard's first checkpoint")
    worker.kill()
    status = await pool.fetchval(
        "SELECT status FROM fanout_shards WHERE event_id = $1", event.event_id
    )
    assert status == "running"  # killed mid-shard
    restarted = sink_worker(fault_settings, "fanout", sink.url, tmp_path, FANOUT_PAGE_SIZE="20")
    workers.append(restarted)
    restarted.start()
    async with worker_in_process(fault_settings, sink):
        progress = await wait_until_delivered(pool, event.event_id, len(chosen))
    await assert_nothing_lost(pool, sink, event.event_id, len(chosen))
    assert progress["devices"] == len(chosen)
    members = await pool.fetchval(
        "SELECT count(*) FROM event_members WHERE event_id = $1", event.event_id
    )
    assert members == len(chosen)


async def test_a_worker_killed_before_its_deletes_go_sends_nothing_twice(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """Every outcome recorded, no delete sent yet (they linger), SIGKILL: the messages
    come back after their visibility timeout, and the next worker finds their batches done
    in PostgreSQL and deletes them, sending nothing again."""
    topic = await make_topic(pool, 300)
    event = await record_event(pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pool, queues, fault_settings)  # batches wait on SQS
    messages, _ = await queue_counts(queues.delivery)
    assert 1 <= messages < 10  # fewer than a full delete call: none goes before the kill
    worker = sink_worker(
        fault_settings,
        "delivery",
        sink.url,
        tmp_path,
        FANOUT_DELETE_LINGER_SECONDS="600",
        FANOUT_VISIBILITY_TIMEOUT="5",
    )
    workers.append(worker)
    worker.start()
    await wait_until_delivered(pool, event.event_id, 300)
    worker.kill()
    assert sink.sink.ledger.unique == 300
    sent_before = sink.sink.ledger.received

    assert sum(await queue_counts(queues.delivery)) == messages  # not one deleted

    async def came_back() -> bool:
        visible, in_flight = await queue_counts(queues.delivery)
        return visible > 0 and visible + in_flight == messages

    await wait_for(came_back, "the undeleted messages visible again")
    again = sink_worker(fault_settings, "delivery", sink.url, tmp_path)
    workers.append(again)
    again.start()

    async def all_deleted() -> bool:
        return await queue_counts(queues.delivery) == (0, 0)

    await wait_for(all_deleted, "every message received again and deleted")
    assert sink.sink.ledger.received == sent_before
    report("killed before deleting", 300, sink.sink.ledger)
    assert sink.sink.ledger.unique == 300 and sink.sink.ledger.duplicates == 0
