"""A Live Activity's updates through the pipeline (to the sink): an update still queued when
a newer one is published is superseded, at its batches' claim and at its shards'
checkpoint, never lost; a lost batch is re-read from the activity's tokens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import LiveActivity, Notification
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import cancel
from tests.helpers import (
    add_live_activity_tokens,
    batches_of,
    drain,
    lose_every_resend,
    run_everything,
    status,
    want_devices_failed,
)

ACTIVITY = "match:superseded"


def update(minute: int, event: str = "update") -> Notification:
    return Notification(
        kind="liveactivity",
        priority="normal",
        live_activity=LiveActivity(event=event, content_state={"minute": minute}),  # type: ignore[arg-type]
    )


@pytest.fixture
async def sharded(settings: Settings, sink: EmbeddedSink) -> AsyncIterator[Pipeline]:
    """Shards of 100 tokens, batches of a few dozen."""
    from tests.helpers import sink_pipeline

    small = settings.model_copy(
        update={"shard_size": 100, "page_size": 50, "batch_max_bytes": 4096}
    )
    async with sink_pipeline(small, sink.url) as pipeline:
        yield pipeline


async def publish(pipeline: Pipeline, note: Notification) -> int:
    done = await publish_update(pipeline.pool, pipeline.queues, note, activity_key=ACTIVITY)
    return done.published.event_id


async def test_a_queued_update_is_superseded_by_a_newer_one_and_never_lost(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    await add_live_activity_tokens(sharded.pool, ACTIVITY, 300)
    first = await publish(sharded, update(1))
    # The first update's plan runs its first shard (its batches wait on the queue) and
    # sends messages for the two others, which wait too.
    [plan] = await drain(sharded.queues.fanout, idle_polls=1)
    await sharded.handle(plan)
    waiting_shards = await drain(sharded.queues.fanout, idle_polls=1)
    waiting_batches = await drain(sharded.queues.delivery, idle_polls=1)
    assert len(waiting_shards) == 2 and waiting_batches

    second = await publish(sharded, update(2))
    for body in waiting_shards + waiting_batches:  # now stale: nothing of them is sent
        await sharded.handle(body)
    await run_everything(sharded)

    old, new = await status(sharded, first), await status(sharded, second)
    assert (old.status, old.sent, old.pending, old.failed) == ("delivered", 0, 0, 0)
    assert old.held_back == {"superseded": 300}  # 100 at the batches' claim, 200 at shards
    assert (new.status, new.sent) == ("delivered", 300)
    assert sink.sink.ledger.unique == 300
    assert {str(second)} == set(sink.sink.ledger.events())


async def test_a_newer_update_that_was_cancelled_supersedes_nothing(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    """A newer update that will not go out (cancelled) must not leave the devices on an
    older state than the one still queued: the queued update goes out whole."""
    await add_live_activity_tokens(sharded.pool, ACTIVITY, 300)
    first = await publish(sharded, update(1))
    [plan] = await drain(sharded.queues.fanout, idle_polls=1)
    await sharded.handle(plan)
    waiting = await drain(sharded.queues.fanout, idle_polls=1)
    waiting += await drain(sharded.queues.delivery, idle_polls=1)
    second = await publish(sharded, update(2))
    assert await cancel(sharded.pool, second) == "cancelled"
    for body in waiting:
        await sharded.handle(body)
    await run_everything(sharded)
    old = await status(sharded, first)
    assert (old.status, old.sent, old.held_back) == ("delivered", 300, {})
    assert (await status(sharded, second)).status == "cancelled"
    assert sink.sink.ledger.unique == 300 and {str(first)} == set(sink.sink.ledger.events())


async def test_an_end_is_never_superseded_and_a_start_goes_to_push_to_start_tokens(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    await add_live_activity_tokens(sharded.pool, ACTIVITY, 50)
    start = await publish(
        sharded,
        Notification(
            kind="liveactivity",
            live_activity=LiveActivity(
                event="start", content_state={}, attributes_type="A", attributes={}
            ),
        ),
    )
    # An end dismissed an hour on: its tokens still take what is published before then.
    in_an_hour = int(time.time()) + 3600
    end = await publish(
        sharded,
        Notification(
            kind="liveactivity",
            live_activity=LiveActivity(event="end", dismissal_date=in_an_hour),
        ),
    )
    correction = await publish(sharded, update(91))
    await run_everything(sharded)
    assert (await status(sharded, start)).status == "no_recipients"  # no push-to-start token
    for event_id in (end, correction):  # a newer update does not supersede an end
        found = await status(sharded, event_id)
        assert (found.status, found.sent, found.held_back) == ("delivered", 50, {})


async def test_a_lost_batch_is_re_read_from_the_activitys_tokens(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    await add_live_activity_tokens(sharded.pool, ACTIVITY, 120)
    event_id = await publish(sharded, update(5))
    while bodies := await drain(sharded.queues.fanout, idle_polls=1):
        for body in bodies:
            await sharded.handle(body)
    lost = batches_of(await drain(sharded.queues.delivery, idle_polls=1))
    assert sum(batch.device_count() for batch in lost) == 120
    # Every batch message is lost: the reconciler re-reads each from PostgreSQL.
    await reconcile_once(sharded.pool, sharded.queues, sharded.settings, look_ahead=3600)
    await run_everything(sharded)
    found = await status(sharded, event_id)
    assert (found.status, found.sent) == ("delivered", 120)
    assert sink.sink.ledger.unique == 120


async def test_a_batch_given_up_reports_its_activitys_tokens_failed(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    """A Live Activity update's batches given up by the reconciler: the devices.failed
    webhook lists the activity's tokens (device_id: the token's id, live_activity true)."""
    sharded.settings = sharded.settings.model_copy(update={"reconcile_max_resends": 2})
    await want_devices_failed(sharded.pool)
    tokens = await add_live_activity_tokens(sharded.pool, ACTIVITY, 30)
    event_id = await publish(sharded, update(5))
    while bodies := await drain(sharded.queues.fanout, idle_polls=1):
        for body in bodies:
            await sharded.handle(body)
    await lose_every_resend(sharded, event_id, look_ahead=3600, idle_polls=1)  # and resends
    assert (await status(sharded, event_id)).failed == 30
    async with sharded.pool.acquire() as conn:
        payloads = [
            row["payload"]
            for row in await conn.fetch(
                "SELECT payload FROM webhook_deliveries WHERE kind = 'devices.failed'"
            )
        ]
    assert payloads and all(p["live_activity"] for p in payloads)
    assert sorted(d["token"] for p in payloads for d in p["devices"]) == sorted(tokens)
    assert sink.sink.ledger.unique == 0


async def test_an_end_dismissed_in_the_past_still_reaches_every_token(
    sharded: Pipeline, sink: EmbeddedSink
) -> None:
    await add_live_activity_tokens(sharded.pool, ACTIVITY, 40)
    gone = Notification(
        kind="liveactivity",
        live_activity=LiveActivity(event="end", dismissal_date=int(time.time()) - 60),
    )
    end = await publish(sharded, gone)  # Apple: dismissed at once
    later = await publish(sharded, update(99))
    await run_everything(sharded)
    assert ((await status(sharded, end)).status, (await status(sharded, end)).sent) == (
        "delivered",
        40,
    )
    assert (await status(sharded, later)).status == "no_recipients"
