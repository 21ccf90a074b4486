"""Coalesced 1:1 sends (FANOUT_COALESCE_DIRECT): a group's events share their SQS messages
and keep everything else their own, over real PostgreSQL, SQS and the push sink."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from fanout.local.ledger import DeliveryLedger
from fanout.local.sink import EmbeddedSink, PushSink
from fanout.notification import Notification
from fanout.queue.messages import DeliveryBundle, FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.reconciler import reconcile_once
from fanout.stages.group_commit import Enqueuer, GroupCommit
from fanout.stages.publish import PublishOptions, prepare_event
from fanout.store import lifecycle
from tests.helpers import add_device, drain, run_everything, status

APP = 1  # the default app
ENDED_WELL = ("delivered", "done")


@pytest.fixture
async def sink() -> AsyncIterator[EmbeddedSink]:
    """The sink, counting every event of a test apart (it keeps the last 16 by default)."""
    async with EmbeddedSink(PushSink(DeliveryLedger(events_kept=1_000))) as sink:
        yield sink


async def users_with_devices(pipeline: Pipeline, counts: list[int]) -> list[tuple[str, list[int]]]:
    """A user per count, with that many APNs devices: (external id, device ids)."""
    run = secrets.token_hex(4)
    made = []
    async with pipeline.pool.acquire() as conn:
        for i, count in enumerate(counts):
            external = f"{run}-{i}"
            user_id = await conn.fetchval(
                "INSERT INTO users (app_id, external_id) VALUES ($1, $2) RETURNING id",
                APP,
                external,
            )
            devices = [
                await add_device(conn, user_id, f"{run}{i}t{d}".encode().hex())
                for d in range(count)
            ]
            made.append((external, devices))
    return made


async def publish_coalesced(
    pipeline: Pipeline, users: list[str], options: dict[str, PublishOptions] | None = None
) -> list[int]:
    """One 1:1 send per user (a user may come twice), concurrently through group commit
    with coalescing on (``options`` by user); returns the event ids once their fan-out
    messages are sent."""
    chosen = options or {}

    async def opened() -> Queues:
        return pipeline.queues

    group = GroupCommit(
        pipeline.pool, Enqueuer(pipeline.pool, opened, overdue_after=60, coalesce=True)
    )
    answers = await asyncio.gather(
        *(
            group.publish(
                prepare_event(
                    Notification(title=f"for {user} #{n}"),
                    app_id=APP,
                    user=user,
                    options=chosen.get(user, PublishOptions()),
                )
            )
            for n, user in enumerate(users)
        )
    )
    await group.close()
    return [answer.event_id for answer in answers]


async def run_fanout(pipeline: Pipeline) -> list[str]:
    """Run the fan-out messages; returns the delivery queue's messages (taken off it)."""
    for body in await drain(pipeline.queues.fanout, idle_polls=1):
        task = decode(body)
        assert isinstance(task, FanoutTask) and task.events  # one message for the group
        await pipeline.handle(body)
    return await drain(pipeline.queues.delivery, idle_polls=1)


def pushed_once_to(sink: EmbeddedSink, event_id: int, devices: list[int]) -> bool:
    """Whether the event's push reached each of ``devices`` once, and no other device."""
    counts = sink.sink.ledger.events().get(str(event_id))
    if counts is None:
        return not devices
    return counts.received == len(devices) and all(counts.count(d) == 1 for d in devices)


async def test_a_group_of_sends_shares_messages_and_each_device_has_its_own_push_once(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    made = await users_with_devices(pipeline, [1, 2, 3, 1, 0, 2] * 5)
    # Two sends to the first user in the same group: each of its devices has both, once.
    targets = [user for user, _ in made] + [made[0][0]]
    devices_of = {user: devices for user, devices in made}
    ids = await publish_coalesced(pipeline, targets)

    delivery = await run_fanout(pipeline)
    bundles = [decode(body) for body in delivery]
    assert bundles and all(isinstance(b, DeliveryBundle) for b in bundles)
    assert len(delivery) < len(ids) // 5  # shared: far fewer messages than batches
    for body in delivery:
        await pipeline.handle(body)
    await run_everything(pipeline)  # retries, if any

    for event_id, user in zip(ids, targets, strict=True):
        expected = devices_of[user]
        found = await status(pipeline, event_id)
        ended = "no_recipients" if not expected else ENDED_WELL
        assert found.terminal and found.status in ended, found
        assert (found.devices, found.sent) == (len(expected), len(expected)), found
        assert pushed_once_to(sink, event_id, expected)  # its own, and only


async def test_a_cancelled_event_in_a_shared_bundle_holds_only_its_own_devices(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    made = await users_with_devices(pipeline, [2, 3, 1])
    ids = await publish_coalesced(pipeline, [user for user, _ in made])
    delivery = await run_fanout(pipeline)
    assert len(delivery) == 1 and isinstance(decode(delivery[0]), DeliveryBundle)

    async with pipeline.pool.acquire() as conn:
        await lifecycle.cancel(conn, event_id=ids[1], app_id=APP)
    await pipeline.handle(delivery[0])
    await pipeline.handle(delivery[0])  # delivered again by SQS: nothing is sent twice
    await run_everything(pipeline)

    cancelled = await status(pipeline, ids[1])
    assert cancelled.status == "cancelled" and cancelled.terminal, cancelled
    assert cancelled.sent == 0 and cancelled.held_back == {"cancelled": 3}, cancelled
    assert pushed_once_to(sink, ids[1], [])
    for index in (0, 2):
        found = await status(pipeline, ids[index])
        assert found.status in ENDED_WELL and found.sent == len(made[index][1]), found
        assert pushed_once_to(sink, ids[index], made[index][1])


async def test_a_lost_bundle_is_sent_again_by_the_reconciler(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    made = await users_with_devices(pipeline, [1, 2, 3, 1])
    ids = await publish_coalesced(pipeline, [user for user, _ in made])
    assert await run_fanout(pipeline)  # the bundle is lost: taken off the queue, not run

    # A later pass of the reconciler (one that looks past the batches' deadlines).
    await reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings, look_ahead=3600)
    await run_everything(pipeline)
    for event_id, (_, devices) in zip(ids, made, strict=True):
        found = await status(pipeline, event_id)
        assert found.status in ENDED_WELL and found.sent == len(devices), found
        assert pushed_once_to(sink, event_id, devices)


async def test_each_event_of_a_group_keeps_its_own_audience_rules_and_quiet_hours(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    made = await users_with_devices(pipeline, [2, 1, 3, 1])
    (plain, plain_devices), (opted_out, _), (quiet, _), (last, last_devices) = made
    async with pipeline.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO user_preferences (user_id, opted_out)
               SELECT id, true FROM users WHERE external_id = $1""",
            opted_out,
        )
        # Inside their quiet hours now, whatever the time: a window of all but a minute
        # ending 12 hours from now, however long the test takes to get to it (it crosses
        # midnight when it must; the rule handles both).
        await conn.execute(
            """INSERT INTO user_preferences (user_id, time_zone, quiet_start, quiet_end)
               SELECT id, 'UTC', (now() AT TIME ZONE 'UTC')::time + interval '12 hours 1 minute',
                      (now() AT TIME ZONE 'UTC')::time + interval '12 hours'
               FROM users WHERE external_id = $1""",
            quiet,
        )
    users = [plain, opted_out, quiet, last]
    ids = await publish_coalesced(pipeline, users, {quiet: PublishOptions(quiet_hours="drop")})
    delivery = await run_fanout(pipeline)
    assert len(delivery) == 1  # the two sent share one message
    for body in delivery:
        await pipeline.handle(body)
    await run_everything(pipeline)

    held = {user: (await status(pipeline, i)) for user, i in zip(users, ids, strict=True)}
    assert held[opted_out].held_back == {"opted_out": 1} and held[opted_out].sent == 0
    assert held[quiet].held_back == {"quiet_hours": 1} and held[quiet].sent == 0
    assert all(found.terminal for found in held.values())
    assert held[plain].sent == 2 and held[last].sent == 1
    assert pushed_once_to(sink, ids[0], plain_devices)
    assert pushed_once_to(sink, ids[3], last_devices)
    assert pushed_once_to(sink, ids[1], []) and pushed_once_to(sink, ids[2], [])


async def test_a_group_is_fanned_out_in_a_few_statements_per_event(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    # Planned one by one, each event of a group cost ~25 statements (its plan, its shard's
    # claim, page, checkpoints, end, each a round trip): groups of hundreds took seconds.
    # Counted with a query logger on every connection of the pool (connections kept: the
    # test is shorter than the pool's idle lifetime).
    made = await users_with_devices(pipeline, [1, 2, 0, 1] * 10)
    devices_of = {user: devices for user, devices in made}
    targets = [user for user, _ in made]
    ids = await publish_coalesced(pipeline, targets)
    statements: list[str] = []
    held = [await pipeline.pool.acquire() for _ in range(pipeline.pool.get_max_size())]
    for conn in held:
        conn.add_query_logger(lambda query: statements.append(query.query))
    for conn in held:
        await pipeline.pool.release(conn)

    delivery = await run_fanout(pipeline)
    fanned_out = len(statements)
    assert fanned_out < len(ids), f"{fanned_out} statements for {len(ids)} events"
    for body in delivery:
        await pipeline.handle(body)
    await run_everything(pipeline)
    for event_id, user in zip(ids, targets, strict=True):
        found = await status(pipeline, event_id)
        assert found.terminal, found
        assert pushed_once_to(sink, event_id, devices_of[user])
