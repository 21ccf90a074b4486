"""Tag filters in the fan-out's page query, on real PostgreSQL and SQS: each operator
chooses in SQL the users tests/unit/test_tags.py's reference chooses, and those left out
get nothing and are counted ``filtered``."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import time
from typing import Any

import asyncpg
import pytest

from fanout.config import Settings
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.stages.fanout import plan_event, run_shard
from fanout.stages.progress import load_event_status
from fanout.stages.publish import InvalidPublishOption, PublishOptions, record_event
from fanout.store import apps, audience, recipients, subscriptions
from fanout.store.apps import DEFAULT_APP_ID
from fanout.tags import compile_filter, matches
from tests.helpers import Topic, add_device, batches_of, device_counts, drain, make_topic

PLAIN = Notification(title="Hello")

# Cycled over the topic's subscribers (make_topic: user i has device i).
PROFILES: list[dict[str, Any]] = [
    {"plan": "premium", "country": "DE", "age": 31},
    {"plan": "free", "country": "AT", "age": 17},
    {"plan": "premium", "country": "FR", "age": 18, "beta": True},
    {"plan": "premium", "age": "18"},
    {},
]


async def tag_topic(
    pool: asyncpg.Pool, size: int, *, app_id: int = DEFAULT_APP_ID
) -> tuple[Topic, list[dict[str, Any]]]:
    topic = await make_topic(pool, size, app_id=app_id)
    given = [PROFILES[i % len(PROFILES)] for i in range(size)]
    rows = await pool.fetch(
        "SELECT id, external_id FROM users WHERE id = ANY($1::bigint[])", topic.user_ids
    )
    external = {r["id"]: r["external_id"] for r in rows}
    async with pool.acquire() as conn:
        for user_id, tags in zip(topic.user_ids, given, strict=True):
            await subscriptions.put_user_tags(
                conn, app_id=app_id, user=external[user_id], tags=tags
            )
    return topic, given


async def fan_out(
    topic: Topic,
    tag_filter: dict[str, Any] | None,
    pool: asyncpg.Pool,
    queues: Queues,
    settings: Settings,
) -> tuple[int, set[int]]:
    settings = settings.model_copy(update={"shard_size": 17, "page_size": 5})
    options = PublishOptions(tag_filter=compile_filter(tag_filter))
    event = await record_event(pool, PLAIN, topic=topic.key, options=options)
    await plan_event(event.event_id, pool, queues, settings)
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event.event_id, task.shard, pool, queues, settings)
    counts = device_counts(batches_of(await drain(queues.delivery)))
    assert set(counts.values()) <= {1}
    return event.event_id, set(counts)


@pytest.mark.parametrize(
    "tags",
    [
        {"plan": "premium"},
        {"country": {"in": ["DE", "AT"]}},
        {"age": {"gt": 18}},
        {"age": {"gte": 18}},
        {"age": {"lt": 18}},
        {"age": {"lte": 18}},
        {"beta": {"exists": True}},
        {"beta": {"exists": False}},
        {"plan": "premium", "age": {"gte": 18}, "country": {"in": ["DE", "FR"]}},
    ],
)
async def test_a_filter_sends_to_exactly_the_matching_subscribers_and_counts_the_rest(
    tags: dict[str, Any], pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic, given = await tag_topic(pool, 40)
    compiled = compile_filter({"tags": tags})
    assert compiled is not None
    chosen = {d for d, t in zip(topic.device_ids, given, strict=True) if matches(t, compiled)}

    event, devices = await fan_out(topic, {"tags": tags}, pool, queues, settings)

    assert devices == chosen
    status = await load_event_status(pool, event)
    assert status is not None
    left_out = 40 - len(chosen)
    assert status.held_back == ({"filtered": left_out} if left_out else {})


async def test_without_a_filter_everyone_is_sent_to(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic, _ = await tag_topic(pool, 12)
    event, devices = await fan_out(topic, None, pool, queues, settings)
    assert devices == set(topic.device_ids)
    status = await load_event_status(pool, event)
    assert status is not None and status.held_back == {}


async def test_a_one_to_one_send_with_a_filter_goes_out_only_if_the_user_matches(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    topic, _ = await tag_topic(pool, 2)  # user 0: premium, user 1: free
    user = await pool.fetchval("SELECT external_id FROM users WHERE id = $1", topic.user_ids[1])
    premium_only = PublishOptions(tag_filter=compile_filter({"tags": {"plan": "premium"}}))
    free_only = PublishOptions(tag_filter=compile_filter({"tags": {"plan": "free"}}))
    sent = {}
    for name, options in (("premium", premium_only), ("free", free_only)):
        event = await record_event(pool, PLAIN, user=user, options=options)
        await plan_event(event.event_id, pool, queues, settings)
        for body in await drain(queues.fanout):
            task = decode(body)
            assert isinstance(task, FanoutTask) and task.shard is not None
            await run_shard(event.event_id, task.shard, pool, queues, settings)
        sent[name] = set(device_counts(batches_of(await drain(queues.delivery))))
        status = await load_event_status(pool, event.event_id)
        assert status is not None
        assert status.held_back == ({"filtered": 1} if name == "premium" else {})
    assert sent == {"premium": set(), "free": {topic.device_ids[1]}}


async def test_a_filter_alone_reaches_every_matching_user_of_the_app_and_counts_the_rest(
    pool: asyncpg.Pool, queues: Queues, settings: Settings
) -> None:
    """A publish with a filter and no topic: every user of the app whose tags match, paged
    and sharded over the app's users (another app's matching users get nothing)."""
    async with pool.acquire() as conn:
        app = await apps.insert_app(conn, key=f"tags-{secrets.token_hex(3)}", name="t", settings={})
    assert app is not None
    users, given = await tag_topic(pool, 40, app_id=app.id)
    others, _ = await tag_topic(pool, 10)  # the default app's: premium too, never reached
    compiled = compile_filter({"tags": {"plan": "premium"}})
    assert compiled is not None
    chosen = {d for d, t in zip(users.device_ids, given, strict=True) if matches(t, compiled)}
    settings = settings.model_copy(update={"shard_size": 7, "page_size": 3})

    event = await record_event(
        pool, PLAIN, app_id=app.id, options=PublishOptions(tag_filter=compiled)
    )
    await plan_event(event.event_id, pool, queues, settings)
    for body in await drain(queues.fanout):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.shard is not None
        await run_shard(event.event_id, task.shard, pool, queues, settings)
    counts = device_counts(batches_of(await drain(queues.delivery)))

    assert set(counts) == chosen and set(counts.values()) == {1}
    assert not set(counts) & set(others.device_ids)
    status = await load_event_status(pool, event.event_id)
    assert status is not None and status.held_back == {"filtered": 40 - len(chosen)}
    # A lost batch re-read from PostgreSQL reads the same users, filtered the same.
    async with pool.acquire() as conn:
        rows = await recipients.app_batch_recipients(
            conn,
            app_id=app.id,
            first_user_id=0,
            last_user_id=2**62,
            event_id=event.event_id,
            category=None,
        )
    assert {int(r["wire"].split(",")[0].strip("[")) for r in rows if r["wire"]} == chosen


async def test_an_event_needs_a_topic_a_user_or_a_filter(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        await record_event(pool, PLAIN)
    app_wide_local = PublishOptions(
        tag_filter=compile_filter({"tags": {"plan": "premium"}}), deliver_at_local=time(9, 0)
    )
    with pytest.raises(InvalidPublishOption) as refused:
        await record_event(pool, PLAIN, options=app_wide_local)
    assert refused.value.field == "deliver_at_local"


@pytest.mark.parametrize("spread", [1, 10], ids=["dense", "sparse"])
async def test_the_filtered_page_reads_what_the_rule_per_subscriber_reads(
    spread: int, pool: asyncpg.Pool
) -> None:
    """A filtered event's page decides the filter for the page at once (through one range
    of users when the page's subscribers are dense in the user ids, by a probe each when
    sparse: one subscriber in ``spread`` users, the others premium users with devices who
    must not enter). Page by page it returns exactly the rows of the page that applies
    the filter per subscriber as the audience rule ``filtered``: the same cursor, the same
    devices, the other rules applied to the matching only, and a user left out counted
    ``filtered`` only with an active device."""
    run = secrets.token_hex(4)
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await subscriptions.find_or_create_topic(
            conn, app_id=DEFAULT_APP_ID, topic=f"test:{run}"
        )
        subscribers: list[tuple[int, str]] = []
        for i in range(40 * spread):
            name = f"{run}-{i}"
            user_id = await subscriptions.find_or_create_user(
                conn, app_id=DEFAULT_APP_ID, user=name
            )
            if i % spread:  # not subscribed: matching, with a device, never read
                await subscriptions.put_user_tags(
                    conn, app_id=DEFAULT_APP_ID, user=name, tags={"plan": "premium"}
                )
                await add_device(conn, user_id, f"other-{run}-{i}")
                continue
            n = len(subscribers)
            subscribers.append((user_id, name))
            await conn.execute(
                "INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2)", topic_id, user_id
            )
            tags = PROFILES[n % len(PROFILES)]
            await subscriptions.put_user_tags(conn, app_id=DEFAULT_APP_ID, user=name, tags=tags)
            for k in range(n % 3):  # none, one or two devices
                device = await add_device(conn, user_id, f"tok-{run}-{n}-{k}")
                if n % 7 == 2 and k == 0:  # an inactive one: no device for the rules
                    await conn.execute("UPDATE devices SET active = false WHERE id = $1", device)
            if n % 5 == 2:  # premium, of age
                await audience.mute_topic(conn, user_id=user_id, topic_id=topic_id, until=None)
        await audience.upsert_preferences(
            conn,
            app_id=DEFAULT_APP_ID,
            preferences=[
                audience.Preferences(user=name, opted_out=True) for _, name in subscribers[::4]
            ],
        )
    for tags in ({"plan": "premium"}, {"plan": "premium", "age": {"gte": 18}}):
        options = PublishOptions(tag_filter=compile_filter({"tags": tags}))
        event = await record_event(pool, PLAIN, topic=f"test:{run}", options=options)
        pages: dict[bool, list[list[tuple[Any, ...]]]] = {}
        for filtered_page in (False, True):
            pages[filtered_page] = []
            cursor = 0
            async with pool.acquire() as conn:
                while True:
                    rows = await recipients.topic_recipients_page(
                        conn,
                        topic_id=topic_id,
                        after_user_id=cursor,
                        before_user_id=2**62,
                        limit=7,
                        event_id=event.event_id,
                        category=None,
                        tag_filtered=filtered_page,
                    )
                    if not rows:
                        break
                    pages[filtered_page].append([tuple(r) for r in rows])
                    cursor = rows[-1][0]
        # The filtered page: a row per run of users the filter left out, not per user
        # (with age too, PROFILES[3] and [4] are left out side by side).
        fewer = sum(map(len, pages[True])) < sum(map(len, pages[False]))
        assert fewer == ("age" in tags)
        assert [page_read(page) for page in pages[True]] == [
            page_read(page) for page in pages[False]
        ]
        read = [row for page in pages[False] for row in page]
        assert {row[0] for row in read} == {user_id for user_id, _ in subscribers}
        reasons = {row[3] for row in read}
        assert {"filtered", "muted", "opted_out", None} <= reasons


def page_read(rows: list[tuple[Any, ...]]) -> tuple[int, int, list[tuple[Any, ...]], Counter[str]]:
    """What the fan-out takes from a page: where it ends, how many subscribers it read, the
    devices sent to, and the users held back by reason (a run of users a tag filter left
    out: its sixth column the users, its seventh those of them counted held back)."""
    users: set[int] = set()
    in_runs = 0
    held: Counter[str] = Counter()
    for row in rows:
        if len(row) > 5 and row[5] is not None:
            in_runs += row[5]
            if row[3] is not None:
                held[row[3]] += row[6]
            continue
        users.add(row[0])
        if row[2] is None and row[3] is not None:
            held[row[3]] += 1
    sent = sorted(row[:4] for row in rows if row[2] is not None)
    return rows[-1][0], len(users) + in_runs, sent, held
