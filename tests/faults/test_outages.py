"""Outages of the database, the queue and the push service: everything still arrives.

Each fault starts once the system has visibly got somewhere (a checkpoint, pushes in the
sink, or from the first request) and ends once the worker has visibly run into it (a
retry refused, connections refused), never after a number of seconds: on a loaded
machine a timed window can close before the worker reaches it, or outlast its retries.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.stages.publish import publish
from tests.faults.conftest import exactly_once, wait_until_delivered, worker_in_process
from tests.faults.proxy import FlakyProxy
from tests.helpers import make_topic, wait_for

NOTE = Notification(title="New book")


async def refused_retry_batches(pool: asyncpg.Pool, event_id: int) -> int:
    """Retry batches (attempt >= 1) that were sent and had to be retried again."""
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM delivery_batches"
            " WHERE event_id = $1 AND attempt >= 1 AND status = 'done' AND retried > 0",
            event_id,
        )
    return count


async def batch_claims(pool: asyncpg.Pool, event_id: int) -> dict[str, float]:
    """When each batch of the event (retry batches too) was claimed, in epoch seconds."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT batch_key, extract(epoch FROM started_at)::float8 AS claimed"
            " FROM delivery_batches WHERE event_id = $1",
            event_id,
        )
    return {row["batch_key"]: row["claimed"] for row in rows}


def previous_try(key: str) -> str:
    """The batch a retry batch was cut from: ``k/r1`` from ``k``, ``k/r2`` from ``k/r1``."""
    base, attempt = key.rsplit("/r", 1)
    return base if attempt == "1" else f"{base}/r{int(attempt) - 1}"


async def test_push_service_answering_503_for_a_while_then_200(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 600)
    sink.sink.unavailable_for(math.inf)  # 503 from the first push on
    async with worker_in_process(fault_settings, sink) as pipeline:
        event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
        # Back up once a retry, too, has been refused: the worker has lived through
        # an outage longer than its first backoff. (8 tries would outlast ~2 minutes.)
        await wait_for(
            lambda: refused_retry_batches(pool, event.event_id), "a retry batch refused with 503"
        )
        sink.sink.unavailable_for(0)
        progress = await wait_until_delivered(pool, event.event_id, 600)
    assert any(status == 503 for _, status in sink.sink.refusals)
    assert (progress["sent"], progress["failed"]) == (600, 0)
    exactly_once(sink, 600)


async def test_push_service_throttling_with_retry_after_slows_the_worker(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pool, 400)
    sink.sink.throttle_for(math.inf, retry_after=3)  # 429 from the first push on
    async with worker_in_process(fault_settings, sink) as pipeline:
        event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
        await wait_for(lambda: sink.sink.refusals, "a push answered 429")
        sink.sink.throttle_for(0, retry_after=3)
        progress = await wait_until_delivered(pool, event.event_id, 400)
    claims = await batch_claims(pool, event.event_id)
    retries = {key: claimed for key, claimed in claims.items() if "/r" in key}
    assert retries, "no batch was retried"
    # Retry-After: 3 was honoured: no refused device was tried again before it had
    # passed. A lower bound, so a slow machine cannot break it, only a fast retry.
    waited = {key: claimed - claims[previous_try(key)] for key, claimed in retries.items()}
    assert min(waited.values()) >= 3.0, waited
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
            await wait_for(
                lambda: _checkpoint(pool, event.event_id), "the fan-out's first checkpoint"
            )
            # Every connection dropped mid-fan-out, and the next 5 refused: fewer than the
            # 6 tries a sent batch's outcome is given, so none is sent twice.
            proxy.outage(refuse=5)
            progress = await wait_until_delivered(pool, event.event_id, 3000)
    assert proxy.restored.is_set()
    assert progress["sent"] == 3000
    # Batches sent while the database was away are recorded once it is back (the delivery
    # stage waits a database blip out), so no device gets the push twice.
    exactly_once(sink, 3000)


async def _checkpoint(pool: asyncpg.Pool, event_id: int) -> object:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT max(cursor_user_id) FROM fanout_shards WHERE event_id = $1", event_id
        )


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
            await wait_for(lambda: sink.sink.ledger.unique >= 200, "200 devices delivered")
            # Every connection dropped mid-delivery (deletes lost with them), and the
            # next 8 refused: more than one call's worth of the SQS client's 5 attempts.
            proxy.outage(refuse=8)
            progress = await wait_until_delivered(pool, event.event_id, 2000)
    assert proxy.restored.is_set()
    assert progress["sent"] == 2000
    # A batch whose delete was lost comes back and is skipped as done: no duplicates.
    exactly_once(sink, 2000)
