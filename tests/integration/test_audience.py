"""The audience rules in the fan-out's page query, on real PostgreSQL and SQS: opt-outs
(global and by category), topic mutes, frequency caps; who is held back gets nothing and
is counted once, by reason."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from fanout.config import Settings
from fanout.local.demo import TIME_ZONES, AudienceMix, seed_audience
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.runtime.pipeline import Pipeline
from fanout.stages.delivery import deliver_batch
from fanout.stages.fanout import plan_event, run_shard
from fanout.stages.progress import load_event_status
from fanout.stages.publish import record_event
from fanout.store import audience, recipients
from fanout.store.apps import DEFAULT_APP_ID
from tests.helpers import Topic, batches_of, device_counts, drain, make_topic

NEWS = Notification(title="Breaking", category="news")
PLAIN = Notification(title="Hello")
HOUR = 3600


def small(settings: Settings, **changes: object) -> Settings:
    """Tiny shards, pages and batches, so a small topic crosses every boundary."""
    return settings.model_copy(
        update={"shard_size": 17, "page_size": 5, "batch_max_bytes": 2048, **changes}
    )


async def fan_out(
    topic: Topic, note: Notification, pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> tuple[int, set[int]]:
    """Publish to the topic and fan it out whole; the event and the devices in batches."""
    event = await record_event(pool, note, topic=topic.key)
    await plan_event(event.event_id, pool, queues, settings)
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event.event_id, task.shard, pool, queues, settings)
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert set(counts.values()) <= {1}
    return event.event_id, set(counts)


async def held_back(pool: asyncpg.Pool, event_id: int) -> dict[str, int]:
    status = await load_event_status(pool, event_id)
    assert status is not None
    return status.held_back


async def externals(pool: asyncpg.Pool, user_ids: Sequence[int]) -> list[str]:
    rows = await pool.fetch(
        "SELECT external_id FROM users WHERE id = ANY($1::bigint[]) ORDER BY id", list(user_ids)
    )
    return [r["external_id"] for r in rows]


async def set_preferences(pool: asyncpg.Pool, *preferences: audience.Preferences) -> None:
    async with pool.acquire() as conn:
        await audience.upsert_preferences(conn, app_id=DEFAULT_APP_ID, preferences=preferences)


def devices_of(topic: Topic, users: Sequence[int]) -> set[int]:
    """The devices of these subscribers (make_topic gives user i device i: one each)."""
    index = {u: i for i, u in enumerate(topic.user_ids)}
    return {topic.device_ids[index[u]] for u in users}


async def test_global_and_category_opt_outs_are_held_back_and_counted(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 40)
    users = await externals(pool, topic.user_ids)
    await set_preferences(
        pool,
        *(audience.Preferences(user=u, opted_out=True) for u in users[:5]),
        *(audience.Preferences(user=u, opted_out_categories=("news",)) for u in users[5:12]),
        *(audience.Preferences(user=u, opted_out_categories=("sports",)) for u in users[12:15]),
        *(audience.Preferences(user=u, time_zone="Asia/Tokyo") for u in users[15:20]),
    )

    news, news_devices = await fan_out(topic, NEWS, pool, queues, small(settings))
    plain, plain_devices = await fan_out(topic, PLAIN, pool, queues, small(settings))

    assert news_devices == devices_of(topic, topic.user_ids[12:])
    assert await held_back(pool, news) == {"opted_out": 12}
    # Without a category only the global opt-out applies.
    assert plain_devices == devices_of(topic, topic.user_ids[5:])
    assert await held_back(pool, plain) == {"opted_out": 5}
    status = await load_event_status(pool, news)
    assert status is not None and status.recipients == 28


async def test_a_muted_topic_is_held_back_until_the_mute_ends(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 12)
    other = await make_topic(pool, 1)
    now = datetime.now(UTC)
    mutes = {
        topic.user_ids[0]: (topic.id, None),  # until unmuted
        topic.user_ids[1]: (topic.id, now + timedelta(hours=1)),  # still in force
        topic.user_ids[2]: (topic.id, now - timedelta(hours=1)),  # over
        topic.user_ids[3]: (other.id, None),  # another topic
    }
    async with pool.acquire() as conn:
        for user_id, (topic_id, until) in mutes.items():
            await audience.mute_topic(conn, user_id=user_id, topic_id=topic_id, until=until)

    event, devices = await fan_out(topic, PLAIN, pool, queues, small(settings))

    assert devices == devices_of(topic, topic.user_ids[2:])
    assert await held_back(pool, event) == {"muted": 2}


async def test_a_cap_of_n_lets_exactly_n_pushes_through_then_holds_back(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 9)
    async with pool.acquire() as conn:
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="*", max_sends=2, window_seconds=HOUR
        )

    reached = [await fan_out(topic, PLAIN, pool, queues, small(settings)) for _ in range(3)]

    everyone = set(topic.device_ids)
    assert [devices for _, devices in reached] == [everyone, everyone, set()]
    assert [await held_back(pool, event) for event, _ in reached] == [{}, {}, {"capped": 9}]
    # One push recorded per user per event that reached them, none for the capped one.
    sends = await pool.fetch("SELECT user_id, count(*) FROM user_sends GROUP BY user_id")
    assert {r["count"] for r in sends} == {2} and len(sends) == 9


async def test_a_category_cap_counts_only_its_category(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 6)
    async with pool.acquire() as conn:
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="news", max_sends=1, window_seconds=HOUR
        )

    _, first_news = await fan_out(topic, NEWS, pool, queues, small(settings))
    _, plain = await fan_out(topic, PLAIN, pool, queues, small(settings))
    second, second_news = await fan_out(topic, NEWS, pool, queues, small(settings))

    assert first_news == plain == set(topic.device_ids)
    assert second_news == set()
    assert await held_back(pool, second) == {"capped": 6}
    # Uncategorised pushes are not recorded: no cap counts them.
    assert await pool.fetchval("SELECT count(*) FROM user_sends WHERE category IS NULL") == 0


async def test_the_cap_window_rolls_a_send_older_than_the_window_no_longer_counts(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 3)
    inside, edge, outside = topic.user_ids
    async with pool.acquire() as conn:
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="*", max_sends=1, window_seconds=HOUR
        )
    # The clock runs on between these inserts and the page query, which only moves sends
    # out of the window: 'inside' keeps five minutes of margin, the others are out already.
    await pool.executemany(
        "INSERT INTO user_sends (user_id, event_id, category, sent_at) "
        "VALUES ($1, 0, NULL, now() - make_interval(secs => $2))",
        [(inside, HOUR - 300), (edge, HOUR), (outside, HOUR + 1)],
    )

    event, devices = await fan_out(topic, PLAIN, pool, queues, small(settings))

    assert devices == devices_of(topic, [edge, outside])
    assert await held_back(pool, event) == {"capped": 1}


async def test_the_first_rule_names_the_reason_and_a_user_counts_once(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 4, devices_per_user=(1, 0))  # users 1 and 3: no device
    users = await externals(pool, topic.user_ids)
    await set_preferences(pool, *(audience.Preferences(user=u, opted_out=True) for u in users))
    async with pool.acquire() as conn:
        for user_id in topic.user_ids:
            await audience.mute_topic(conn, user_id=user_id, topic_id=topic.id, until=None)

    event, devices = await fan_out(topic, PLAIN, pool, queues, small(settings))

    # Opted out and muted: counted once, as opted_out; those without a device not at all
    # (they were kept from nothing).
    assert devices == set()
    assert await held_back(pool, event) == {"opted_out": 2}
    status = await load_event_status(pool, event)
    assert status is not None and status.status == "no_recipients"


async def test_a_resumed_shard_counts_its_held_back_users_once(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 120)
    users = await externals(pool, topic.user_ids)
    await set_preferences(pool, *(audience.Preferences(user=u, opted_out=True) for u in users[::3]))
    async with pool.acquire() as conn:
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="*", max_sends=5, window_seconds=HOUR
        )
    event = await record_event(pool, PLAIN, topic=topic.key)
    tuned = small(settings, shard_size=10_000, batch_max_bytes=1024)  # ~25 devices a batch
    budget = itertools.chain([60.0] * 11, itertools.repeat(1.0))  # runs short on page 12

    [stopped] = await plan_event(
        event.event_id, pool, queues, tuned, time_left=lambda: next(budget)
    )
    assert not stopped.finished and 0 < sum(stopped.held_back.values()) < 40
    assert [decode(b) for b in await drain(queues.fanout)] == [FanoutTask(event.event_id, 0)]
    resumed = await run_shard(event.event_id, 0, pool, queues, tuned)
    again = await run_shard(event.event_id, 0, pool, queues, tuned)  # a redelivered copy

    assert resumed.finished and again.already_done
    assert resumed.held_back == {"opted_out": 40}
    assert await held_back(pool, event.event_id) == {"opted_out": 40}
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert set(counts) == devices_of(topic, [u for i, u in enumerate(topic.user_ids) if i % 3])
    assert await pool.fetchval(
        "SELECT count(*) = count(DISTINCT user_id) AND count(*) = 80 FROM user_sends"
    )


async def test_a_one_to_one_send_respects_the_opt_out(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 1)
    [user] = await externals(pool, topic.user_ids)
    await set_preferences(pool, audience.Preferences(user=user, opted_out_categories=("news",)))

    event = await record_event(pool, NEWS, user=user)
    await plan_event(event.event_id, pool, queues, settings)

    assert batches_of(await drain(queues.delivery)) == []
    assert await held_back(pool, event.event_id) == {"opted_out": 1}


async def test_a_lost_batch_re_read_holds_back_the_same_users(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic = await make_topic(pool, 10)
    users = await externals(pool, topic.user_ids)
    await set_preferences(pool, audience.Preferences(user=users[4], opted_out=True))
    async with pool.acquire() as conn:
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="*", max_sends=1, window_seconds=HOUR
        )
    event, devices = await fan_out(topic, PLAIN, pool, queues, settings)

    async with pool.acquire() as conn:
        rows = await recipients.batch_recipients(
            conn,
            topic_id=topic.id,
            first_user_id=topic.user_ids[0],
            last_user_id=topic.user_ids[-1],
            event_id=event,
            category=None,
        )
    re_read = {int(r["wire"].split(",")[0][1:]) for r in rows if r["wire"] is not None}
    # Its own sends (now recorded, at the cap) do not hold anyone back from it.
    assert re_read == devices == devices_of(topic, topic.user_ids[:4] + topic.user_ids[5:])


@pytest.mark.parametrize("category", ["news", None])
async def test_the_sink_receives_exactly_the_users_not_held_back(
    pipeline: Pipeline, sink: EmbeddedSink, category: str | None
) -> None:
    pool = pipeline.pool
    topic = await make_topic(pool, 50, devices_per_user=(1, 2))
    users = await externals(pool, topic.user_ids)
    await set_preferences(
        pool,
        *(audience.Preferences(user=u, opted_out=True) for u in users[0:5]),
        *(audience.Preferences(user=u, opted_out_categories=("news",)) for u in users[5:10]),
    )
    async with pool.acquire() as conn:
        for user_id in topic.user_ids[10:15]:
            await audience.mute_topic(conn, user_id=user_id, topic_id=topic.id, until=None)
        await audience.put_frequency_cap(
            conn, app_id=DEFAULT_APP_ID, category="*", max_sends=1, window_seconds=HOUR
        )
    await pool.executemany(
        "INSERT INTO user_sends (user_id, event_id, category) VALUES ($1, 0, NULL)",
        [(u,) for u in topic.user_ids[15:20]],
    )
    note = Notification(title="Everyone?", category=category)

    event = await record_event(pool, note, topic=topic.key)
    await plan_event(event.event_id, pool, pipeline.queues, pipeline.settings)
    for batch in batches_of(await drain(pipeline.queues.delivery)):
        await deliver_batch(batch, pool, pipeline.queues, pipeline.providers, pipeline.settings)

    opted_out = 10 if category else 5
    expected_users = topic.user_ids[opted_out:10] + topic.user_ids[20:]
    expected = await pool.fetchval(
        "SELECT count(*) FROM devices WHERE user_id = ANY($1::bigint[])", expected_users
    )
    ledger = sink.sink.ledger
    assert (ledger.unique, ledger.duplicates) == (expected, 0)
    status = await load_event_status(pool, event.event_id)
    assert status is not None and status.status == "delivered"
    assert status.sent == status.devices == expected
    assert status.recipients == len(expected_users)
    assert status.held_back == {"opted_out": opted_out, "muted": 5, "capped": 5}


async def test_the_demo_mix_seeds_time_zones_and_quiet_hours_covering_now(
    pool: asyncpg.Pool,
) -> None:
    topic = await make_topic(pool, 200)
    async with pool.acquire() as conn:
        await seed_audience(
            conn,
            topic=topic.key,
            first_user_id=topic.user_ids[0],
            last_user_id=topic.user_ids[-1],
            mix=AudienceMix(),
        )
    # A window may cross midnight (22:00-01:00): then "now" is after its start or before
    # its end. The hour can turn between seeding and this query: the window runs from an
    # hour before the seeded hour to two after, so it still covers now.
    counts = await pool.fetchrow(
        """SELECT count(DISTINCT time_zone) AS zones,
                  count(*) FILTER (WHERE quiet_start IS NOT NULL) AS quiet,
                  count(*) FILTER (WHERE CASE
                      WHEN quiet_start < quiet_end
                      THEN (now() AT TIME ZONE time_zone)::time >= quiet_start
                           AND (now() AT TIME ZONE time_zone)::time < quiet_end
                      ELSE (now() AT TIME ZONE time_zone)::time >= quiet_start
                           OR (now() AT TIME ZONE time_zone)::time < quiet_end
                      END) AS quiet_now
           FROM user_preferences"""
    )
    assert counts["zones"] == len(TIME_ZONES)
    assert counts["quiet"] == counts["quiet_now"] == 40  # 20% of 200
    assert await pool.fetchval("SELECT count(*) FROM topic_mutes") == 10
