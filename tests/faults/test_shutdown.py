"""Stopping loses no time: SIGTERM hands the work back at once, not after a lease.

The fault is driven by what the worker has done: the fan-out worker is held mid-shard by
a full delivery queue (FANOUT_DELIVERY_BACKLOG_LIMIT, nothing consuming it), then told
to stop. Its shard's lease (60 s) and its message's visibility (60 s) must both be given
back as it exits, so the next worker goes on without waiting either out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues, open_client
from fanout.stages.fanout import plan_event
from fanout.stages.publish import publish, record_event
from tests.faults.conftest import WorkerProcess, sink_worker, wait_until_delivered
from tests.faults.test_crashes import assert_nothing_lost
from tests.helpers import make_topic, queue_counts, wait_for

NOTE = Notification(title="New book")


async def until(pool: asyncpg.Pool, query: str, *args: object, timeout: float = 60) -> None:
    """Until ``query`` is true; the bound is only a guard against hanging for ever."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with pool.acquire() as conn:
            if await conn.fetchval(query, *args):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never true: {query}")


async def test_sigterm_mid_shard_gives_the_shard_and_its_message_back_at_once(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    # Receives to spare: this test looks at the message once itself.
    settings = fault_settings.model_copy(update={"visibility_timeout": 60, "max_receive_count": 10})
    async with open_client(settings) as client:
        await create_queues(client, settings)
    topic = await make_topic(pool, 1500)
    stuck = sink_worker(
        settings,
        "fanout",
        sink.url,
        tmp_path,
        FANOUT_PAGE_SIZE="50",
        FANOUT_DELIVERY_BACKLOG_LIMIT="1",
        FANOUT_SHUTDOWN_GRACE_SECONDS="1",
    )
    workers.append(stuck)
    stuck.start()
    event = await publish(pool, queues, NOTE, topic=topic.key)
    # Mid-shard: it has sent a batch and now waits for room on the delivery queue.
    await until(
        pool,
        "SELECT status = 'running' AND batches > 0 FROM fanout_shards WHERE event_id = $1",
        event.event_id,
    )

    stuck.stop(timeout=120)  # SIGTERM (the bound, a guard: SIGKILL would keep the lease)

    async with pool.acquire() as conn:
        lease_left = await conn.fetchval(
            "SELECT extract(epoch FROM lease_until - now()) FROM fanout_shards WHERE event_id = $1",
            event.event_id,
        )
    assert lease_left <= 0, "the shard's lease was kept"
    # Its message is visible again now, not in 60 s (a 5 s poll finds it).
    [message] = await queues.fanout.receive(1, wait_seconds=5)
    # The event's planning message, which ran shard 0 itself (and runs it again).
    assert decode(message.body) == FanoutTask(event.event_id)
    await queues.fanout.change_visibility_many([message], 0)

    workers.append(sink_worker(settings, "all", sink.url, tmp_path))
    workers[-1].start()
    await wait_until_delivered(pool, event.event_id, 1500)
    await assert_nothing_lost(pool, sink, event.event_id, 1500)


async def test_sigterm_sends_every_delete_still_waiting(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    topic = await make_topic(pool, 300)
    event = await record_event(pool, NOTE, topic=topic.key)
    await plan_event(event.event_id, pool, queues, fault_settings)  # batches wait on SQS
    messages, _ = await queue_counts(queues.delivery)
    assert 1 <= messages < 10  # fewer than a full delete call: none goes before the stop
    # Deletes linger longer than the test: what is deleted, the stop deleted.
    worker = sink_worker(
        fault_settings,
        "delivery",
        sink.url,
        tmp_path,
        FANOUT_DELETE_LINGER_SECONDS="600",
        FANOUT_VISIBILITY_TIMEOUT="600",
    )
    workers.append(worker)
    worker.start()
    await wait_until_delivered(pool, event.event_id, 300)
    await wait_for(
        lambda: _all_waiting_for_delete(queues, messages), "every message waiting for its delete"
    )

    worker.stop()
    assert worker.process is not None and worker.process.returncode == 0
    assert await queue_counts(queues.delivery) == (0, 0), "a finished message was left"
    said = worker.log_file.read_text()
    assert "gave up" not in said and "could not delete" not in said
    assert sink.sink.ledger.unique == 300 and sink.sink.ledger.duplicates == 0


async def _all_waiting_for_delete(queues: Queues, messages: int) -> bool:
    return await queue_counts(queues.delivery) == (0, messages)
