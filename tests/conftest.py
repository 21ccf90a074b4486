"""Real services for the tests, started once per session.

PostgreSQL: FANOUT_TEST_DATABASE_URL if set, else the server on 127.0.0.1:5432 if one
answers, else an embedded one (pgserver). Each test works in a database of its own,
copied from a migrated template made once per session.
SQS: moto's server on a loopback port, spoken to over HTTP by the production client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.services import embedded_postgres, local_sqs_server
from fanout.local.sink import EmbeddedSink, PushSink
from fanout.queue.admin import create_queues
from fanout.queue.sqs import Queues, open_client, open_queues
from fanout.runtime.pipeline import Pipeline
from fanout.store import connect, create_pool
from fanout.store.migrate import migrate


def _local_postgres_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    if url := os.environ.get("FANOUT_TEST_DATABASE_URL"):
        yield url
    elif _local_postgres_answers():
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        with embedded_postgres() as url:
            yield url


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_template(server_url: str) -> Iterator[str]:
    """A migrated database, made once per session, that each test's database copies.
    Its name is random, so runs side by side never meet; it is dropped at the end, also
    when the tests or the migration fail."""
    name = f"fanout_template_{secrets.token_hex(4)}"

    async def migrated() -> None:
        conn = await connect(_with_database(server_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(migrated())
        yield name
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def _copy_of(server_url: str, template: str) -> Iterator[str]:
    name = f"fanout_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _with_database(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(server_url: str, database_template: str) -> Iterator[str]:
    """A fresh, migrated database for each test, dropped after it.

    One per test, not per session: the reconciler of a worker in one test must never find
    another test's unfinished work and send it into this test's queues.
    """
    with _copy_of(server_url, database_template) as url:
        yield url


@pytest.fixture(scope="session")
def session_database_url(server_url: str, database_template: str) -> Iterator[str]:
    """One database for fixtures that live the whole session (the API server)."""
    with _copy_of(server_url, database_template) as url:
        yield url


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    with local_sqs_server() as url:
        yield url


@pytest.fixture
def settings(database_url: str, sqs_endpoint: str) -> Settings:
    """Settings for one test: its own queues; short timeouts so retries come quickly."""
    return Settings(
        database_url=SecretStr(database_url),
        sqs_endpoint_url=sqs_endpoint,
        queue_prefix=f"t{secrets.token_hex(5)}",
        fanout_queue_url=None,
        delivery_queue_url=None,
        visibility_timeout=5,
        poll_wait_seconds=1,
        max_receive_count=2,
        retry_base_delay=0,
        shutdown_grace_seconds=5,
    )


@pytest.fixture
async def queues(settings: Settings) -> AsyncIterator[Queues]:
    async with open_client(settings) as client:
        await create_queues(client, settings)
        yield await open_queues(client, settings)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings)
    yield pool
    await pool.close()


@pytest.fixture
async def sink() -> AsyncIterator[EmbeddedSink]:
    async with EmbeddedSink(PushSink()) as sink:
        yield sink


@pytest.fixture
async def pipeline(settings: Settings, sink: EmbeddedSink) -> AsyncIterator[Pipeline]:
    """Everything a stage needs, delivering to the test's sink."""
    from tests.helpers import sink_pipeline

    async with sink_pipeline(settings, sink.url) as pipeline:
        yield pipeline


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.shared_services import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def pgbouncer_server_url(server_url: str) -> Iterator[str]:
    """The test PostgreSQL behind a real PgBouncer in transaction pooling mode."""
    from tests.shared_services import pgbouncer

    with pgbouncer(server_url) as url:
        yield url
