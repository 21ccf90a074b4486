"""Upgrade in place: a database the previous release (schema 10, before apps) left, with an
event published and not yet fanned out, is migrated; the app `default` owns every row, the
old API key is default's, and the event published before the upgrade and one published
after are each delivered exactly once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from fanout.api.keys import find_api_key
from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.messages import FanoutTask
from fanout.stages.publish import publish
from fanout.store import connect
from fanout.store.apps import DEFAULT_APP, DEFAULT_APP_ID
from fanout.store.migrate import migrate
from tests.conftest import _admin, _with_database
from tests.helpers import run_everything, sink_pipeline, status

# The release before apps: migrations 0001 to 0010.
PREVIOUS_SCHEMA = 10
USERS = 30


@pytest.fixture
async def previous_release_url(server_url: str) -> AsyncIterator[str]:
    """An empty database migrated as the previous release migrated it."""
    name = f"fanout_upgrade_{secrets.token_hex(5)}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        conn = await connect(url)
        try:
            assert (await migrate(conn, up_to=PREVIOUS_SCHEMA))[-1].startswith("0010_")
        finally:
            await conn.close()
        yield url
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _previous_release_data(conn: asyncpg.Connection) -> tuple[int, str]:
    """A topic of USERS subscribers with a device each and an API key, written as the
    previous release wrote them (no app anywhere); the API key's token."""
    topic_id = await conn.fetchval("INSERT INTO topics (key) VALUES ('author:old') RETURNING id")
    user_ids = [
        await conn.fetchval("INSERT INTO users (external_id) VALUES ($1) RETURNING id", f"old-{i}")
        for i in range(USERS)
    ]
    await conn.executemany(
        "INSERT INTO subscriptions (topic_id, user_id) VALUES ($1, $2)",
        [(topic_id, u) for u in user_ids],
    )
    await conn.executemany(
        "INSERT INTO devices (user_id, platform, token, locale) VALUES ($1, 'apns', $2, 'en')",
        [(u, secrets.token_hex(32)) for u in user_ids],
    )
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32).replace("_", "-")
    await conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, scopes, name) VALUES ($1, $2, $3, 'old')",
        key_id,
        hashlib.sha256(secret.encode()).digest(),
        ["publish", "read"],
    )
    return topic_id, f"fo_{key_id}_{secret}"


async def test_an_event_published_before_the_upgrade_and_one_after_are_each_delivered_once(
    previous_release_url: str, settings: Settings, sink: EmbeddedSink
) -> None:
    settings = settings.model_copy(update={"database_url": SecretStr(previous_release_url)})
    conn = await connect(previous_release_url)
    try:
        topic_id, old_token = await _previous_release_data(conn)
        # Published by the previous release: committed and enqueued, not yet fanned out.
        before = await conn.fetchval(
            """INSERT INTO events (topic_id, notification, status, enqueued_at, due_at)
               VALUES ($1, $2, 'enqueued', now(), now() + interval '1 hour') RETURNING id""",
            topic_id,
            {"title": "before the upgrade"},  # fanout's connections encode jsonb
        )
    finally:
        await conn.close()

    async with sink_pipeline(settings, sink.url) as pipeline:
        await pipeline.queues.fanout.send(FanoutTask(before).encode())

        async with pipeline.pool.acquire() as conn:
            applied = await migrate(conn)
            assert applied[0].startswith("0011_") and len(applied) >= 2
            for table in ("users", "topics", "devices", "events", "api_keys"):
                apps_of = await conn.fetchval(f"SELECT array_agg(DISTINCT app_id) FROM {table}")
                assert apps_of == [DEFAULT_APP_ID], table
            old_key = await find_api_key(conn, old_token)
        assert old_key is not None and old_key.app == DEFAULT_APP
        assert old_key.scopes == {"publish", "read"}

        await run_everything(pipeline)
        after = await publish(
            pipeline.pool,
            pipeline.queues,
            Notification(title="after the upgrade"),
            app_id=old_key.app_id,
            topic="author:old",
            api_key_id=old_key.id,
        )
        await run_everything(pipeline)

        for event_id in (before, after.event_id):
            found = await status(pipeline, event_id)
            assert (found.status, found.sent) == ("delivered", USERS), event_id
    ledger = sink.sink.ledger
    assert (ledger.unique, ledger.duplicates) == (2 * USERS, 0)
