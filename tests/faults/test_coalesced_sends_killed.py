"""Coalesced 1:1 sends (FANOUT_COALESCE_DIRECT) under faults, and through a real API.

(1) Many concurrent 1:1 sends through `fanout serve` with coalescing on: every device has
its own event's push once, and every event ends with its own counts. (2) A delivery worker
SIGKILLed while it works through a bundle: after a restart no device is lost, and a device
has only its own event's push (a duplicate only within a batch the kill cut).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import httpx

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.local.ledger import DeliveryLedger
from fanout.local.sink import EmbeddedSink, PushSink
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queues
from fanout.stages.coalescing import run_fanout_group
from fanout.stages.group_commit import Enqueuer, GroupCommit
from fanout.stages.publish import prepare_event
from fanout.store import connect
from tests.api.conftest import start_server
from tests.faults.conftest import WorkerProcess, sink_worker, wait_until_delivered
from tests.helpers import add_device, drain, wait_for
from tests.processes import stop

APP = 1  # the default app


async def users_with_devices(pool: asyncpg.Pool, counts: list[int]) -> list[tuple[str, list[int]]]:
    """A user per count, with that many APNs devices: (external id, device ids)."""
    run = secrets.token_hex(4)
    made = []
    async with pool.acquire() as conn:
        for i, count in enumerate(counts):
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
                        await add_device(conn, user_id, f"{run}{i}t{d}".encode().hex())
                        for d in range(count)
                    ],
                )
            )
    return made


def own_pushes_only(ledger: DeliveryLedger, sends: dict[int, list[int]]) -> None:
    """Each event's push reached each of its devices (at least once) and no other device."""
    counted = ledger.events()
    for event_id, devices in sends.items():
        counts = counted.get(str(event_id))
        assert counts is not None, f"event {event_id}: nothing arrived"
        assert all(counts.count(d) >= 1 for d in devices), f"event {event_id}: a device lost"
        assert counts.unique == len(devices), f"event {event_id}: another event's device"


async def test_concurrent_one_to_one_sends_through_the_api_each_reach_their_own_devices(
    settings: Settings, pool: asyncpg.Pool, queues: Queues, tmp_path: Path
) -> None:
    made = await users_with_devices(pool, [1 + i % 3 for i in range(60)])
    async with EmbeddedSink(PushSink(DeliveryLedger(events_kept=1_000))) as sink:
        server, url = start_server(
            settings,
            tmp_path / "server.log",
            FANOUT_COALESCE_DIRECT="true",
            # The longest a group may gather: a few groups for 60 sends however slowly a
            # loaded machine gets them there (at 0.25 s, 60 sends spread over 3 s made 12).
            FANOUT_COALESCE_WINDOW_SECONDS="5",
            FANOUT_API_PUBLISH_RATE="10000",
            FANOUT_API_PUBLISH_BURST="10000",
        )
        worker = sink_worker(settings, "all", sink.url, tmp_path, FANOUT_COALESCE_DIRECT="true")
        try:
            conn = await connect(settings.database_dsn())
            try:
                token = (await create_api_key(conn, ["publish", "read"], "coalesce"))[1]
            finally:
                await conn.close()
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            f"/v1/users/{user}/notifications",
                            json={"notification": {"title": f"for {user}"}},
                        )
                        for user, _ in made
                    )
                )
            assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
            ids = [a.json()["event_id"] for a in answers]

            async def all_enqueued() -> bool:
                statuses = await pool.fetch(
                    "SELECT status FROM events WHERE id = ANY($1::bigint[])", ids
                )
                return {row["status"] for row in statuses} == {"enqueued"}

            # Enqueued as a few group messages (no worker has run yet).
            await wait_for(all_enqueued, "the events enqueued", timeout=30)
            assert 0 < await queues.fanout.depth() < len(ids) // 5
            sends = {
                a.json()["event_id"]: devices for a, (_, devices) in zip(answers, made, strict=True)
            }
            worker.start()
            for event_id, devices in sends.items():
                row = await wait_until_delivered(pool, event_id, len(devices))
                assert (row["devices"], row["sent"]) == (len(devices), len(devices)), dict(row)
        finally:
            worker.stop()
            stop(server)
        own_pushes_only(sink.sink.ledger, sends)
        assert sink.sink.ledger.duplicates == 0


async def test_a_delivery_worker_killed_mid_bundle_loses_nothing(
    settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    sink.sink.ledger = DeliveryLedger(events_kept=1_000)
    made = await users_with_devices(pool, [1 + i % 3 for i in range(60)])

    async def opened() -> Queues:
        return queues

    group = GroupCommit(pool, Enqueuer(pool, opened, overdue_after=60, coalesce=True))
    outcomes = await group.publish_many(
        [
            prepare_event(Notification(title=f"for {user}"), app_id=APP, user=user)
            for user, _ in made
        ]
    )
    await group.close()
    sends = {o.event_id: devices for o, (_, devices) in zip(outcomes, made, strict=True)}
    for body in await drain(queues.fanout, idle_polls=1):  # planned here: the bundle waits
        task = decode(body)
        assert isinstance(task, FanoutTask)
        await run_fanout_group(task, pool, queues, settings)

    sink.sink.delay = 0.3  # each batch takes a while, so the kill lands inside the bundle
    worker = sink_worker(settings, "delivery", sink.url, tmp_path, FANOUT_WORKER_CONCURRENCY="1")
    workers.append(worker)
    worker.start()
    await wait_for(lambda: sink.sink.ledger.unique >= 10, "10 devices delivered")
    worker.kill()
    ledger = sink.sink.ledger
    assert ledger.unique < sum(map(len, sends.values())), "the kill came after the bundle"
    sink.sink.delay = 0.0

    worker.start()
    for event_id, devices in sends.items():
        await wait_until_delivered(pool, event_id, len(devices))
    own_pushes_only(ledger, sends)
    # A duplicate only where the kill cut a batch: at most a batch in flight each.
    assert ledger.duplicates <= 3 * 8
