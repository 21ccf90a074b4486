"""PostgreSQL restarted and SQS losing every message under a running pipeline (issue #10).

Whatever happens, the event ends in a terminal state and no device misses its push.
The workers are real `fanout worker` processes against a PostgreSQL and an SQS server
of this module's own (the shared ones are never restarted); the sink counts in this
process. Each fault strikes at a point the system has reached, read from the database
(mid fan-out: batches on the queue, the shard not done) or from the sink (mid delivery:
between 20% and 80% of the devices counted), never after a sleep.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.demo import DeviceShape, seed
from fanout.local.faults import EventSnapshot, EventWatch
from fanout.local.postgres_server import PrivatePostgres
from fanout.local.sink import EmbeddedSink
from fanout.local.sqs_server import MotoServer
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client, open_queues
from fanout.stages.publish import publish
from fanout.store import connect, create_pool
from fanout.store.migrate import migrate

DEVICES = 2500
# After the fault, how long the event has to reach a terminal state. Leases and the
# visibility timeout are 5 s here, so anything that waits for one to lapse has room.
WAIT_AFTER_FAULT = 25.0
NOTE = Notification(title="New book")


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@dataclass
class Rig:
    """A seeded database, queues, a sink, and the workers once started."""

    pg: PrivatePostgres
    moto: MotoServer
    settings: Settings
    sink: EmbeddedSink
    topic: str
    logs: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    async def start_workers(self, *, paced: bool) -> None:
        """A fan-out and a delivery worker; ``paced``: the fan-out pauses while 3 batches
        wait on the queue, so it lasts as long as delivery and a fault can land mid-shard."""
        env = worker_environment(
            {
                "FANOUT_DATABASE_URL": self.settings.database_dsn(),
                "FANOUT_SQS_ENDPOINT_URL": self.moto.url,
                "FANOUT_QUEUE_PREFIX": self.settings.queue_prefix,
                "FANOUT_PROVIDER": "sink",
                "FANOUT_SINK_URL": self.sink.url,
                "FANOUT_BATCH_MAX_BYTES": "8192",  # ~130 devices: ~20 batches in all
                "FANOUT_PAGE_SIZE": "100",
                "FANOUT_VISIBILITY_TIMEOUT": "5",
                "FANOUT_POLL_WAIT_SECONDS": "1",
                "FANOUT_RETRY_BASE_DELAY": "1",
                "FANOUT_MAX_RECEIVE_COUNT": "20",  # enough tries to outlast the outage
                "FANOUT_WORKER_CONCURRENCY": "2",
                # The reconciler (issue #10) resends work overdue by a second, not 2 min.
                "FANOUT_RECONCILE_AFTER_SECONDS": "1",
                "FANOUT_RECONCILE_INTERVAL_SECONDS": "0.5",
                "FANOUT_SHUTDOWN_GRACE_SECONDS": "2",
                **({"FANOUT_DELIVERY_BACKLOG_LIMIT": "3"} if paced else {}),
            }
        )
        self.workers = [
            WorkerProcess(role, env, self.logs / f"{role}.log") for role in ("fanout", "delivery")
        ]
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            await asyncio.to_thread(worker.wait_until_consuming)

    async def publish(self) -> int:
        pool = await create_pool(self.settings, min_size=1, max_size=1)
        try:
            async with open_client(self.settings) as client:
                queues = await open_queues(client, self.settings)
                return int((await publish(pool, queues, NOTE, topic=self.topic)).event_id)
        finally:
            await pool.close()


@pytest.fixture
async def rig(
    private_postgres: PrivatePostgres, moto: MotoServer, sink: EmbeddedSink, tmp_path: Path
) -> AsyncIterator[Rig]:
    name = f"restarts_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(private_postgres.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await connect(private_postgres.url(name))
    try:
        await migrate(conn)
        seeded = await seed(conn, DEVICES, 1, DeviceShape(platforms=("apns",)))
    finally:
        await conn.close()
    sink.sink.ledger.expect(seeded.device_ids)
    settings = Settings(
        database_url=SecretStr(private_postgres.url(name)),
        sqs_endpoint_url=moto.url,
        queue_prefix=f"r{secrets.token_hex(5)}",
        visibility_timeout=5,
    )
    async with open_client(settings) as client:
        await create_queues(client, settings)
    rig = Rig(private_postgres, moto, settings, sink, seeded.topic, tmp_path)
    try:
        yield rig
    finally:
        await asyncio.gather(*(asyncio.to_thread(w.stop, 5.0) for w in rig.workers))
        if not private_postgres.running:
            private_postgres.start()
        admin = await asyncpg.connect(private_postgres.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def until(what: str, condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.01)


async def mid_fan_out(rig: Rig, event_id: int) -> None:
    """Until the shard has batches on the queue and is not done; then it is paused there,
    since the paced fan-out waits for the sink."""
    watch = EventWatch(rig.settings.database_dsn(), event_id)

    async def reached() -> bool:
        state = await watch.snapshot()
        return state is not None and state.mid_fan_out

    try:
        await until("mid fan-out", reached, 30)
    finally:
        watch.close()


async def mid_delivery(rig: Rig, event_id: int) -> None:
    """Until the fan-out is over and the sink has 20% of the devices (not yet 80%)."""
    ledger = rig.sink.sink.ledger
    watch = EventWatch(rig.settings.database_dsn(), event_id)
    fanned_out = False

    async def reached() -> bool:
        # The sink's count is read last, with nothing awaited after it: the sink (in this
        # process) answers nothing more before the fault. Read before the database was
        # asked, it went on while a loaded machine's query took its time.
        nonlocal fanned_out
        if not fanned_out:
            snapshot = await watch.snapshot()
            fanned_out = snapshot is not None and snapshot.fanned_out
        return fanned_out and ledger.unique >= DEVICES * 0.2

    try:
        await until("fanned out and 20% delivered", reached, 30)
    finally:
        watch.close()
    assert ledger.unique < DEVICES * 0.8, f"the sink was past 80% ({ledger.unique}) already"


async def assert_every_device_reached(rig: Rig, event_id: int) -> None:
    """The event ends in a terminal state within the bound, and nothing was lost."""
    watch = EventWatch(rig.settings.database_dsn(), event_id)
    state: EventSnapshot | None = None

    async def terminal() -> bool:
        nonlocal state
        state = await watch.snapshot() or state
        return state is not None and state.terminal

    try:
        await until("a terminal state", terminal, WAIT_AFTER_FAULT)
    except AssertionError:
        pass  # said below, with the figures
    finally:
        watch.close()
    ledger = rig.sink.sink.ledger
    lost = DEVICES - ledger.unique
    print(f"\nFAULT: devices={DEVICES} delivered={ledger.unique} duplicates={ledger.duplicates}")
    status = state.status if state else "unknown"
    assert lost == 0, f"{lost} of {DEVICES} devices lost (event {status})"
    assert state is not None and state.terminal, f"event still {status} {WAIT_AFTER_FAULT}s on"


async def restart_postgres(rig: Rig, mode: str) -> None:
    await asyncio.to_thread(rig.pg.restart, mode)  # type: ignore[arg-type]


async def lose_every_message(rig: Rig) -> None:
    """moto killed (its queues and messages gone), back on its port, queues made again."""
    await asyncio.to_thread(rig.moto.kill)
    await asyncio.to_thread(rig.moto.start)
    async with open_client(rig.settings) as client:
        await create_queues(client, rig.settings)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restarted_during_fan_out_loses_no_device(rig: Rig, mode: str) -> None:
    rig.sink.sink.delay = 0.05
    await rig.start_workers(paced=True)
    event_id = await rig.publish()
    await mid_fan_out(rig, event_id)
    await restart_postgres(rig, mode)
    await assert_every_device_reached(rig, event_id)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restarted_during_delivery_loses_no_device(rig: Rig, mode: str) -> None:
    rig.sink.sink.delay = 0.2
    await rig.start_workers(paced=False)
    event_id = await rig.publish()
    await mid_delivery(rig, event_id)
    await restart_postgres(rig, mode)
    await assert_every_device_reached(rig, event_id)


async def test_sqs_losing_every_message_during_fan_out_loses_no_device(rig: Rig) -> None:
    rig.sink.sink.delay = 0.05
    await rig.start_workers(paced=True)
    event_id = await rig.publish()
    await mid_fan_out(rig, event_id)
    await lose_every_message(rig)
    await assert_every_device_reached(rig, event_id)


async def test_sqs_losing_every_message_during_delivery_loses_no_device(rig: Rig) -> None:
    rig.sink.sink.delay = 0.2
    await rig.start_workers(paced=False)
    event_id = await rig.publish()
    await mid_delivery(rig, event_id)
    await lose_every_message(rig)
    await assert_every_device_reached(rig, event_id)
