"""The `fanout` commands as an operator runs them: processes, exit codes, what they print."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest

from fanout.config import Settings
from tests.conftest import _with_database


def fanout(
    settings: Settings, *args: str, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
        "FANOUT_DATABASE_URL": database_url or settings.database_dsn(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_MAX_RECEIVE_COUNT": "1",
        "FANOUT_POLL_WAIT_SECONDS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "fanout", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_operator_commands_end_to_end(settings: Settings) -> None:
    assert fanout(settings, "migrate").returncode == 0
    assert "up to date" in fanout(settings, "migrate").stderr
    assert fanout(settings, "queues", "create").returncode == 0

    created = fanout(settings, "apikey", "create", "--scope", "read", "--name", "cli-test")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    assert key_id in fanout(settings, "apikey", "list").stdout
    assert fanout(settings, "apikey", "revoke", key_id).returncode == 0
    assert "revoked" in fanout(settings, "apikey", "list").stdout
    refused = fanout(settings, "apikey", "create", "--scope", "bogus")
    assert refused.returncode != 0 and "publish, manage, read" in refused.stderr

    published = fanout(settings, "publish", "author:cli", "--title", "Hello")
    assert published.returncode == 0, published.stderr
    status = fanout(settings, "status", published.stdout.strip())
    assert status.returncode == 0 and '"status"' in status.stdout


def test_dlq_commands_show_and_redrive(settings: Settings) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    from fanout.queue.sqs import open_client, open_queues

    async def poison() -> None:
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            await queues.delivery.send("garbage")
            [message] = await queues.delivery.receive(1, wait_seconds=1)
            await queues.delivery.dead_letter(message, "PoisonMessage: test")

    asyncio.run(poison())
    assert "delivery-dlq: 1" in fanout(settings, "dlq", "list").stdout
    shown = fanout(settings, "dlq", "show", "--queue", "delivery").stdout
    assert "PoisonMessage: test" in shown and "garbage" in shown
    assert (
        "1 message(s) moved back"
        in fanout(settings, "dlq", "redrive", "--queue", "delivery").stdout
    )
    assert "delivery-dlq: 0" in fanout(settings, "dlq", "list").stdout


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A database without the schema, named for this test alone and dropped after it."""
    name = f"fanout_cli_empty_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server_url, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_missing_queue_is_one_clear_line(settings: Settings) -> None:
    result = fanout(settings, "publish", "author:x", "--title", "t")
    assert result.returncode == 1
    assert "run `fanout queues create`" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_schema_is_one_clear_line(settings: Settings, empty_database: str) -> None:
    assert fanout(settings, "queues", "create").returncode == 0
    result = fanout(settings, "publish", "author:x", "--title", "t", database_url=empty_database)
    assert result.returncode == 1
    assert "run `fanout migrate`" in result.stderr
    assert "Traceback" not in result.stderr
