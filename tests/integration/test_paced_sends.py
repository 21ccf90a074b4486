"""Paced sends (issue #24): throttle_per_minute on real PostgreSQL and SQS, counted at the
sink.

Nothing waits on the clock. The schedule is asserted where it is kept, in PostgreSQL (each
batch's not_before, the event's pace clock); time passes because the test moves the
schedule into the past in the database, or because the pacer's sweep looks ahead.
"""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once, release_paced
from fanout.stages.publish import PublishOptions, cancel, publish
from tests.helpers import Topic, drain, make_topic, run_everything, status
from tests.integration.test_cli import fanout
from tests.integration.test_schedule_pipeline import (
    _window_around_now,
    devices_of,
    set_preferences,
)

NOTE = Notification(title="Paced")
FAR = 10 * 24 * 3600.0  # look far enough ahead to release everything scheduled


def paced(pipeline: Pipeline, **settings: object) -> None:
    """Small shards and pages, so the fan-out checkpoints often."""
    pipeline.settings = pipeline.settings.model_copy(
        update={"page_size": 25, "shard_size": 60, **settings}
    )


async def schedule_of(pool: asyncpg.Pool, event_id: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch(
            """SELECT batch_key, devices, not_before, status, due_at IS NOT NULL AS released
               FROM delivery_batches WHERE event_id = $1 ORDER BY not_before""",
            event_id,
        )


async def fan_out_only(pipeline: Pipeline) -> None:
    while bodies := await drain(pipeline.queues.fanout, idle_polls=1):
        for body in bodies:
            await pipeline.handle(body)


async def deliver_released(pipeline: Pipeline) -> int:
    """Send what is due (everything, looking far ahead) and deliver it."""
    released = await release_paced(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=FAR
    )
    await run_everything(pipeline)
    return released


async def time_passes(pool: asyncpg.Pool, event_id: int) -> None:
    """The event's schedule moves an hour into the past: its clock, its batches and its
    parked shards are due now."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE events SET paced_until = paced_until - interval '1 hour' WHERE id = $1",
            event_id,
        )
        await conn.execute(
            """UPDATE delivery_batches SET not_before = not_before - interval '1 hour'
               WHERE event_id = $1""",
            event_id,
        )
        await conn.execute(
            """UPDATE fanout_shards SET due_at = now() - interval '1 second'
               WHERE event_id = $1 AND status = 'pending'""",
            event_id,
        )


def received(sink: EmbeddedSink, event_id: int, topic: Topic) -> list[int]:
    return [sink.sink.ledger.count(d, str(event_id)) for d in topic.device_ids]


async def test_a_paced_event_is_scheduled_in_postgresql_and_the_queue_carries_only_what_is_due(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    paced(pipeline)
    topic = await make_topic(pipeline.pool, 200, devices_per_user=(1, 2))  # 300 devices
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(throttle_per_minute=600),  # 10 a second
    )
    await fan_out_only(pipeline)
    assert await drain(pipeline.queues.delivery) == []  # nothing is on SQS before its time

    batches = await schedule_of(pipeline.pool, published.event_id)
    assert sum(b["devices"] for b in batches) == 300
    assert all(b["devices"] <= 10 for b in batches)  # a second's worth of the rate
    assert all(b["status"] == "queued" and not b["released"] for b in batches)
    # One schedule over every shard (4 of them here): each batch goes exactly its
    # predecessors' devices at 10 a second after the first, so any minute holds 600.
    first = batches[0]["not_before"]
    before = 0
    for batch in batches:
        assert abs((batch["not_before"] - first).total_seconds() - before / 10) < 0.001
        before += batch["devices"]
    seen = await status(pipeline, published.event_id)
    assert seen.pacing is not None
    assert (seen.pacing.throttle_per_minute, seen.pacing.scheduled, seen.pacing.final) == (
        600,
        300,
        True,
    )
    assert seen.pacing.expected_end is not None
    assert abs((seen.pacing.expected_end - first).total_seconds() - 30) < 0.001

    # The sweep sends a prefix of the schedule: stretched to a minute a batch from an hour
    # on, looking an hour and 150 s ahead takes the first three, whatever the machine's load.
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            """UPDATE delivery_batches
               SET not_before = now() + interval '1 hour' + (not_before - $2) * 60
               WHERE event_id = $1""",
            published.event_id,
            first,
        )
    released = await release_paced(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=3600 + 150
    )
    assert 0 < released < len(batches)
    after = await schedule_of(pipeline.pool, published.event_id)
    flags = [b["released"] for b in after]
    assert flags == [True] * released + [False] * (len(after) - released)
    assert len(await drain(pipeline.queues.delivery)) == released

    await deliver_released(pipeline)  # the rest; the drained ones come back by reconcile
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=FAR)
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.pending) == ("delivered", 300, 0)
    assert done.pacing is not None and done.pacing.sent == 300
    assert received(sink, published.event_id, topic) == [1] * 300


async def test_the_fan_out_reads_ahead_a_window_then_parks_and_resumes_from_its_checkpoint(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    # One a second, 30 s read ahead, pages of 25: the first page schedules 25 s, the
    # second 50 s, which is 30 s ahead unless 20 s passed meanwhile.
    paced(pipeline, pacing_read_ahead_seconds=30.0, shard_size=10_000)
    topic = await make_topic(pipeline.pool, 200)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(throttle_per_minute=60),
    )
    await fan_out_only(pipeline)
    seen = await status(pipeline, published.event_id)
    # Parked after two pages, the rest not read.
    assert seen.pacing is not None and 30 <= seen.pacing.scheduled < 75
    scheduled = seen.pacing.scheduled
    assert (seen.status, seen.pacing.final) == ("fanning_out", False)
    async with pipeline.pool.acquire() as conn:
        shard = await conn.fetchrow(
            "SELECT status, lease_owner, resends FROM fanout_shards WHERE event_id = $1",
            published.event_id,
        )
    assert (shard["status"], shard["lease_owner"], shard["resends"]) == ("pending", None, 0)
    # A redelivered task finds it still ahead of the clock: it parks again, reading nothing.
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=FAR)
    await fan_out_only(pipeline)
    again = await status(pipeline, published.event_id)
    assert again.pacing is not None and again.pacing.scheduled == scheduled

    rounds = 0
    while (await status(pipeline, published.event_id)).fanned_out_at is None:
        rounds += 1
        assert rounds < 10
        await deliver_released(pipeline)
        await time_passes(pipeline.pool, published.event_id)
        await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
        await fan_out_only(pipeline)
    assert 3 <= rounds <= 6  # about 50 more each time
    await deliver_released(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.recipients) == ("delivered", 200, 200)
    assert received(sink, published.event_id, topic) == [1] * 200


async def test_cancel_ends_the_paced_batches_not_yet_sent_and_the_parked_shard(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    # One a second, 30 s read ahead, pages of 25: the first page schedules 25 s, the
    # second 50 s, which is 30 s ahead unless 20 s passed meanwhile.
    paced(pipeline, pacing_read_ahead_seconds=30.0, shard_size=10_000)
    topic = await make_topic(pipeline.pool, 200)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(throttle_per_minute=60),
    )
    await fan_out_only(pipeline)
    # The first 20 seconds' batches are sent; the rest an hour later than scheduled, so
    # that none comes due while a loaded machine gets to the sweep.
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            """UPDATE delivery_batches
               SET not_before = not_before + CASE WHEN not_before < (
                   SELECT min(not_before) + interval '20 seconds' FROM delivery_batches
                   WHERE event_id = $1) THEN interval '-1 hour' ELSE interval '1 hour' END
               WHERE event_id = $1""",
            published.event_id,
        )
    await release_paced(pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    sent_before = sum(received(sink, published.event_id, topic))
    assert sent_before == 20

    assert await cancel(pipeline.pool, published.event_id) == "fanning_out"
    assert (
        await release_paced(pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=FAR) == 0
    )
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)  # due now
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.terminal, done.pending) == ("cancelled", True, 0)
    assert sum(received(sink, published.event_id, topic)) == done.sent == 20
    # 30 scheduled and not sent, 150 never read: all held back as cancelled.
    assert done.sent + done.held_back["cancelled"] == 200


async def test_a_paced_event_with_quiet_hours_defers_them_and_paces_their_release(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    paced(pipeline)
    topic = await make_topic(pipeline.pool, 40)
    quiet, awake = topic.user_ids[:10], topic.user_ids[10:]
    await set_preferences(pipeline.pool, quiet, "Asia/Tokyo", _window_around_now("Asia/Tokyo"))
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(throttle_per_minute=120),  # 2 a second
    )
    await fan_out_only(pipeline)
    assert await drain(pipeline.queues.delivery) == []
    await deliver_released(pipeline)
    sent = {
        d
        for d, n in zip(topic.device_ids, received(sink, published.event_id, topic), strict=True)
        if n
    }
    assert sent == set(devices_of(topic, awake))
    waiting = await status(pipeline, published.event_id)
    assert waiting.held_back == {"deferred": 10} and waiting.deferred.waiting == 10

    clock = waiting.pacing.expected_end if waiting.pacing else None
    async with pipeline.pool.acquire() as conn:  # their windows end
        await conn.execute(
            "UPDATE deferred_recipients SET release_at = now() - interval '1 second'"
        )
        await conn.execute(
            "UPDATE events SET due_at = now() - interval '1 second' WHERE id = $1",
            published.event_id,
        )
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    await fan_out_only(pipeline)
    assert await drain(pipeline.queues.delivery) == []  # paced too: nothing before its time
    released = [
        b
        for b in await schedule_of(pipeline.pool, published.event_id)
        if b["status"] == "queued" and not b["released"]
    ]
    assert sum(b["devices"] for b in released) == 10
    assert clock is not None
    # After the 30 scheduled before (an idle clock restarts at now, never earlier), at 2 a second.
    assert all(b["not_before"] >= clock for b in released)
    span = (released[-1]["not_before"] - released[0]["not_before"]).total_seconds()
    assert abs(span - (10 - released[-1]["devices"]) / 2) < 0.001
    await deliver_released(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent) == ("delivered", 40)
    assert received(sink, published.event_id, topic) == [1] * 40


@pytest.mark.parametrize("throttle", [None, 0])
async def test_an_event_without_a_rate_of_its_own_takes_its_apps_default(
    pipeline: Pipeline, throttle: int | None
) -> None:
    topic = await make_topic(pipeline.pool, 3)
    async with pipeline.pool.acquire() as conn:
        await conn.execute("UPDATE apps SET default_throttle_per_minute = 60 WHERE id = 1")
    try:
        options = PublishOptions(throttle_per_minute=throttle or None)
        published = await publish(
            pipeline.pool, pipeline.queues, NOTE, topic=topic.key, options=options
        )
        seen = await status(pipeline, published.event_id)
        assert seen.pacing is not None and seen.pacing.throttle_per_minute == 60
        mine = await publish(
            pipeline.pool,
            pipeline.queues,
            NOTE,
            topic=topic.key,
            options=PublishOptions(throttle_per_minute=6000),
        )
        assert (await status(pipeline, mine.event_id)).pacing.throttle_per_minute == 6000  # type: ignore[union-attr]
    finally:
        async with pipeline.pool.acquire() as conn:
            await conn.execute("UPDATE apps SET default_throttle_per_minute = NULL WHERE id = 1")
    await run_everything(pipeline)


def test_the_cli_paces_a_publish_and_sets_an_apps_default(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    refused = fanout(settings, "publish", "author:p", "--title", "t", "--throttle", "0")
    assert refused.returncode == 2 and "--throttle" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    published = fanout(settings, "publish", "author:p", "--title", "t", "--throttle", "120")
    assert published.returncode == 0, published.stderr
    shown = orjson.loads(fanout(settings, "status", published.stdout.strip()).stdout)
    assert shown["pacing"]["throttle_per_minute"] == 120

    app = "paced-cli"
    assert fanout(settings, "apps", "create", app).returncode == 0
    bad = fanout(settings, "apps", "settings", app, "--throttle", "-1")
    assert bad.returncode == 2 and "--throttle" in bad.stderr, bad.stderr
    changed = fanout(settings, "apps", "settings", app, "--throttle", "300")
    assert changed.returncode == 0 and "300/min" in changed.stdout, changed.stderr
    inherited = fanout(settings, "publish", "author:q", "--title", "t", "--app", app)
    assert inherited.returncode == 0, inherited.stderr
    shown = orjson.loads(fanout(settings, "status", inherited.stdout.strip()).stdout)
    assert shown["pacing"]["throttle_per_minute"] == 300
    assert "paces its events at 300/min" in fanout(settings, "apps", "show", app).stdout
    listed = orjson.loads(fanout(settings, "apps", "show", app, "--json").stdout)
    assert listed["default_throttle_per_minute"] == 300
    cleared = fanout(settings, "apps", "settings", app, "--throttle", "0")
    assert "none (unpaced)" in cleared.stdout, cleared.stderr
    assert "none (unpaced)" in fanout(settings, "apps", "settings", app).stdout
