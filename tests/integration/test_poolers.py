"""Every path through a real PgBouncer in transaction pooling mode: the API, both stages
and the reconciler as processes, the demo, and a representative set of the pipeline's
tests re-run with their database behind PgBouncer (``settings`` below).

In transaction mode consecutive transactions of one client may run on different server
connections, so anything that outlived a transaction on the server (a prepared
statement, a SET, an advisory lock) would fail here: FANOUT_DATABASE_POOLER=pgbouncer
turns asyncpg's statement cache off, and migrations connect directly
(FANOUT_DATABASE_DIRECT_URL).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import events, subscriptions
from tests.api.conftest import start_server
from tests.helpers import make_topic

# The pipeline's own tests, collected again here with ``settings`` behind PgBouncer.
from tests.integration.test_delivery_stage import (  # noqa: F401
    test_invalid_tokens_are_deactivated_in_one_go,
    test_only_the_failed_devices_are_retried,
    test_redelivered_batch_sends_nothing_twice,
)
from tests.integration.test_demo_runs import run_demo
from tests.integration.test_fanout_stage import (  # noqa: F401
    test_paging_across_shard_boundaries_misses_and_doubles_nobody,
    test_redelivered_plan_message_fans_out_once,
)
from tests.integration.test_liveness import (  # noqa: F401
    test_delivery_batches_lost_by_the_queue_are_reread_from_their_users,
    test_lost_fanout_messages_are_sent_again_and_resume_at_the_checkpoint,
)
from tests.integration.test_worker import (  # noqa: F401
    running_worker,
    test_event_left_pending_by_a_crash_is_sent_by_the_reconciler,
    test_published_event_reaches_every_device_through_the_worker,
)
from tests.processes import stop


def _through(pooler_url: str, database_url: str) -> str:
    """``database_url``'s database, reached through the pooler."""
    return urlunsplit(urlsplit(pooler_url)._replace(path=urlsplit(database_url).path))


@pytest.fixture
def settings(settings: Settings, database_url: str, pgbouncer_server_url: str) -> Settings:
    """The conftest's settings, with the database behind PgBouncer."""
    return settings.model_copy(
        update={
            "database_url": SecretStr(_through(pgbouncer_server_url, database_url)),
            "database_pooler": "pgbouncer",
            "database_direct_url": SecretStr(database_url),
        }
    )


@pytest.fixture
async def direct_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """PostgreSQL itself: to set the scene and look at the outcome, not under test."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


def _env(settings: Settings, **more: str) -> dict[str, str]:
    assert settings.database_direct_url is not None
    return {
        "FANOUT_DATABASE_URL": settings.database_dsn(),
        "FANOUT_DATABASE_POOLER": "pgbouncer",
        "FANOUT_DATABASE_DIRECT_URL": settings.database_direct_url.get_secret_value(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_VISIBILITY_TIMEOUT": "5",
        "FANOUT_POLL_WAIT_SECONDS": "1",
        **more,
    }


def _fanout(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fanout", *args],
        env=worker_environment(_env(settings)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_settings_really_go_through_pgbouncer(
    settings: Settings, pgbouncer_server_url: str
) -> None:
    assert urlsplit(settings.database_dsn()).port == urlsplit(pgbouncer_server_url).port


async def test_api_worker_and_reconciler_processes_through_pgbouncer(
    settings: Settings,
    direct_pool: asyncpg.Pool,
    sink: EmbeddedSink,
    tmp_path: Path,
) -> None:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    async with direct_pool.acquire() as conn:
        _, token = await create_api_key(conn, ["publish", "read"], "pooler test")
    topic = await make_topic(direct_pool, 60, devices_per_user=(1, 2))

    # Migrations go to PostgreSQL directly; everything else through PgBouncer.
    assert "up to date" in _fanout(settings, "migrate").stderr

    server, url = start_server(settings, tmp_path / "api.log", **_env(settings))
    worker = WorkerProcess(
        "all",
        worker_environment(_env(settings, FANOUT_PROVIDER="sink", FANOUT_SINK_URL=sink.url)),
        tmp_path / "worker.log",
    )
    try:
        worker.start()
        worker.wait_until_consuming()
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api:
            accepted = await api.post(
                "/v1/events",
                json={"topic": topic.key, "notification": {"title": "through a pooler"}},
            )
            assert accepted.status_code == 202, accepted.text
            event_id = accepted.json()["event_id"]
            status = await _wait_for_status(api, event_id, "delivered")
        assert status["sent"] == len(topic.device_ids) == 90
        assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (90, 0)
    finally:
        worker.stop()
        stop(server)
    assert "ERROR" not in worker.log_file.read_text()
    # A reconciler pass and the CLI's own connection, through PgBouncer.
    assert '"events_resent"' in _fanout(settings, "reconcile").stdout
    assert '"delivered"' in _fanout(settings, "status", str(event_id)).stdout


async def _wait_for_status(api: httpx.AsyncClient, event_id: int, state: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        body: dict = (await api.get(f"/v1/events/{event_id}")).json()  # type: ignore[type-arg]
        if body.get("status") == state:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"event {event_id} not {state}: {body}")


def test_the_demo_through_pgbouncer(settings: Settings) -> None:
    assert settings.database_direct_url is not None
    summary = run_demo(
        {
            "FANOUT_DATABASE_URL": settings.database_dsn(),
            "FANOUT_DATABASE_POOLER": "pgbouncer",
            "FANOUT_DATABASE_DIRECT_URL": settings.database_direct_url.get_secret_value(),
        },
        1000,
    )
    assert summary["delivered"] == summary["devices"] == 1000


async def test_nothing_is_left_prepared_on_pgbouncers_server_connections(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """What would fail on the next transaction's server connection (and pin RDS Proxy):
    a named prepared statement. The pool (through PgBouncer) runs the store's statements,
    then every server connection it can reach is asked what it holds prepared."""
    topic = await make_topic(pool, 5)
    for _ in range(10):
        async with pool.acquire() as conn:
            await conn.fetch(events.EVENT_PROGRESS, 0)
            await conn.fetchval(subscriptions.UPSERT_TOPIC, topic.key, 1)
    held = await asyncio.gather(
        *(_prepared_statements(pool) for _ in range(settings.database_pool_size))
    )
    assert set(held) == {0}


async def _prepared_statements(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
        await asyncio.sleep(0.05)  # hold it, so the others land on other connections
        return count


def test_migrating_through_pgbouncer_without_a_direct_url_is_one_line_naming_it(
    settings: Settings,
) -> None:
    env = {k: v for k, v in _env(settings).items() if k != "FANOUT_DATABASE_DIRECT_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "migrate"],
        env=worker_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "FANOUT_DATABASE_DIRECT_URL is not set" in lines[0]
