"""Coalesced 1:1 sends (FANOUT_COALESCE_DIRECT): a group's events share their SQS messages
and keep everything else their own, over real PostgreSQL, SQS and the push sink."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from asyncpg.connection import LoggedQuery

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


DRIVER_QUERIES = ("pg_advisory_unlock_all", "RESET ALL", "typeinfo_tree", "current_setting('jit')")


async def log_queries(pipeline: Pipeline) -> list[str]:
    """The statements every connection of the pool runs from now on (connections kept:
    the test is shorter than the pool's idle lifetime)."""
    statements: list[str] = []

    def note(query: LoggedQuery) -> None:
        # Not the delivery's: the pool's reset of a connection it takes back, and the
        # driver's look-up of a type (once per connection: jit off, then the type tree).
        if not any(mark in query.query for mark in DRIVER_QUERIES):
            statements.append(query.query)

    held = [await pipeline.pool.acquire() for _ in range(pipeline.pool.get_max_size())]
    for conn in held:
        conn.add_query_logger(note)
    for conn in held:
        await pipeline.pool.release(conn)
    return statements


@pytest.mark.parametrize("events", [20, 120])
async def test_a_bundle_is_claimed_recorded_and_ended_in_a_few_statements_whatever_its_events(
    pipeline: Pipeline, sink: EmbeddedSink, events: int
) -> None:
    # Delivered batch by batch, a bundle cost ~6 statements a batch (claim, a transaction
    # recording the outcome, the event's end): 194 for a bundle of 30 (#26). Claimed in one
    # statement, recorded in one and its events ended in one, whatever their number.
    made = await users_with_devices(pipeline, [1, 2, 1] * (events // 3) + [1] * (events % 3))
    ids = await publish_coalesced(pipeline, [user for user, _ in made])
    delivery = await run_fanout(pipeline)
    assert len(delivery) == 1 and isinstance(decode(delivery[0]), DeliveryBundle)
    statements = await log_queries(pipeline)

    await pipeline.handle(delivery[0])
    assert len(statements) <= 3, f"{len(statements)} statements for {events} events"
    for event_id, (_, devices) in zip(ids, made, strict=True):
        found = await status(pipeline, event_id)
        assert found.terminal and found.status == "delivered", found
        assert found.sent == len(devices) and found.batches_done == found.batches, found
        assert pushed_once_to(sink, event_id, devices)


async def users_with_tokens(
    pipeline: Pipeline, tokens_per_user: list[list[str]]
) -> list[tuple[str, list[int]]]:
    """A user per list, with an APNs device per token (each made unique): (external id,
    device ids)."""
    run = secrets.token_hex(4)
    made = []
    async with pipeline.pool.acquire() as conn:
        for i, tokens in enumerate(tokens_per_user):
            external = f"{run}-{i}"
            user_id = await conn.fetchval(
                "INSERT INTO users (app_id, external_id) VALUES ($1, $2) RETURNING id",
                APP,
                external,
            )
            made.append(
                (
                    external,
                    [
                        await add_device(conn, user_id, f"{t}{run}u{i}d{d}")
                        for d, t in enumerate(tokens)
                    ],
                )
            )
    return made


async def test_many_events_sharing_bundles_each_keep_their_own_outcome_status_and_content(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    # 200 events in one group: a device of some is a dead token (deactivated, counted
    # invalid), one of others is refused for good (failed, by reason), some events are
    # cancelled before their bundle is delivered, one user has two sends, one has no
    # device; the bundle is delivered twice. Each event counts only its own devices, ends
    # in its own state, and each device has its own event's push once.
    shapes = [["ok"], ["ok", "ok"], ["ok", "invalid"], ["reject", "ok", "ok"], [], ["ok"] * 3]
    tokens = [shapes[i % len(shapes)] for i in range(199)]
    made = await users_with_tokens(pipeline, tokens)
    targets = [user for user, _ in made] + [made[1][0]]
    kinds_of = {user: shape for (user, _), shape in zip(made, tokens, strict=True)}
    devices_of = dict(made)
    ids = await publish_coalesced(pipeline, targets)
    delivery = await run_fanout(pipeline)
    assert len(delivery) < 5, len(delivery)
    cancelled = {ids[i] for i in (3, 50, 101, 198)}
    async with pipeline.pool.acquire() as conn:
        for event_id in cancelled:
            await lifecycle.cancel(conn, event_id=event_id, app_id=APP)
    for body in delivery:
        await pipeline.handle(body)
    await pipeline.handle(delivery[0])  # delivered again by SQS: nothing is sent twice
    await run_everything(pipeline)

    for event_id, user in zip(ids, targets, strict=True):
        found = await status(pipeline, event_id)
        assert found.terminal, found
        kinds, devices = kinds_of[user], devices_of[user]
        if event_id in cancelled:
            assert found.status == "cancelled" and found.sent == 0, found
            assert found.held_back == ({"cancelled": len(devices)} if devices else {}), found
            assert pushed_once_to(sink, event_id, [])
            continue
        sent = [d for d, k in zip(devices, kinds, strict=True) if k == "ok"]
        assert (found.devices, found.sent) == (len(devices), len(sent)), found
        assert found.invalid == kinds.count("invalid"), found
        assert found.failed == kinds.count("reject"), found
        if not devices:
            assert found.status == "no_recipients", found
        elif "reject" in kinds or "invalid" in kinds:
            assert found.status in ("partially_delivered", "delivered"), found
        else:
            assert found.status == "delivered", found
        assert pushed_once_to(sink, event_id, sent), found
        counts = sink.sink.ledger.events().get(str(event_id))
        for device in sent:  # each of its devices its own event's push, once
            assert counts is not None and counts.count(device) == 1
    async with pipeline.pool.acquire() as conn:
        sent_to = {
            user for user, event_id in zip(targets, ids, strict=True) if event_id not in cancelled
        }
        invalid = [
            d
            for u, ds in made
            for d, k in zip(ds, kinds_of[u], strict=True)
            if k == "invalid" and u in sent_to
        ]
        active = await conn.fetchval(
            "SELECT count(*) FROM devices WHERE id = ANY($1::bigint[]) AND active", invalid
        )
        failures = await conn.fetch(
            """SELECT event_id, outcome, count(*) AS n FROM delivery_failures
               WHERE event_id = ANY($1::bigint[]) GROUP BY 1, 2""",
            ids,
        )
    assert invalid and active == 0  # the dead tokens sent to were retired
    by_event = {(r["event_id"], r["outcome"]): r["n"] for r in failures}
    for event_id, user in zip(ids, targets, strict=True):
        if event_id in cancelled:
            continue
        assert by_event.get((event_id, "failed"), 0) == kinds_of[user].count("reject")
        assert by_event.get((event_id, "invalid"), 0) == kinds_of[user].count("invalid")


async def test_a_batch_another_invocation_holds_is_left_to_it_and_its_neighbours_go_out(
    pipeline: Pipeline, sink: EmbeddedSink
) -> None:
    made = await users_with_devices(pipeline, [1, 2, 1])
    ids = await publish_coalesced(pipeline, [user for user, _ in made])
    delivery = await run_fanout(pipeline)
    bundle = decode(delivery[0])
    assert len(delivery) == 1 and isinstance(bundle, DeliveryBundle)
    held = next(b for b in bundle.batches if b.event_id == ids[1])
    held_by_another = """UPDATE delivery_batches
        SET status = 'running', lease_owner = gen_random_uuid(), lease_until = now() + $3
        WHERE event_id = $1 AND batch_key = $2"""
    async with pipeline.pool.acquire() as conn:
        await conn.execute(held_by_another, held.event_id, held.key, timedelta(minutes=1))

    reports = await pipeline.handle(delivery[0])
    assert isinstance(reports, list)
    busy = [(r.event_id, r.key) for r in reports if r.busy]
    assert busy == [(held.event_id, held.key)]  # deferred to its holder's lease
    assert pushed_once_to(sink, ids[1], [])
    for index in (0, 2):
        found = await status(pipeline, ids[index])
        assert found.status in ENDED_WELL and found.terminal, found
        assert pushed_once_to(sink, ids[index], made[index][1])

    # The holder died: once its lease is over, the bundle's next copy sends that batch only.
    async with pipeline.pool.acquire() as conn:
        await conn.execute(held_by_another, held.event_id, held.key, timedelta(seconds=-1))
    reports = await pipeline.handle(delivery[0])
    assert isinstance(reports, list) and not any(r.busy for r in reports)
    for index, (_, devices) in enumerate(made):
        found = await status(pipeline, ids[index])
        assert found.status in ENDED_WELL and found.sent == len(devices), found
        assert pushed_once_to(sink, ids[index], devices)
