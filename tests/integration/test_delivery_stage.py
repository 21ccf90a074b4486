"""The delivery stage against real PostgreSQL, SQS and the push sink over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification, RenderedNotification
from fanout.providers import Outcome, Provider
from fanout.queue.messages import DeliveryBatch, Device, PoisonMessage
from fanout.runtime.pipeline import Pipeline
from fanout.stages.delivery import BatchReport, deliver_batch
from fanout.stages.fanout import plan_event
from fanout.stages.publish import record_event
from fanout.store import events
from tests.helpers import add_device, batches_of, drain, make_topic

NOTE = Notification(title="New book")


async def fanned_out_batches(pipeline: Pipeline, topic_key: str) -> list[DeliveryBatch]:
    event = await record_event(pipeline.pool, NOTE, topic=topic_key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    return batches_of(await drain(pipeline.queues.delivery))


async def deliver(pipeline: Pipeline, batch: DeliveryBatch):  # type: ignore[no-untyped-def]
    return await deliver_batch(
        batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
    )


async def test_redelivered_batch_sends_nothing_twice(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 50)
    [batch] = await fanned_out_batches(pipeline, topic.key)

    first = await deliver(pipeline, batch)
    again = await deliver(pipeline, batch)

    assert first.sent == 50 and not first.already_done
    assert again.already_done and again.sent == 0
    ledger = sink.sink.ledger
    assert (ledger.unique, ledger.duplicates) == (50, 0)


async def test_only_the_failed_devices_are_retried(pipeline: Pipeline, sink: EmbeddedSink) -> None:
    topic = await make_topic(pipeline.pool, 20)
    async with pipeline.pool.acquire() as conn:
        flaky = [await add_device(conn, u, f"flaky-{u}") for u in topic.user_ids[:5]]
    [batch] = await fanned_out_batches(pipeline, topic.key)

    report = await deliver(pipeline, batch)
    assert (report.sent, report.retried) == (20, 5)
    [retry] = batches_of(await drain(pipeline.queues.delivery))
    assert retry.attempt == 1 and retry.key == f"{batch.key}/r1"
    assert sorted(d.id for d in retry.iter_devices()) == sorted(flaky)

    second = await deliver(pipeline, retry)
    assert (second.sent, second.retried, second.failed) == (5, 0, 0)
    ledger = sink.sink.ledger
    assert (ledger.unique, ledger.duplicates) == (25, 0)


async def test_retries_end_as_failed_when_attempts_run_out(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"delivery_max_attempts": 1})
    topic = await make_topic(pipeline.pool, 3, token_prefix="flaky")
    [batch] = await fanned_out_batches(pipeline, topic.key)
    report = await deliver(pipeline, batch)
    assert (report.failed, report.retried) == (3, 0)
    assert await drain(pipeline.queues.delivery) == []


async def test_invalid_tokens_are_deactivated_in_one_go(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10)
    async with pipeline.pool.acquire() as conn:
        dead = [await add_device(conn, u, f"invalid-{u}") for u in topic.user_ids[:4]]
    [batch] = await fanned_out_batches(pipeline, topic.key)

    report = await deliver(pipeline, batch)

    assert (report.sent, report.invalid) == (10, 4)
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, active, deactivated_reason FROM devices WHERE id = ANY($1)",
            dead + topic.device_ids,
        )
    inactive = {r["id"] for r in rows if not r["active"]}
    assert inactive == set(dead)
    # The next event does not even try them.
    [next_batch] = await fanned_out_batches(pipeline, topic.key)
    assert {d.id for d in next_batch.iter_devices()} == set(topic.device_ids)


async def test_outcome_is_recorded_per_batch(pipeline: Pipeline, sink: EmbeddedSink) -> None:
    topic = await make_topic(pipeline.pool, 8)
    async with pipeline.pool.acquire() as conn:
        await add_device(conn, topic.user_ids[0], f"reject-{topic.key}", platform="fcm")
        await add_device(conn, topic.user_ids[1], f"https://wp.example/{topic.key}", "webpush")
    [batch] = await fanned_out_batches(pipeline, topic.key)
    await deliver(pipeline, batch)
    async with pipeline.pool.acquire() as conn:
        progress = await conn.fetchrow(events.EVENT_PROGRESS, batch.event_id)
    assert (progress["sent"], progress["failed"], progress["invalid"]) == (9, 1, 0)


async def test_batch_of_an_unknown_event_is_poison(pipeline: Pipeline) -> None:
    batch = DeliveryBatch(2**40, "s0:1-1", 0, {"title": "t"}, {"apns": [[1, "x", None]]})
    with pytest.raises(PoisonMessage, match="unknown event"):
        await deliver(pipeline, batch)


async def test_batch_with_an_invalid_notification_is_poison(
    pipeline: Pipeline, pool: asyncpg.Pool
) -> None:
    topic = await make_topic(pool, 1)
    event = await record_event(pool, NOTE, topic=topic.key)
    batch = DeliveryBatch(event.event_id, "s0:1-1", 0, {"nope": 1}, {"apns": [[1, "x", None]]})
    with pytest.raises(PoisonMessage, match="invalid notification"):
        await deliver(pipeline, batch)


class LeaseTakenMidSend(Provider):
    """Delivers through ``inner``, but as it starts another invocation takes the batch
    (this one stalled past its lease); with ``hang``, it then sends nothing until stopped."""

    def __init__(self, inner: Provider, pool: asyncpg.Pool, *, hang: bool = False) -> None:
        self.inner, self.pool, self.hang = inner, pool, hang
        self.platforms = inner.platforms
        self.stopped = False

    async def send(
        self, notification: RenderedNotification, devices: Sequence[Device]
    ) -> list[Outcome]:
        async with self.pool.acquire() as conn:
            await conn.execute("UPDATE delivery_batches SET lease_owner = gen_random_uuid()")
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.stopped = True
        return await self.inner.send(notification, devices)


async def deliver_with(pipeline: Pipeline, batch: DeliveryBatch, provider: Provider) -> BatchReport:
    providers = dict.fromkeys(provider.platforms, provider)
    return await deliver_batch(batch, pipeline.pool, pipeline.queues, providers, pipeline.settings)


async def test_a_stale_owners_finish_is_refused_and_records_nothing(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10, token_prefix="flaky")  # all to be retried
    [batch] = await fanned_out_batches(pipeline, topic.key)
    provider = LeaseTakenMidSend(pipeline.providers["apns"], pipeline.pool)

    report = await deliver_with(pipeline, batch, provider)

    assert report.busy  # its copy of the message is redundant: the holder has the batch
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT batch_key, status, retried FROM delivery_batches WHERE event_id = $1",
            batch.event_id,
        )
    # Neither its outcome nor its retry batch: the holder records them.
    assert [tuple(r) for r in rows] == [(batch.key, "running", 0)]
    assert await drain(pipeline.queues.delivery) == []


async def test_a_stale_owner_stops_sending_when_its_renewal_is_refused(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10)
    [batch] = await fanned_out_batches(pipeline, topic.key)
    provider = LeaseTakenMidSend(pipeline.providers["apns"], pipeline.pool, hang=True)

    report = await deliver_with(pipeline, batch, provider)  # renewed every 1.67 s (lease 5)

    assert report.busy and provider.stopped
    assert sink.sink.ledger.unique == 0
