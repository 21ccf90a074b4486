"""Seeding, draining and waiting helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from fanout.config import Settings
from fanout.providers.sink import SinkProvider
from fanout.queue.admin import create_queues
from fanout.queue.messages import DeliveryBatch, decode
from fanout.queue.sqs import Queue, open_client
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once
from fanout.stages.progress import EventStatus, load_event_status
from fanout.store import live_activities, subscriptions, webhooks
from fanout.store.apps import DEFAULT_APP_ID


@dataclass
class Topic:
    key: str
    id: int
    user_ids: list[int]
    device_ids: list[int]


async def make_topic(
    pool: asyncpg.Pool,
    users: int,
    *,
    devices_per_user: Sequence[int] = (1,),
    token_prefix: str = "tok",
    app_id: int = DEFAULT_APP_ID,
) -> Topic:
    """A new topic of the app with ``users`` subscribers; user i gets
    devices_per_user[i % len] devices."""
    run = secrets.token_hex(4)
    key = f"test:{run}"
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=key)
        user_ids = [
            await subscriptions.find_or_create_user(conn, app_id=app_id, user=f"{run}-{i}")
            for i in range(users)
        ]
        await conn.executemany(
            "INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2)",
            [(topic_id, u) for u in user_ids],
        )
        device_ids = []
        for i, user_id in enumerate(user_ids):
            for k in range(devices_per_user[i % len(devices_per_user)]):
                device_ids.append(await add_device(conn, user_id, f"{token_prefix}-{run}-{i}-{k}"))
    return Topic(key, topic_id, user_ids, device_ids)


async def add_live_activity_tokens(
    pool: asyncpg.Pool, activity: str, count: int, *, app_id: int = DEFAULT_APP_ID
) -> list[str]:
    """``count`` new users of the app, each with a push token of its activity ``activity``
    (created if new); returns the tokens (hexadecimal, as APNs's)."""
    run = secrets.token_hex(4)
    tokens = [secrets.token_hex(32) for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        activity_id = await live_activities.find_or_create_activity(
            conn, app_id=app_id, activity_key=activity
        )
        await conn.execute(
            """WITH u AS (
                   INSERT INTO users (app_id, external_id)
                   SELECT $5, $1 || '-' || i FROM generate_series(1, $2) AS i RETURNING id
               ), numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM u)
               INSERT INTO live_activity_tokens (activity_id, user_id, kind, token)
               SELECT $3, numbered.id, 'activity', ($4::text[])[numbered.n] FROM numbered""",
            run,
            count,
            activity_id,
            tokens,
            app_id,
        )
    return tokens


async def add_device(
    conn: asyncpg.Connection, user_id: int, token: str, platform: str = "apns"
) -> int:
    keys = ("BPUBLICKEY", "AUTH") if platform == "webpush" else (None, None)
    device_id: int = await conn.fetchval(
        """INSERT INTO devices
               (app_id, user_id, platform, token, web_push_p256dh, web_push_auth, locale)
           SELECT app_id, $1, $2, $3, $4, $5, 'en' FROM users WHERE id = $1 RETURNING id""",
        user_id,
        platform,
        token,
        *keys,
    )
    return device_id


async def drain(
    queue: Queue, *, idle_polls: int = 2, at_least: int = 0, timeout: float = 30
) -> list[str]:
    """Receive and delete everything on a queue until it stays empty; first wait for
    ``at_least`` messages (a delayed retry shows up only when its delay is over).
    ``timeout`` only ends a test that would wait for ever."""
    bodies: list[str] = []
    idle = 0
    deadline = time.monotonic() + timeout
    while idle < idle_polls:
        messages = await queue.receive(10, wait_seconds=0)
        if not messages:
            if len(bodies) >= at_least:
                idle += 1
            elif time.monotonic() > deadline:
                raise AssertionError(f"{len(bodies)} of {at_least} messages in {timeout}s")
            else:
                await asyncio.sleep(0.1)
            continue
        idle = 0
        bodies.extend(m.body for m in messages)
        await queue.delete_many(messages)
    return bodies


async def wait_for(
    condition: Callable[[], Awaitable[object] | object], what: str, timeout: float = 60
) -> None:
    """Until ``condition()`` (sync or async) is true: tests act on what the system has
    done, never on how long it has had. ``timeout`` only ends a test that would hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def batches_of(bodies: list[str]) -> list[DeliveryBatch]:
    decoded = [decode(b) for b in bodies]
    return [b for b in decoded if isinstance(b, DeliveryBatch)]


def device_counts(batches: list[DeliveryBatch]) -> Counter[int]:
    return Counter(d.id for b in batches for d in b.iter_devices())


@contextlib.asynccontextmanager
async def sink_pipeline(settings: Settings, sink_url: str) -> AsyncIterator[Pipeline]:
    """The queues created, and a pipeline whose every platform delivers to the sink."""
    async with open_client(settings) as client:
        await create_queues(client, settings)
    provider = SinkProvider(sink_url)
    try:
        providers = dict.fromkeys(provider.platforms, provider)
        async with Pipeline.open(settings, providers=providers) as pipeline:
            yield pipeline
    finally:
        await provider.aclose()


async def status(pipeline: Pipeline, event_id: int) -> EventStatus:
    found = await load_event_status(pipeline.pool, event_id)
    assert found is not None
    return found


async def _none_pending(pipeline: Pipeline) -> bool:
    async with pipeline.pool.acquire() as conn:
        return not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM events WHERE status = 'pending')"
        )


async def run_everything(
    pipeline: Pipeline,
    *,
    enqueued: bool = True,
    set_aside: Callable[[str], bool] | None = None,
) -> list[str]:
    """Run every message on both queues until both stay empty (one worker, in order).

    An API answers a publish once its event is committed, and sends its fan-out message
    just after (stages/group_commit.py): first wait until no event is still pending, so
    the queues are drained once the message is on them (``enqueued=False`` for a test
    that left an event pending on purpose). A message ``set_aside`` picks is taken off
    the queue and not run: they are returned, for the test to run when it chooses (a
    delayed message may or may not be back while the others run)."""
    if enqueued:
        await wait_for(lambda: _none_pending(pipeline), "every committed event enqueued")
    kept: list[str] = []
    while True:
        bodies = await drain(pipeline.queues.fanout, idle_polls=1)
        bodies += await drain(pipeline.queues.delivery, idle_polls=1)
        if set_aside is not None:
            kept += [body for body in bodies if set_aside(body)]
            bodies = [body for body in bodies if not set_aside(body)]
        if not bodies:
            return kept
        for body in bodies:
            await pipeline.handle(body)


async def lose_every_resend(
    pipeline: Pipeline, event_id: int, *, look_ahead: float, idle_polls: int = 2, rounds: int = 4
) -> None:
    """``rounds`` times: drop whatever is on the delivery queue (the batches, then each
    resend of them, lost), and let the reconciler resend or give up the event's work."""
    for _ in range(rounds):
        await drain(pipeline.queues.delivery, idle_polls=idle_polls)
        await reconcile_once(
            pipeline.pool,
            pipeline.queues,
            pipeline.settings,
            look_ahead=look_ahead,
            event_id=event_id,
        )


async def want_devices_failed(pool: asyncpg.Pool) -> None:
    """An endpoint of the default app wanting devices.failed (never called: the tests
    read the outbox)."""
    async with pool.acquire() as conn:
        await webhooks.insert_endpoint(
            conn,
            app_id=DEFAULT_APP_ID,
            url="https://hooks.example.com/fanout",
            kinds=["devices.failed"],
            secret_sealed=b"unused",
            kek_id="unused",
        )


async def queue_counts(queue: Queue) -> tuple[int, int]:
    """(visible, in flight) messages, as SQS counts them."""
    attrs = (
        await queue.client.get_queue_attributes(
            QueueUrl=queue.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )
