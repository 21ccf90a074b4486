"""Sources on real PostgreSQL and SQS: a follow table created as an application would, an
event on ``author:7`` fanned out to exactly the followers in it who have devices (read
once, paged and sharded as subscriptions are), a query that would scan the table refused
naming the sequential scan."""

from __future__ import annotations

import secrets
from datetime import time

import asyncpg
import pytest

from fanout.config import Settings
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.sources import SourceRefused, check_source
from fanout.stages.fanout import plan_event, run_shard
from fanout.stages.progress import load_event_status
from fanout.stages.publish import InvalidPublishOption, PublishOptions, record_event
from fanout.store import sources
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.recipients import PageFilter
from fanout.tags import compile_filter
from tests.helpers import Topic, batches_of, device_counts, drain, make_topic

PLAIN = Notification(title="New chapter")
FOLLOWERS = "SELECT follower_id::text AS user_id FROM books.follows WHERE author_id = :key::bigint"


async def follow_table(pool: asyncpg.Pool) -> None:
    """The application's own table, with the index an application would give it."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(2525)")  # other tests create it too
        try:
            await conn.execute(
                """CREATE SCHEMA IF NOT EXISTS books;
                   CREATE TABLE IF NOT EXISTS books.follows (
                       author_id bigint NOT NULL, follower_id bigint NOT NULL);
                   CREATE INDEX IF NOT EXISTS follows_by_author ON books.follows (author_id);
                   CREATE TABLE IF NOT EXISTS books.unindexed_follows (
                       author_id bigint NOT NULL, follower_id bigint NOT NULL);"""
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(2525)")


async def add_source(pool: asyncpg.Pool, settings: Settings, prefix: str, query: str) -> None:
    async with pool.acquire() as conn:
        bound = await check_source(
            conn,
            query=query,
            user_column="user_id",
            sample_key="7",
            time_limit=settings.source_check_timeout_seconds,
        )
        await sources.put_source(
            conn, app_id=DEFAULT_APP_ID, prefix=prefix, query=bound, user_column="user_id"
        )


async def followers(pool: asyncpg.Pool, author: int, users: Topic) -> set[int]:
    """Every other user of ``users`` follows ``author`` (by their external id, a number as
    the app knows them), with some followers fanout has never heard of; returns the devices
    of the followers fanout knows."""
    # The app's user ids are numbers: these users get numeric external ids of their own.
    salt = secrets.randbelow(1000)
    await pool.execute(
        "UPDATE users SET external_id = (id * 1000 + $2)::text WHERE id = ANY($1::bigint[])",
        users.user_ids,
        salt,
    )
    numeric = {u: u * 1000 + salt for u in users.user_ids}
    following = users.user_ids[::2]
    unknown = [secrets.randbelow(2**53) for _ in range(5)]  # no fanout user: no device
    await pool.executemany(
        "INSERT INTO books.follows (author_id, follower_id) VALUES ($1, $2)",
        [(author, numeric[u]) for u in following] + [(author, x) for x in unknown],
    )
    await pool.executemany(  # another author's followers: not of this audience
        "INSERT INTO books.follows (author_id, follower_id) VALUES ($1, $2)",
        [(author + 1, numeric[u]) for u in users.user_ids[1::2]],
    )
    devices = dict(
        await pool.fetch(
            "SELECT user_id, id FROM devices WHERE user_id = ANY($1::bigint[])", following
        )
    )
    return set(devices.values())


async def fan_out(
    topic: str, pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> tuple[int, list[str]]:
    event = await record_event(pool, PLAIN, topic=topic)
    await plan_event(event.event_id, pool, queues, settings)
    await plan_event(event.event_id, pool, queues, settings)  # redelivered: reads nothing again
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event.event_id, task.shard, pool, queues, settings)
    return event.event_id, await drain(queues.delivery)


async def test_an_event_on_a_sourced_topic_reaches_exactly_the_followers_with_devices(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    await follow_table(pool)
    await add_source(pool, settings, "author:", FOLLOWERS)
    author = secrets.randbelow(2**40)
    users = await make_topic(pool, 40)  # users with a device each (their own topic aside)
    chosen = await followers(pool, author, users)
    settings = settings.model_copy(update={"shard_size": 7, "page_size": 3})

    event_id, bodies = await fan_out(f"author:{author}", pool, queues, settings)

    counts = device_counts(batches_of(bodies))
    assert set(counts) == chosen and set(counts.values()) == {1}
    members = await pool.fetchval(
        "SELECT count(*) FROM event_members WHERE event_id = $1", event_id
    )
    assert members == len(chosen)
    status = await load_event_status(pool, event_id)
    assert status is not None and status.held_back == {}


async def test_a_lost_batch_of_a_sourced_event_is_read_again_from_its_members(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    await follow_table(pool)
    await add_source(pool, settings, "author:", FOLLOWERS)
    author = secrets.randbelow(2**40)
    users = await make_topic(pool, 10)
    chosen = await followers(pool, author, users)
    event_id, _ = await fan_out(f"author:{author}", pool, queues, settings)
    await pool.execute("DELETE FROM books.follows WHERE author_id = $1", author)  # unfollowed

    # A batch's message lost: its devices are re-read from PostgreSQL, from the members
    # read when the event was planned (the audience is fixed for the event's life).
    topic_id = await pool.fetchval("SELECT topic_id FROM events WHERE id = $1", event_id)
    async with pool.acquire() as conn:
        rows = await sources.member_batch_recipients(
            conn,
            topic_id=topic_id,
            first_user_id=0,
            last_user_id=2**62,
            event_id=event_id,
            category=None,
            page_filter=PageFilter(),
        )
    assert {int(r["wire"].split(",")[0].strip("[")) for r in rows if r["wire"]} == chosen


async def test_an_event_whose_key_the_source_cannot_read_fails_saying_why(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    await follow_table(pool)
    await add_source(pool, settings, "author:", FOLLOWERS)
    event_id, bodies = await fan_out("author:abc", pool, queues, settings)
    assert bodies == []
    status = await load_event_status(pool, event_id)
    assert status is not None and status.status == "failed"
    assert status.last_error is not None
    assert status.last_error.startswith("its source could not be read: invalid input syntax")


async def test_local_time_delivery_is_refused_on_a_sourced_topic(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await follow_table(pool)
    await add_source(pool, settings, "author:", FOLLOWERS)
    local = PublishOptions(deliver_at_local=time(9, 0))
    with pytest.raises(InvalidPublishOption) as refused:
        await record_event(pool, PLAIN, topic="author:7", options=local)
    assert refused.value.field == "deliver_at_local"
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    # Another topic's subscribers' zones are known at publish: taken.
    assert (await record_event(pool, PLAIN, topic="news:7", options=local)).created


async def test_a_source_whose_query_scans_the_table_is_refused_naming_the_scan(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await follow_table(pool)
    unindexed = FOLLOWERS.replace("books.follows", "books.unindexed_follows")
    with pytest.raises(SourceRefused) as refused:
        await add_source(pool, settings, "writer:", unindexed)
    assert refused.value.field == "query"
    assert "refused: the plan scans the table: Seq Scan on unindexed_follows" in str(refused.value)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM sources WHERE app_id = $1 AND prefix = 'writer:'", DEFAULT_APP_ID
        )
        == 0
    )


@pytest.mark.parametrize(
    ("query", "column", "says"),
    [
        ("SELECT follower_id::text AS user_id FROM books.follows", "user_id", ":key"),
        (FOLLOWERS, "follower", "no column 'follower'"),
        (FOLLOWERS.replace("follower_id::text", "nosuch::text"), "user_id", "query failed"),
        (
            "WITH x AS (DELETE FROM books.follows WHERE author_id = :key::bigint RETURNING *) "
            "SELECT follower_id::text AS user_id FROM x",
            "user_id",
            "data-modifying statement",
        ),
    ],
)
async def test_a_source_that_cannot_serve_is_refused_saying_why(
    query: str, column: str, says: str, pool: asyncpg.Pool, settings: Settings
) -> None:
    await follow_table(pool)
    with pytest.raises(SourceRefused) as refused:
        async with pool.acquire() as conn:
            await check_source(
                conn, query=query, user_column=column, sample_key="7", time_limit=5.0
            )
    assert says in str(refused.value)


async def test_a_filtered_event_on_a_sourced_topic_reaches_the_matching_followers_only(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    """A tag filter over a source's members: its pages decide the filter for the page at
    once (store/sources.py MEMBER_FILTERED_PAGE), the followers left out counted."""
    await follow_table(pool)
    await add_source(pool, settings, "author:", FOLLOWERS)
    author = secrets.randbelow(2**40)
    users = await make_topic(pool, 40)
    chosen = await followers(pool, author, users)
    premium = set(users.user_ids[::4])  # half of the followers (every other user follows)
    await pool.execute(
        """UPDATE users SET tags = CASE WHEN id = ANY($2::bigint[])
                                        THEN '{"plan": "premium"}'::jsonb ELSE '{"plan": "free"}'::jsonb END
           WHERE id = ANY($1::bigint[])""",
        users.user_ids,
        list(premium),
    )
    device_of = dict(zip(users.user_ids, users.device_ids, strict=True))
    expected = {device_of[u] for u in premium} & chosen
    settings = settings.model_copy(update={"shard_size": 7, "page_size": 3})
    options = PublishOptions(tag_filter=compile_filter({"tags": {"plan": "premium"}}))

    event = await record_event(pool, PLAIN, topic=f"author:{author}", options=options)
    await plan_event(event.event_id, pool, queues, settings)
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event.event_id, task.shard, pool, queues, settings)

    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert set(counts) == expected and set(counts.values()) == {1}
    status = await load_event_status(pool, event.event_id)
    assert status is not None
    assert status.held_back == {"filtered": len(chosen) - len(expected)}
