"""Outages of the database, the queue and the push service: everything still arrives."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.stages.publish import publish
from tests.faults.conftest import report, wait_until_delivered, worker_in_process
from tests.faults.proxy import FlakyProxy
from tests.helpers import make_topic

NOTE = Notification(title="New book")


def exactly_once(sink: EmbeddedSink, devices: int) -> None:
    ledger = sink.sink.ledger
    report(
        os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0], devices, ledger
    )
    assert ledger.unique == devices, "a device was skipped"
    assert ledger.duplicates == 0, f"{ledger.duplicates} duplicates"


async def test_push_service_answering_503_for_a_while_then_200(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 600)
    sink.sink.unavailable_for(2.5)
    async with worker_in_process(fault_settings, sink) as pipeline:
        event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
        progress = await wait_until_delivered(pool, event.event_id, 600)
    assert any(status == 503 for _, status in sink.sink.refusals)
    assert (progress["sent"], progress["failed"]) == (600, 0)
    exactly_once(sink, 600)


async def test_push_service_throttling_with_retry_after_slows_the_worker(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 400)
    sink.sink.throttle_for(1.0, retry_after=3)
    async with worker_in_process(fault_settings, sink) as pipeline:
        event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
        progress = await wait_until_delivered(pool, event.event_id, 400)
    first_refusal = sink.sink.refusals[0][0]
    # Retry-After: 3 was honoured: nothing was tried again before it had passed.
    refusals_after_window = [t for t, _ in sink.sink.refusals if t - first_refusal > 1.0]
    assert refusals_after_window == []
    assert progress["sent"] == 400
    exactly_once(sink, 400)


async def test_database_unreachable_during_fan_out(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 3000)
    url = urlsplit(fault_settings.database_dsn())
    async with FlakyProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
        settings = fault_settings.model_copy(
            update={"database_url": SecretStr(proxied), "page_size": 20}
        )
        async with worker_in_process(settings, sink) as pipeline:
            event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
            await _wait_for_first_checkpoint(pool, event.event_id)
            proxy.outage(3.0)
            progress = await wait_until_delivered(pool, event.event_id, 3000)
    assert progress["sent"] == 3000
    # Batches sent while the database was away are recorded once it is back (the delivery
    # stage waits a database blip out), so no device gets the push twice.
    exactly_once(sink, 3000)


async def _wait_for_first_checkpoint(pool: asyncpg.Pool, event_id: int) -> None:
    for _ in range(200):
        async with pool.acquire() as conn:
            cursor = await conn.fetchval(
                "SELECT max(cursor_user_id) FROM fanout_shards WHERE event_id = $1", event_id
            )
        if cursor is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the fan-out never checkpointed")


async def test_queue_unreachable_for_a_while(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 2000)
    endpoint = urlsplit(fault_settings.sqs_endpoint_url or "")
    async with FlakyProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        settings = fault_settings.model_copy(
            update={"sqs_endpoint_url": f"http://127.0.0.1:{proxy.port}"}
        )
        sink.sink.delay = 0.05  # delivery still running when the queue goes away
        async with worker_in_process(settings, sink) as pipeline:
            event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
            while sink.sink.ledger.unique < 200:
                await asyncio.sleep(0.02)
            proxy.outage(4.0)
            progress = await wait_until_delivered(pool, event.event_id, 2000)
    assert progress["sent"] == 2000
    # A batch whose delete was lost comes back and is skipped as done: no duplicates.
    exactly_once(sink, 2000)
