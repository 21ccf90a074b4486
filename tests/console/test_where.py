"""What the delivery records per device it did not send to, and the console's answers
built on it: "Where is my push?", outcomes by provider, the throughput and latency."""

from __future__ import annotations

from datetime import UTC, datetime

from fanout.api.console import views
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.runtime.pipeline import Pipeline
from fanout.stages.delivery import deliver_batch
from fanout.stages.fanout import plan_event
from fanout.stages.publish import record_event
from fanout.store.apps import DEFAULT_APP_ID
from tests.helpers import add_device, batches_of, drain, make_topic


async def _deliver_everything(pipeline: Pipeline, topic_key: str) -> int:
    """Fan out and deliver every batch, retries included, in this process."""
    event = await record_event(pipeline.pool, Notification(title="New book"), topic=topic_key)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    while batches := batches_of(await drain(pipeline.queues.delivery)):
        for batch in batches:
            await deliver_batch(
                batch, pipeline.pool, pipeline.queues, pipeline.providers, pipeline.settings
            )
    return event.event_id


async def test_each_device_has_its_outcome_without_a_row_per_device_sent(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 30)
    user_ids = topic.user_ids
    async with pipeline.pool.acquire() as conn:
        dead = await add_device(conn, user_ids[1], "invalid-1")
        rejected = await add_device(conn, user_ids[2], "reject-2", platform="fcm")
        flaky = await add_device(conn, user_ids[3], "flaky-3")
        external = {
            r["id"]: r["external_id"]
            for r in await conn.fetch(
                "SELECT id, external_id FROM users WHERE id = ANY($1)", user_ids
            )
        }
    event_id = await _deliver_everything(pipeline, topic.key)
    async with pipeline.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT device_id, outcome FROM delivery_failures WHERE event_id = $1 ORDER BY at",
            event_id,
        )
        later_event_device = await add_device(conn, user_ids[0], "registered-after")
    # Only what went wrong is stored: one dead token, one rejection, one retry.
    assert sorted((r["device_id"], r["outcome"]) for r in rows) == sorted(
        [(dead, "invalid"), (rejected, "failed"), (flaky, "retried")]
    )

    event = await views.one_event(pipeline.pool, event_id, app_id=DEFAULT_APP_ID)
    assert event is not None and event.status.status == "partially_delivered"

    async def outcomes(user_id: int) -> dict[int, str]:
        answer = await views.where_is_my_push(
            pipeline.pool,
            event,
            app_id=DEFAULT_APP_ID,
            user_external_id=external[user_id],
            device_id=None,
        )
        assert isinstance(answer, views.WhereAnswer)
        assert answer.batches, "the batch that carried the user"
        return {a.device.id: a.outcome for a in answer.devices}

    assert await outcomes(user_ids[0]) == {
        topic.device_ids[0]: "sent",
        later_event_device: "not sent",
    }
    assert await outcomes(user_ids[1]) == {topic.device_ids[1]: "sent", dead: "invalid"}
    assert await outcomes(user_ids[2]) == {topic.device_ids[2]: "sent", rejected: "failed"}
    assert await outcomes(user_ids[3]) == {topic.device_ids[3]: "sent", flaky: "sent"}

    by_device = await views.where_is_my_push(
        pipeline.pool, event, app_id=DEFAULT_APP_ID, user_external_id=None, device_id=rejected
    )
    assert isinstance(by_device, views.WhereAnswer)
    [answer] = by_device.devices
    assert (answer.outcome, answer.explanation) == ("failed", "sink: rejected")
    retried = await views.where_is_my_push(
        pipeline.pool, event, app_id=DEFAULT_APP_ID, user_external_id=None, device_id=flaky
    )
    assert isinstance(retried, views.WhereAnswer)
    [answer] = retried.devices
    assert answer.batch_key is not None and answer.batch_key.endswith("/r1")
    assert [f["outcome"] for f in answer.failures] == ["retried"]

    nobody = await views.where_is_my_push(
        pipeline.pool, event, app_id=DEFAULT_APP_ID, user_external_id="no-such-user", device_id=None
    )
    assert nobody == "no user with the external id 'no-such-user'"


async def test_event_detail_counts_by_provider_match_the_event(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 40)
    async with pipeline.pool.acquire() as conn:
        await add_device(conn, topic.user_ids[0], "invalid-a")
        await add_device(conn, topic.user_ids[1], "reject-b", platform="fcm")
    event_id = await _deliver_everything(pipeline, topic.key)
    event = await views.one_event(pipeline.pool, event_id, app_id=DEFAULT_APP_ID)
    assert event is not None
    detail = await views.event_detail(pipeline.pool, event)

    assert detail.by_platform == {"apns": {"sent": 40, "invalid": 1}, "fcm": {"failed": 1}}
    assert [(r["platform"], r["outcome"], r["reason"], r["devices"]) for r in detail.reasons] == [
        ("apns", "invalid", "sink: unregistered", 1),
        ("fcm", "failed", "sink: rejected", 1),
    ]
    assert [r["reason"] for r in detail.retired] == ["sink: unregistered"]
    assert detail.batches.done == event.status.batches and detail.batches.without_detail == 0
    assert all(seconds is not None and seconds >= 0 for seconds in detail.latency.values())
    chart = await views.throughput(pipeline.pool, event, datetime.now(UTC))
    assert sum(chart["sent"]) * chart["bucket_seconds"] == event.status.sent == 40

    minute = await views.providers_last_minute(pipeline.pool, app_id=DEFAULT_APP_ID)
    assert {p.platform: p.counts for p in minute} == detail.by_platform


async def test_a_batch_claimed_before_the_fanout_recorded_its_range_is_found_by_its_key(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 5)
    event_id = await _deliver_everything(pipeline, topic.key)
    async with pipeline.pool.acquire() as conn:
        # What CLAIM_BATCH leaves when the delivery wins the race with CHECKPOINT_SHARD.
        await conn.execute(
            "UPDATE delivery_batches SET first_user_id = NULL, last_user_id = NULL "
            "WHERE event_id = $1",
            event_id,
        )
        external_id = await conn.fetchval(
            "SELECT external_id FROM users WHERE id = $1", topic.user_ids[2]
        )
    event = await views.one_event(pipeline.pool, event_id, app_id=DEFAULT_APP_ID)
    assert event is not None
    answer = await views.where_is_my_push(
        pipeline.pool, event, app_id=DEFAULT_APP_ID, user_external_id=external_id, device_id=None
    )
    assert isinstance(answer, views.WhereAnswer)
    assert [a.outcome for a in answer.devices] == ["sent"]
