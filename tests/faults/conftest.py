"""Shared pieces of the fault tests: a worker in this process, waiting, counting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.worker import run_worker
from fanout.store import events
from fanout.store.lifecycle import TERMINAL_STATES
from tests.helpers import sink_pipeline


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    """Small batches (many of them), retries soon, and enough tries to outlast an outage."""
    return settings.model_copy(
        update={
            "batch_max_bytes": 8192,
            "page_size": 100,
            "retry_base_delay": 1,
            "max_receive_count": 20,
            "delivery_max_attempts": 8,
        }
    )


@contextlib.asynccontextmanager
async def worker_in_process(settings: Settings, sink: EmbeddedSink) -> AsyncIterator[Pipeline]:
    async with sink_pipeline(settings, sink.url) as pipeline:
        stopping = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stopping, pipeline=pipeline))
        try:
            yield pipeline
        finally:
            stopping.set()
            await task


async def wait_until_delivered(
    pool: asyncpg.Pool, event_id: int, devices: int, timeout: float = 90
) -> asyncpg.Record:
    """Until the event's outcomes account for every device; returns its progress."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            async with pool.acquire() as conn:
                row = await conn.fetchrow(events.EVENT_PROGRESS, event_id)
            done = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
            if row["status"] in TERMINAL_STATES and done >= devices:
                return row
        await asyncio.sleep(0.2)
    raise AssertionError(f"event {event_id} not delivered within {timeout}s: {row and dict(row)}")


def report(name: str, devices: int, ledger: object) -> None:
    """The figures of one fault run (shown with pytest -s)."""
    unique = ledger.unique  # type: ignore[attr-defined]
    duplicates = ledger.duplicates  # type: ignore[attr-defined]
    print(
        f"\nFAULT {name}: devices={devices} delivered={unique} "
        f"duplicates={duplicates} lost={devices - unique}"
    )


def exactly_once(sink: EmbeddedSink, devices: int) -> None:
    """Every one of ``devices`` reached the sink, none twice (the figures shown with -s)."""
    ledger = sink.sink.ledger
    report(
        os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0], devices, ledger
    )
    assert ledger.unique == devices, "a device was skipped"
    assert ledger.duplicates == 0, f"{ledger.duplicates} duplicates"


def sink_worker(
    settings: Settings, role: str, sink_url: str, log_dir: Path, **env: str
) -> WorkerProcess:
    """A `fanout worker --role ROLE` process (not started) on the test's database and
    queues, delivering to the sink, logging to ``log_dir``."""
    fanout_env = {
        "FANOUT_DATABASE_URL": settings.database_dsn(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_PROVIDER": "sink",
        "FANOUT_SINK_URL": sink_url,
        "FANOUT_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
        "FANOUT_POLL_WAIT_SECONDS": "1",
        "FANOUT_MAX_RECEIVE_COUNT": "20",
        "FANOUT_BATCH_MAX_BYTES": str(settings.batch_max_bytes),
        **env,
    }
    log = log_dir / f"{role}-{secrets.token_hex(3)}.log"
    return WorkerProcess(role, worker_environment(fanout_env), log)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()
