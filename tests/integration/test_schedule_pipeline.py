"""Events held in PostgreSQL and stopped on purpose: send_at, deliver_at_local waves, quiet
hours, expires_at and cancel, on real PostgreSQL and SQS, counted at the sink.

Nothing waits on the clock: a hold comes due because a reconcile pass looks ahead, or
because the test moves its time (release_at, due_at, expires_at) into the past in the
database; a cancel happens when the fan-out or the delivery has reached a point.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from prometheus_client import REGISTRY

from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once
from fanout.runtime.worker import run_worker
from fanout.stages.fanout import plan_event
from fanout.stages.progress import load_event_status
from fanout.stages.publish import (
    PublishOptions,
    TooLateToCancel,
    cancel,
    publish,
    record_event,
)
from fanout.stages.schedule import in_quiet_window, quiet_window_end
from fanout.store import recipients
from tests.helpers import Topic, drain, make_topic, run_everything, status, wait_for

NOTE = Notification(title="New chapter")
HOUR = 3600.0


def received(sink: EmbeddedSink, event_id: int, device_ids: list[int]) -> set[int]:
    """The devices among ``device_ids`` the sink got the event on."""
    return {d for d in device_ids if sink.sink.ledger.count(d, str(event_id))}


def total_received(sink: EmbeddedSink, event_id: int, device_ids: list[int]) -> int:
    return sum(sink.sink.ledger.count(d, str(event_id)) for d in device_ids)


async def set_preferences(
    pool: asyncpg.Pool,
    user_ids: list[int],
    time_zone: str | None,
    quiet: tuple[time, time] | None = None,
) -> None:
    """What the preferences API writes (another part of #13), written directly."""
    start, end = quiet or (None, None)
    async with pool.acquire() as conn:
        await conn.executemany(
            """INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end)
               VALUES ($1, $2, $3, $4)""",
            [(u, time_zone, start, end) for u in user_ids],
        )


def devices_of(topic: Topic, users: list[int]) -> list[int]:
    """The devices of these users (make_topic gives one device per user here)."""
    return [topic.device_ids[topic.user_ids.index(u)] for u in users]


# --- send_at ------------------------------------------------------------------------------


async def test_an_event_sent_at_a_future_time_is_held_until_a_reconcile_pass_finds_it_due(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 20)
    send_at = datetime.now(UTC) + timedelta(hours=2)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(send_at=send_at),
    )
    assert (published.held_until, published.enqueued) == (send_at, False)
    assert (await status(pipeline, published.event_id)).status == "scheduled"
    assert await drain(pipeline.queues.fanout) == []  # nothing waits on the queue

    an_hour_on = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=HOUR
    )
    assert an_hour_on.events_released == 0
    assert (await status(pipeline, published.event_id)).status == "scheduled"

    three_hours_on = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=3 * HOUR
    )
    assert three_hours_on.events_released == 1
    await run_everything(pipeline)

    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.pending) == ("delivered", 20, 0)
    assert done.schedule.send_at == send_at
    assert received(sink, published.event_id, topic.device_ids) == set(topic.device_ids)


# --- deliver_at_local ---------------------------------------------------------------------

ZONES = {"Europe/Berlin": 3, "America/New_York": 2, "Asia/Tokyo": 2}


async def test_deliver_at_local_goes_out_in_waves_as_each_zone_reaches_the_time(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10)
    users = iter(topic.user_ids)
    by_zone: dict[str, list[int]] = {}
    for zone, count in ZONES.items():
        by_zone[zone] = [next(users) for _ in range(count)]
        await set_preferences(pipeline.pool, by_zone[zone], zone)
    unknown = [next(users)]  # a zone PostgreSQL and zoneinfo do not know
    await set_preferences(pipeline.pool, unknown, "Mars/Olympus_Mons")
    by_zone["UTC"] = [*users, *unknown]  # no zone set, or an unknown one: the default's
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(deliver_at_local=time(9, 0)),
    )
    assert published.held_until is not None and not published.enqueued
    held = await status(pipeline, published.event_id)
    assert held.status == "scheduled"
    waves = {wave.zones[0]: wave for wave in held.waves}
    assert set(waves) == set(by_zone)
    for zone, wave in waves.items():  # each at the next 09:00 on its own clock
        local = wave.release_at.astimezone(ZoneInfo(zone))
        assert local.time() == time(9, 0)
        assert wave.release_at - datetime.now(UTC) <= timedelta(days=1)
        assert wave.catch_all is (zone == "UTC")

    released: set[int] = set()
    for wave in sorted(held.waves, key=lambda w: w.release_at):
        await _make_due(pipeline.pool, published.event_id, wave.wave)
        report = await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
        assert report.events_released == 1
        await run_everything(pipeline)
        released |= set(devices_of(topic, by_zone[wave.zones[0]]))
        assert received(sink, published.event_id, topic.device_ids) == released
        now = await status(pipeline, published.event_id)
        assert now.terminal is (len(released) == len(topic.device_ids))

    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.pending) == ("delivered", 10, 0)
    assert total_received(sink, published.event_id, topic.device_ids) == 10  # each once
    assert {w.status for w in done.waves} == {"planned"}


async def _make_due(pool: asyncpg.Pool, event_id: int, wave_no: int) -> None:
    """The wave's time has come: its release and the event's due time moved to the past."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE event_waves SET release_at = now() - interval '1 second' "
            "WHERE event_id = $1 AND wave_no = $2",
            event_id,
            wave_no,
        )
        await conn.execute(
            "UPDATE events SET due_at = now() - interval '1 second' WHERE id = $1", event_id
        )


@pytest.mark.parametrize(
    ("zone", "publish_at", "nine_local_utc"),
    [
        (
            "Europe/Berlin",
            datetime(2026, 3, 28, 22, tzinfo=UTC),
            datetime(2026, 3, 29, 7, tzinfo=UTC),
        ),
        (
            "Europe/Berlin",
            datetime(2026, 10, 24, 22, tzinfo=UTC),
            datetime(2026, 10, 25, 8, tzinfo=UTC),
        ),
        (
            "America/New_York",
            datetime(2026, 3, 8, 4, tzinfo=UTC),
            datetime(2026, 3, 8, 13, tzinfo=UTC),
        ),
        (
            "America/New_York",
            datetime(2026, 11, 1, 3, tzinfo=UTC),
            datetime(2026, 11, 1, 14, tzinfo=UTC),
        ),
    ],
    ids=["berlin-spring", "berlin-autumn", "new-york-spring", "new-york-autumn"],
)
async def test_waves_published_the_evening_before_the_clocks_change_land_at_nine_local(
    pool: asyncpg.Pool, zone: str, publish_at: datetime, nine_local_utc: datetime
) -> None:
    topic = await make_topic(pool, 4)
    await set_preferences(pool, topic.user_ids[:2], "Europe/Berlin")
    await set_preferences(pool, topic.user_ids[2:], "America/New_York")
    published = await record_event(
        pool,
        NOTE,
        topic=topic.key,
        options=PublishOptions(deliver_at_local=time(9, 0)),
        now=publish_at,
    )
    found = await load_event_status(pool, published.event_id)
    assert found is not None
    release = {w.zones[0]: w.release_at for w in found.waves}
    assert release[zone] == nine_local_utc
    assert release["UTC"] == publish_at.replace(hour=9) + timedelta(
        days=1 if publish_at.hour >= 9 else 0
    )


# --- quiet hours --------------------------------------------------------------------------


async def test_the_page_query_applies_quiet_windows_in_each_users_zone(pool: asyncpg.Pool) -> None:
    """22:00-08:00 crosses midnight; 01:30 in Berlin on the night it springs forward is
    inside it, and the window ends at 08:00 CEST (06:00 UTC), as the pure rule says."""
    topic = await make_topic(pool, 4)
    berlin_night, berlin_lunch, no_zone, tokyo_night = topic.user_ids
    night, lunch = (time(22), time(8)), (time(13), time(14))
    await set_preferences(pool, [berlin_night], "Europe/Berlin", night)
    await set_preferences(pool, [berlin_lunch], "Europe/Berlin", lunch)
    await set_preferences(pool, [no_zone], None, night)  # no zone: quiet hours never apply
    await set_preferences(pool, [tokyo_night], "Asia/Tokyo", night)  # 09:30 there
    at = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    event = await record_event(pool, NOTE, topic=topic.key)
    release_at: dict[int, datetime] = {}

    async def held(policy: str) -> dict[int, str | None]:
        async with pool.acquire() as conn:
            rows = await recipients.topic_recipients_page(
                conn,
                topic_id=topic.id,
                after_user_id=0,
                before_user_id=2**63 - 1,
                limit=100,
                event_id=event.event_id,
                category=None,
                page_filter=recipients.PageFilter(quiet_hours=policy),
                at=at,
            )
        release_at.update({r["user_id"]: r["release_at"] for r in rows if r["release_at"]})
        return {row["user_id"]: row["held_back"] for row in rows}

    assert await held("ignore") == dict.fromkeys(topic.user_ids)
    assert await held("drop") == {**dict.fromkeys(topic.user_ids), berlin_night: "quiet_hours"}
    assert await held("defer") == {**dict.fromkeys(topic.user_ids), berlin_night: "deferred"}
    assert release_at == {berlin_night: datetime(2026, 3, 29, 6, 0, tzinfo=UTC)}
    # Recorded by the stage, one statement per page; a page read again records nobody twice.
    for _ in range(2):
        async with pool.acquire() as conn:
            await recipients.defer_recipients(
                conn,
                event_id=event.event_id,
                user_ids=list(release_at),
                release_at=list(release_at.values()),
            )
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM deferred_recipients") == 1


def _window_around_now(zone: str) -> tuple[time, time]:
    """A quiet window that the zone's clock is inside now (it may cross midnight)."""
    local = datetime.now(ZoneInfo(zone))
    return (local - timedelta(hours=1)).time(), (local + timedelta(hours=1)).time()


async def test_recipients_in_their_quiet_hours_are_deferred_until_their_window_ends(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 10)
    quiet, awake = topic.user_ids[:4], topic.user_ids[4:]
    await set_preferences(pipeline.pool, quiet, "Asia/Tokyo", _window_around_now("Asia/Tokyo"))
    published = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    await run_everything(pipeline)

    waiting = await status(pipeline, published.event_id)
    assert received(sink, published.event_id, topic.device_ids) == set(devices_of(topic, awake))
    assert waiting.held_back == {"deferred": 4}
    assert (waiting.deferred.waiting, waiting.terminal) == (4, False)
    assert waiting.deferred.next_release_at is not None
    assert waiting.deferred.next_release_at > datetime.now(UTC)
    assert waiting.status == "fanning_out"

    # Their windows end: the reconciler releases exactly them as a follow-up fan-out.
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            "UPDATE deferred_recipients SET release_at = now() - interval '1 second'"
        )
        await conn.execute(
            "UPDATE events SET due_at = now() - interval '1 second' WHERE id = $1",
            published.event_id,
        )
    report = await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    assert report.events_released == 1
    await run_everything(pipeline)

    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.pending) == ("delivered", 10, 0)
    assert (done.deferred.waiting, done.deferred.released) == (0, 4)
    assert [w.kind for w in done.waves] == ["deferred"]
    assert total_received(sink, published.event_id, topic.device_ids) == 10


async def test_quiet_hours_drop_holds_them_back_for_good(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 6)
    window = _window_around_now("Europe/Berlin")
    await set_preferences(pipeline.pool, topic.user_ids[:2], "Europe/Berlin", window)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(quiet_hours="drop"),
    )
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.held_back) == ("delivered", 4, {"quiet_hours": 2})
    assert done.terminal and done.deferred.waiting == 0
    assert received(sink, published.event_id, topic.device_ids) == set(topic.device_ids[2:])


# --- expires_at ---------------------------------------------------------------------------


async def test_batches_whose_event_expires_while_they_wait_are_not_sent(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline)
    topic = await make_topic(pipeline.pool, 60)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(expires_at=datetime.now(UTC) + timedelta(hours=1)),
    )
    await _fan_out_only(pipeline)
    queued = await drain(pipeline.queues.delivery)
    assert len(queued) >= 2
    expired_before = _held_back_metric("expired")
    async with pipeline.pool.acquire() as conn:  # the hour passes while they wait
        await conn.execute(
            "UPDATE events SET expires_at = now() - interval '1 second' WHERE id = $1",
            published.event_id,
        )
    for body in queued:
        await pipeline.handle(body)

    done = await status(pipeline, published.event_id)
    assert received(sink, published.event_id, topic.device_ids) == set()
    assert (done.status, done.terminal, done.sent, done.pending) == ("expired", True, 0, 0)
    assert done.held_back == {"expired": 60}
    assert _held_back_metric("expired") - expired_before == 60


async def test_a_fan_out_that_finds_its_event_expired_stops_and_counts_the_rest(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 30)
    published = await record_event(
        pipeline.pool,
        NOTE,
        topic=topic.key,
        options=PublishOptions(expires_at=datetime.now(UTC) + timedelta(hours=1)),
    )
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            "UPDATE events SET expires_at = now() - interval '1 second' WHERE id = $1",
            published.event_id,
        )
    await plan_event(published.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    # Subscribers not read, counted as such (not their devices).
    assert (done.status, done.held_back, done.sent) == ("expired", {"expired": 30}, 0)
    assert received(sink, published.event_id, topic.device_ids) == set()


# --- cancel -------------------------------------------------------------------------------


def small(pipeline: Pipeline) -> None:
    """One shard of many small pages and batches."""
    pipeline.settings = pipeline.settings.model_copy(
        update={"batch_max_bytes": 1024, "page_size": 10, "shard_size": 10_000}
    )


async def _fan_out_only(pipeline: Pipeline) -> None:
    """Run the fan-out queue until empty; delivery batches stay on their queue."""
    while bodies := await drain(pipeline.queues.fanout, idle_polls=1):
        for body in bodies:
            await pipeline.handle(body)


def _held_back_metric(reason: str) -> float:
    """Every app's recipients held back for ``reason`` (the counter is labelled by app)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "fanout_audience_held_back_total" and sample.labels["reason"] == reason
    )


async def test_cancel_during_fan_out_stops_at_the_next_page(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline)
    topic = await make_topic(pipeline.pool, 100)
    published = await record_event(pipeline.pool, NOTE, topic=topic.key)
    delivery = pipeline.queues.delivery
    send_many = delivery.send_many
    sends = 0

    async def cancel_once_the_first_page_is_checkpointed(bodies: list[str]) -> object:
        """The second send of the fan-out: the first page's batches are recorded by now.
        Deliver them, then cancel; this page's batches go on the queue all the same."""
        nonlocal sends
        sends += 1
        if sends == 2:
            for body in await drain(delivery):
                await pipeline.handle(body)
            assert await cancel(pipeline.pool, published.event_id) == "fanning_out"
        return await send_many(bodies)

    delivery.send_many = cancel_once_the_first_page_is_checkpointed  # type: ignore[method-assign]
    try:
        await plan_event(published.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    finally:
        delivery.send_many = send_many  # type: ignore[method-assign]
    await run_everything(pipeline)

    done = await status(pipeline, published.event_id)
    got = total_received(sink, published.event_id, topic.device_ids)
    assert (done.status, done.terminal, done.pending) == ("cancelled", True, 0)
    assert sends == 2  # stopped at the checkpoint after the cancel: no third page
    assert 0 < got == done.sent < 100
    # Devices of batches queued before the cancel, and subscribers never read.
    assert done.sent + done.held_back["cancelled"] == 100
    assert done.schedule.cancelled_at is not None


async def test_cancel_during_delivery_sends_no_batch_not_yet_sent(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    small(pipeline)
    topic = await make_topic(pipeline.pool, 160, devices_per_user=(1, 2))
    published = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    await _fan_out_only(pipeline)
    queued = await drain(pipeline.queues.delivery)
    assert len(queued) >= 4
    for body in queued[:2]:
        await pipeline.handle(body)
    before = total_received(sink, published.event_id, topic.device_ids)
    cancelled_before = _held_back_metric("cancelled")

    assert await cancel(pipeline.pool, published.event_id) == "fanned_out"
    for body in queued[2:]:
        await pipeline.handle(body)

    done = await status(pipeline, published.event_id)
    assert total_received(sink, published.event_id, topic.device_ids) == before == done.sent
    assert (done.status, done.terminal, done.pending) == ("cancelled", True, 0)
    assert done.sent + done.held_back["cancelled"] == done.devices == 240
    assert _held_back_metric("cancelled") - cancelled_before == done.held_back["cancelled"]
    # Cancelling again changes nothing.
    assert await cancel(pipeline.pool, published.event_id) == "cancelled"


async def test_cancel_ends_a_held_event_at_once_and_is_too_late_once_delivered(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 5)
    later = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(send_at=datetime.now(UTC) + timedelta(days=3)),
    )
    assert await cancel(pipeline.pool, later.event_id) == "cancelled"
    report = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=7 * 24 * HOUR
    )
    assert report.events_released == 0
    assert (await status(pipeline, later.event_id)).terminal

    now = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    await run_everything(pipeline)
    assert (await status(pipeline, now.event_id)).status == "delivered"
    with pytest.raises(TooLateToCancel):
        await cancel(pipeline.pool, now.event_id)
    assert await cancel(pipeline.pool, 10**12) is None


async def test_cancel_drops_recipients_still_deferred(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 5)
    window = _window_around_now("America/New_York")
    await set_preferences(pipeline.pool, topic.user_ids[:2], "America/New_York", window)
    published = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    await run_everything(pipeline)
    assert (await status(pipeline, published.event_id)).deferred.waiting == 2

    assert await cancel(pipeline.pool, published.event_id) == "fanning_out"
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)  # due at once
    await run_everything(pipeline)

    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.deferred.dropped) == ("cancelled", 3, 2)
    assert received(sink, published.event_id, topic.device_ids) == set(topic.device_ids[2:])


# --- a lost batch re-read ------------------------------------------------------------------


async def test_a_lost_batch_is_reread_without_the_recipients_it_held_back(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 30)
    quiet = topic.user_ids[10:15]  # in the middle of the batch's range of users
    await set_preferences(pipeline.pool, quiet, "Asia/Tokyo", _window_around_now("Asia/Tokyo"))
    published = await publish(pipeline.pool, pipeline.queues, NOTE, topic=topic.key)
    await _fan_out_only(pipeline)
    lost = await drain(pipeline.queues.delivery)  # the queue loses every batch
    assert lost

    report = await reconcile_once(
        pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=24 * HOUR
    )
    assert report.batches_resent == len(lost)
    await run_everything(pipeline)
    awake = set(topic.device_ids) - set(devices_of(topic, quiet))
    assert received(sink, published.event_id, topic.device_ids) == awake

    async with pipeline.pool.acquire() as conn:  # their windows end
        await conn.execute("UPDATE deferred_recipients SET release_at = now()")
        await conn.execute("UPDATE events SET due_at = now() WHERE id = $1", published.event_id)
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent) == ("delivered", 30)
    assert total_received(sink, published.event_id, topic.device_ids) == 30  # each once


async def test_an_event_that_expires_while_recipients_wait_ends_without_them(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 6)
    window = _window_around_now("Asia/Tokyo")
    await set_preferences(pipeline.pool, topic.user_ids[:2], "Asia/Tokyo", window)
    expires_at = datetime.now(UTC) + timedelta(minutes=30)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(expires_at=expires_at),
    )
    await run_everything(pipeline)
    waiting = await status(pipeline, published.event_id)
    assert waiting.deferred.waiting == 2 and not waiting.terminal
    async with pipeline.pool.acquire() as conn:  # due at its expiry, before their windows end
        due_at = await conn.fetchval("SELECT due_at FROM events WHERE id = $1", published.event_id)
        assert due_at == expires_at
        await conn.execute(
            "UPDATE events SET expires_at = now() - interval '1 second', due_at = now() "
            "WHERE id = $1",
            published.event_id,
        )
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    done = await status(pipeline, published.event_id)
    assert (done.status, done.sent, done.deferred.dropped) == ("partially_delivered", 4, 2)
    assert received(sink, published.event_id, topic.device_ids) == set(topic.device_ids[2:])


# --- the worker's own reconciler -----------------------------------------------------------


async def test_a_running_worker_releases_a_held_event_when_it_comes_due(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    pipeline.settings = pipeline.settings.model_copy(update={"reconcile_interval_seconds": 0.2})
    topic = await make_topic(pipeline.pool, 25)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        topic=topic.key,
        options=PublishOptions(send_at=datetime.now(UTC) + timedelta(days=1)),
    )
    stopping = asyncio.Event()
    worker = asyncio.create_task(run_worker(pipeline.settings, stopping, pipeline=pipeline))
    try:
        async with pipeline.pool.acquire() as conn:  # the day passes
            await conn.execute("UPDATE events SET due_at = now() WHERE id = $1", published.event_id)

        async def delivered() -> bool:
            return (await status(pipeline, published.event_id)).status == "delivered"

        await wait_for(delivered, "the worker's reconciler released the event")
    finally:
        stopping.set()
        await worker
    assert total_received(sink, published.event_id, topic.device_ids) == 25


async def test_a_one_to_one_send_at_local_time_is_one_wave_in_the_users_zone(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 1)
    await set_preferences(pipeline.pool, topic.user_ids, "Asia/Tokyo")
    async with pipeline.pool.acquire() as conn:
        external_id = await conn.fetchval(
            "SELECT external_id FROM users WHERE id = $1", topic.user_ids[0]
        )
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        NOTE,
        user=external_id,
        options=PublishOptions(deliver_at_local=time(9, 0)),
    )
    held = await status(pipeline, published.event_id)
    assert [w.zones for w in held.waves] == [["Asia/Tokyo"]]
    await _make_due(pipeline.pool, published.event_id, held.waves[0].wave)
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    assert (await status(pipeline, published.event_id)).status == "delivered"
    assert total_received(sink, published.event_id, topic.device_ids) == 1


async def test_a_one_to_one_send_to_a_user_in_their_quiet_hours_waits_for_its_end(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    topic = await make_topic(pipeline.pool, 1)
    window = _window_around_now("Europe/Berlin")
    await set_preferences(pipeline.pool, topic.user_ids, "Europe/Berlin", window)
    async with pipeline.pool.acquire() as conn:
        external_id = await conn.fetchval(
            "SELECT external_id FROM users WHERE id = $1", topic.user_ids[0]
        )
    published = await publish(pipeline.pool, pipeline.queues, NOTE, user=external_id)
    await run_everything(pipeline)
    waiting = await status(pipeline, published.event_id)
    assert (waiting.held_back, waiting.deferred.waiting, waiting.terminal) == (
        {"deferred": 1},
        1,
        False,
    )
    assert total_received(sink, published.event_id, topic.device_ids) == 0

    async with pipeline.pool.acquire() as conn:
        await conn.execute("UPDATE deferred_recipients SET release_at = now()")
        await conn.execute("UPDATE events SET due_at = now() WHERE id = $1", published.event_id)
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    await run_everything(pipeline)
    assert (await status(pipeline, published.event_id)).status == "delivered"
    assert total_received(sink, published.event_id, topic.device_ids) == 1


WINDOWS = [(time(22), time(8)), (time(1), time(3)), (time(2, 30), time(4)), (time(9), time(17))]
NIGHTS = [  # the evenings before the clocks change, UTC
    ("Europe/Berlin", datetime(2026, 3, 28, 18, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2026, 10, 24, 18, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 3, 7, 23, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 10, 31, 23, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "evening"), NIGHTS, ids=lambda v: str(v))
async def test_sql_and_python_agree_on_quiet_windows_through_the_nights_the_clocks_change(
    pool: asyncpg.Pool, zone: str, evening: datetime
) -> None:
    """Every 20 minutes for 18 hours, windows that cross midnight, that begin or end in
    the skipped or repeated hour: the page statement holds exactly the users the pure
    rule says, deferred until the instant quiet_window_end says."""
    topic = await make_topic(pool, len(WINDOWS))
    for user_id, window in zip(topic.user_ids, WINDOWS, strict=True):
        await set_preferences(pool, [user_id], zone, window)
    event = await record_event(pool, NOTE, topic=topic.key)
    tz = ZoneInfo(zone)
    for step in range(0, 18 * 60, 20):
        at = evening + timedelta(minutes=step)
        async with pool.acquire() as conn:
            rows = await recipients.topic_recipients_page(
                conn,
                topic_id=topic.id,
                after_user_id=0,
                before_user_id=2**63 - 1,
                limit=100,
                event_id=event.event_id,
                category=None,
                page_filter=recipients.PageFilter(quiet_hours="defer"),
                at=at,
            )
        for row, (start, end) in zip(rows, WINDOWS, strict=True):
            local = at.astimezone(tz).replace(tzinfo=None)
            inside = in_quiet_window(local.time(), start, end)
            assert (row["held_back"] == "deferred") is inside, (at, start, end)
            if inside:
                assert row["release_at"] == quiet_window_end(local, end, tz), (at, start, end)
