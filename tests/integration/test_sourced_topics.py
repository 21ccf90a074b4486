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
from fanout.sources import (
    SourceRefused,
    SourcesUnavailable,
    bind_key,
    check_source,
)
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
    """The application's own table, with the index an application would give it, and the
    grants an operator gives the role sources run as (FANOUT_SOURCE_ROLE)."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(2525)")  # other tests create it too
        try:
            await conn.execute(
                """CREATE SCHEMA IF NOT EXISTS books;
                   CREATE TABLE IF NOT EXISTS books.follows (
                       author_id bigint NOT NULL, follower_id bigint NOT NULL);
                   CREATE INDEX IF NOT EXISTS follows_by_author ON books.follows (author_id);
                   CREATE TABLE IF NOT EXISTS books.unindexed_follows (
                       author_id bigint NOT NULL, follower_id bigint NOT NULL);
                   GRANT USAGE ON SCHEMA books TO fanout_source;
                   GRANT SELECT ON books.follows, books.unindexed_follows TO fanout_source;"""
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
            role=settings.source_role,
        )
        await sources.put_source(
            conn, app_id=DEFAULT_APP_ID, prefix=prefix, query=bound, user_column="user_id"
        )


async def followers(pool: asyncpg.Pool, author: int, users: Topic) -> set[int]:
    """Every other user of ``users`` follows ``author`` (by their external id, a number as
    the app knows them), with some followers fanout has never heard of and some listed
    twice (an app's table without a unique key); returns the devices
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
        [(author, numeric[u]) for u in following]
        + [(author, x) for x in unknown]
        + [(author, numeric[u]) for u in following[:3]],  # followed twice: one member
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
            "permission denied for table follows",  # the source role may only SELECT
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
                conn,
                query=query,
                user_column=column,
                sample_key="7",
                time_limit=5.0,
                role=settings.source_role,
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


# The sandbox (FANOUT_SOURCE_ROLE): a source's query reads only what the operator granted
# its role, and writes nothing, at its check and at planning alike.
READS_API_KEYS = "SELECT name AS user_id FROM api_keys WHERE name = :key"
ESCAPES_ITS_ROLE = (  # set_config would undo a plain SET LOCAL ROLE, then read as fanout
    "SELECT f.follower_id::text AS user_id FROM books.follows AS f "
    "WHERE f.author_id = :key::bigint AND set_config('role', 'none', true) IS NOT NULL"
)
WRITES = (  # an app's function that writes with its owner's rights
    "SELECT follower_id::text AS user_id FROM books.follows "
    "WHERE author_id = :key::bigint AND books.note_read(author_id)"
)


async def writing_function(pool: asyncpg.Pool) -> None:
    """books.note_read: a function of the app's that writes (as its owner, fanout's own user
    here: only read-only can stop it), callable by anyone, as functions are by default; and
    author 7 followed, so that a query for 7 calls it."""
    await follow_table(pool)
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(2525)")
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS books.reads (author_id bigint);
                   CREATE OR REPLACE FUNCTION books.note_read(author bigint) RETURNS boolean
                   LANGUAGE sql VOLATILE SECURITY DEFINER
                   AS 'INSERT INTO books.reads VALUES (author) RETURNING true';
                   INSERT INTO books.follows VALUES (7, 1)"""
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(2525)")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (READS_API_KEYS, "permission denied for table api_keys"),
        (ESCAPES_ITS_ROLE, 'cannot set parameter "role" within security-definer function'),
        (WRITES, "cannot execute INSERT in a read-only transaction"),
    ],
)
async def test_a_source_reading_fanouts_tables_or_writing_is_refused(
    query: str, says: str, pool: asyncpg.Pool, settings: Settings
) -> None:
    await writing_function(pool)
    with pytest.raises(SourceRefused) as refused:
        await add_source(pool, settings, "author:", query)
    assert refused.value.field == "query" and says in str(refused.value)
    if "permission" in says:  # the refusal names the role to grant to
        assert f"FANOUT_SOURCE_ROLE={settings.source_role}" in str(refused.value)
    assert await pool.fetchval("SELECT count(*) FROM books.reads") == 0


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (READS_API_KEYS, "permission denied for table api_keys"),
        (WRITES, "cannot execute INSERT in a read-only transaction"),
    ],
)
async def test_at_planning_a_source_reads_only_its_grants_and_writes_nothing(
    query: str, says: str, pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    # Stored as an older fanout or a hand-edited row would have it (never checked): planning
    # runs it in a writing transaction of fanout's own, which must not lend it anything.
    await writing_function(pool)
    async with pool.acquire() as conn:
        await sources.put_source(
            conn,
            app_id=DEFAULT_APP_ID,
            prefix="author:",
            query=query.replace(":key", "$1::text"),
            user_column="user_id",
        )

    event_id, bodies = await fan_out("author:7", pool, queues, settings)

    assert bodies == []
    status = await load_event_status(pool, event_id)
    assert status is not None and status.status == "failed"
    assert status.last_error is not None and says in status.last_error
    assert await pool.fetchval("SELECT count(*) FROM books.reads") == 0
    assert await pool.fetchval("SELECT count(*) FROM event_members") == 0


async def test_a_source_role_fanouts_user_may_not_make_turns_sources_off_naming_it(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # Roles are the cluster's: names of this test's own, dropped after.
    login, role = f"fanout_t_{secrets.token_hex(4)}", f"fanout_src_{secrets.token_hex(4)}"
    await pool.execute(f'CREATE ROLE "{login}" LOGIN')  # no CREATEROLE, no membership
    try:
        conn = await asyncpg.connect(settings.database_dsn(), user=login)
        try:
            why = await sources.prepare_source_role(conn, role=role)
            with pytest.raises(SourcesUnavailable) as unavailable:
                await check_source(
                    conn,
                    query=FOLLOWERS,
                    user_column="user_id",
                    sample_key="7",
                    time_limit=5.0,
                    role=role,
                )
        finally:
            await conn.close()
    finally:
        await pool.execute(f'DROP ROLE "{login}"')
    assert why is not None and why.startswith(f"FANOUT_SOURCE_ROLE={role}: no such database role")
    assert str(unavailable.value) == why
    assert await pool.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 0
    # Nor may a source run as a superuser, or as fanout's own user.
    async with pool.acquire() as conn:
        user = await conn.fetchval("SELECT current_user")
        why = await sources.prepare_source_role(conn, role=user)
    assert why is not None and "must not run as fanout's own user, a superuser" in why


async def test_another_source_role_is_made_and_used_and_its_grants_are_what_counts(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await follow_table(pool)
    role = f"fanout_src_{secrets.token_hex(4)}"
    other = settings.model_copy(update={"source_role": role})
    try:
        async with pool.acquire() as conn:
            assert await sources.prepare_source_role(conn, role=role) is None
            assert await sources.prepare_source_role(conn, role=role) is None  # idempotent
        with pytest.raises(SourceRefused) as refused:  # nothing granted to it yet
            await add_source(pool, other, "author:", FOLLOWERS)
        assert "permission denied for schema books" in str(refused.value)
        await pool.execute(
            f'GRANT USAGE ON SCHEMA books TO "{role}"; GRANT SELECT ON books.follows TO "{role}"'
        )
        await add_source(pool, other, "author:", FOLLOWERS)
    finally:
        async with pool.acquire() as conn:
            await sources.prepare_source_role(conn, role=settings.source_role)  # back
            await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


async def test_a_second_user_of_fanouts_is_granted_the_sandbox_made_by_another(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # Migrations may connect as another user than the workers (FANOUT_DATABASE_DIRECT_URL):
    # the sandbox made by one is granted to the other, a member of the source role that
    # does not inherit its rights (one that does may call the sandbox as its owner already).
    await follow_table(pool)
    await pool.execute("INSERT INTO books.follows VALUES (7, 11), (7, 12)")
    login = f"fanout_t_{secrets.token_hex(4)}"
    await pool.execute(f'CREATE ROLE "{login}" LOGIN NOINHERIT; GRANT fanout_source TO "{login}"')
    try:
        conn = await asyncpg.connect(settings.database_dsn(), user=login)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT fanout_source.read('SELECT 1 AS u', 'u', '7')")
            assert await sources.prepare_source_role(conn, role=settings.source_role) is None
            found = await conn.fetch(
                "SELECT fanout_source.read($1, 'user_id', '7')", bind_key(FOLLOWERS)
            )
        finally:
            await conn.close()
    finally:
        await pool.execute(f'DROP OWNED BY "{login}"; DROP ROLE "{login}"')
    assert sorted(row[0] for row in found) == ["11", "12"]
