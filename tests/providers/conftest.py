from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from fanout.config import Settings
from fanout.local.emulators.stack import LocalPushServices, local_push_services
from fanout.providers import build_providers
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.store import devices, subscriptions
from fanout.store.subscriptions import find_or_create


@pytest.fixture(autouse=True)
def fresh_renderings() -> None:
    """The delivery stage keeps renderings per (event id, locale) for the process; every
    test's database numbers its events from 1, so an earlier test's event 1 (tests/faults
    publish 'New book' without a body) was sent here in place of this test's."""
    from fanout.stages import delivery

    delivery._RENDERED.clear()


@pytest.fixture
async def services() -> AsyncIterator[LocalPushServices]:
    async with local_push_services() as services:
        yield services


@pytest.fixture
def push_settings(settings: Settings, services: LocalPushServices) -> Settings:
    return settings.model_copy(update=services.settings)


@pytest.fixture
async def push_pipeline(push_settings: Settings) -> AsyncIterator[Pipeline]:
    async with open_client(push_settings) as client:
        await create_queues(client, push_settings)
    async with Pipeline.open(push_settings) as pipeline:
        yield pipeline


async def add_devices(
    pool: asyncpg.Pool, services: LocalPushServices, platform: str, count: int
) -> tuple[str, list[int], list[str]]:
    """A topic with ``count`` users, one device each on ``platform``; returns its tokens."""
    run = secrets.token_hex(4)
    topic = f"prov:{run}"
    ids, tokens = [], []
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, subscriptions.UPSERT_TOPIC, topic, 1)
        for i in range(count):
            user = await find_or_create(conn, subscriptions.UPSERT_USER, f"{run}-{i}", 1)
            await conn.execute(subscriptions.SUBSCRIBE, topic_id, user)
            if platform == "apns":
                token, keys = secrets.token_hex(32), (None, None)
            elif platform == "fcm":
                token, keys = f"fcm-{run}-{i}:APA91b{secrets.token_urlsafe(100)}", (None, None)
            else:
                token = f"{services.webpush_endpoint_base}{run}-{i}"
                keys = (services.p256dh, services.auth)
            row = await conn.fetchrow(
                devices.UPSERT_DEVICE, user, platform, token, *keys, "en", 1, False
            )
            ids.append(row["id"])
            tokens.append(token if platform != "webpush" else f"{run}-{i}")
    return topic, ids, tokens


__all__ = ["add_devices", "build_providers"]
