"""The long-running worker: real queues, real database, the sink; and a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client, sqs_usage
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once
from fanout.runtime.worker import QueueConsumer, build_consumers, run_worker
from fanout.stages.fanout import plan_event
from fanout.stages.publish import IdempotencyConflict, publish, record_event
from fanout.store import events
from fanout.store.lifecycle import TERMINAL_STATES
from tests.faults.proxy import FlakyProxy
from tests.helpers import make_topic, queue_counts, sink_pipeline, wait_for

NOTE = Notification(title="New book")


@pytest.fixture
async def running_worker(pipeline: Pipeline) -> AsyncIterator[list[QueueConsumer]]:
    stopping = asyncio.Event()
    task = asyncio.create_task(run_worker(pipeline.settings, stopping, pipeline=pipeline))
    consumers: list[QueueConsumer] = []
    yield consumers
    stopping.set()
    consumers.extend(await task)


async def wait_until_done(pipeline: Pipeline, event_id: int, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with pipeline.pool.acquire() as conn:
            row = dict(await conn.fetchrow(events.EVENT_PROGRESS, event_id))
        finished = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
        if row["status"] in TERMINAL_STATES and finished >= row["devices"]:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"event {event_id} not delivered in {timeout}s: {row}")


async def test_published_event_reaches_every_device_through_the_worker(
    pipeline: Pipeline, sink: EmbeddedSink, running_worker: list[QueueConsumer]
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"shard_size": 40})
    topic = await make_topic(pipeline.pool, 150, devices_per_user=(1, 2))
    event = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    progress = await wait_until_done(pipeline, event.event_id)
    assert progress["sent"] == len(topic.device_ids) == 225
    assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (225, 0)


async def test_poison_message_lands_in_the_dlq_with_its_reason_and_the_worker_goes_on(
    pipeline: Pipeline, sink: EmbeddedSink, running_worker: list[QueueConsumer]
) -> None:
    await pipeline.queues.fanout.send("this is not a fanout message")
    await pipeline.queues.delivery.send('{"kind": "delivery", "v": 1, "event": 99999999}')

    for queue in (pipeline.queues.fanout, pipeline.queues.delivery):
        dead = await _wait_for_dead_letter(pipeline, queue.dead_letter_url)
        reason = dead["MessageAttributes"]["fanout-reason"]["StringValue"]
        assert reason.startswith("PoisonMessage:")
        assert dead["MessageAttributes"]["fanout-source-queue"]["StringValue"] == queue.name

    # Still alive: the next real event is delivered.
    topic = await make_topic(pipeline.pool, 10)
    event = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    assert (await wait_until_done(pipeline, event.event_id))["sent"] == 10


async def _wait_for_dead_letter(pipeline: Pipeline, dlq_url: str | None) -> dict:  # type: ignore[type-arg]
    assert dlq_url is not None
    client = pipeline.queues.fanout.client
    for _ in range(30):
        response = await client.receive_message(
            QueueUrl=dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
        )
        if response.get("Messages"):
            return dict(response["Messages"][0])
    raise AssertionError("nothing reached the dead-letter queue")


async def test_event_left_pending_by_a_crash_is_sent_by_the_reconciler(
    pipeline: Pipeline, sink: EmbeddedSink, running_worker: list[QueueConsumer]
) -> None:
    topic = await make_topic(pipeline.pool, 12)
    # Committed, but the process "died" before sending the fan-out message.
    event = await record_event(pipeline.pool, NOTE, topic=topic.key)
    report = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=3600
    )
    assert report.events_resent >= 1
    assert (await wait_until_done(pipeline, event.event_id))["sent"] == 12


async def test_same_idempotency_key_publishes_once(pipeline: Pipeline) -> None:
    topic = await make_topic(pipeline.pool, 1)
    key = f"idem-{topic.key}"
    first = await publish(
        pipeline.pool, pipeline.queues, NOTE, topic=topic.key, idempotency_key=key
    )
    second = await publish(
        pipeline.pool, pipeline.queues, NOTE, topic=topic.key, idempotency_key=key
    )
    assert first.created and not second.created
    assert first.event_id == second.event_id


async def test_the_internal_scope_and_each_api_key_have_their_own_idempotency_keys(
    pipeline: Pipeline,
) -> None:
    topic = await make_topic(pipeline.pool, 1)
    key = f"idem-{topic.key}"
    events = [
        await record_event(pipeline.pool, NOTE, topic=topic.key, idempotency_key=key, api_key_id=s)
        for s in (None, 1, 2, None, 1)
    ]
    assert [e.created for e in events] == [True, True, True, False, False]
    assert len({e.event_id for e in events[:3]}) == 3
    assert (events[3].event_id, events[4].event_id) == (events[0].event_id, events[1].event_id)


async def test_the_same_key_with_a_different_request_is_refused(pipeline: Pipeline) -> None:
    topic = await make_topic(pipeline.pool, 1)
    key = f"idem-{topic.key}"
    await record_event(pipeline.pool, NOTE, topic=topic.key, idempotency_key=key)
    with pytest.raises(IdempotencyConflict, match="different request"):
        await record_event(pipeline.pool, NOTE, user="someone", idempotency_key=key)
    with pytest.raises(IdempotencyConflict):
        await record_event(
            pipeline.pool, Notification(title="Other"), topic=topic.key, idempotency_key=key
        )


async def test_worker_process_stops_cleanly_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    endpoint = urlsplit(settings.sqs_endpoint_url or "")
    # SQS behind a proxy that sees the worker's requests: the signal goes once both
    # queues' long polls are out, not after a guess at how long starting takes. It keeps
    # every answer to a long poll from the worker: one that waited for its polls could not
    # stop (until its client's read timeout failed them, 40 s a try, logged), however
    # long a loaded machine is given; only giving them up lets it stop.
    async with FlakyProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        proxy.watch(b"AmazonSQS.ReceiveMessage")
        proxy.hold_replies_to(b"AmazonSQS.ReceiveMessage")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
            "FANOUT_DATABASE_URL": settings.database_dsn(),
            "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
            "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
            "FANOUT_POLL_WAIT_SECONDS": "20",
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as stderr:
            worker = subprocess.Popen(
                [sys.executable, "-m", "fanout", "worker"], env=env, stderr=stderr
            )
        try:
            await wait_for(
                lambda: proxy.sent[b"AmazonSQS.ReceiveMessage"] >= 2, "both queues long-polled"
            )
            assert worker.poll() is None and proxy.holding >= 2
            worker.send_signal(signal.SIGTERM)
            # A guard only (five tries of a poll time out after 200 s): the polls were given up.
            assert await asyncio.to_thread(worker.wait, 120) == 0
        finally:
            worker.kill()
            worker.wait()
    said = log.read_text()
    assert "Traceback" not in said
    assert "receive from" not in said  # no poll failed: each was given up, not timed out


def delete_calls() -> int:
    """DeleteMessageBatch requests this process has made (counted by the SQS client)."""
    return sqs_usage().get("DeleteMessageBatch", (0, 0))[0]


async def test_finished_messages_are_deleted_ten_to_a_call_and_the_rest_on_stop(
    settings: Settings, sink: EmbeddedSink
) -> None:
    # Small batches, so there are many messages; a linger no test waits out, so only a
    # full call of ten, or the stop, sends a delete.
    settings = settings.model_copy(
        update={
            "batch_max_bytes": 4096,
            "page_size": 100,
            "visibility_timeout": 600,
            "delete_linger_seconds": 600,
        }
    )
    async with sink_pipeline(settings, sink.url) as pipeline:
        topic = await make_topic(pipeline.pool, 2500)
        event = await record_event(pipeline.pool, NOTE, topic=topic.key)
        await plan_event(event.event_id, pipeline.pool, pipeline.queues, settings)
        queue = pipeline.queues.delivery
        stopping = asyncio.Event()
        [consumer] = build_consumers(pipeline, ("delivery",), stopping)
        calls_before = delete_calls()
        running = asyncio.create_task(consumer.run(stopping))
        try:
            await wait_until_done(pipeline, event.event_id)

            async def all_finished() -> bool:
                stats = consumer.stats
                return stats.received == stats.succeeded and (await queue_counts(queue))[0] == 0

            await wait_for(all_finished, "every message received and finished")
            messages = consumer.stats.succeeded
            assert messages > 10 and messages % 10, f"{messages} messages: the test wants more"
            assert delete_calls() - calls_before == messages // 10  # full calls only
            assert await queue_counts(queue) == (0, messages % 10)  # waiting for their delete
        finally:
            stopping.set()
            await running
        assert delete_calls() - calls_before == -(-messages // 10)
        assert await queue_counts(queue) == (0, 0), "a finished message was left undeleted"
