"""Every push carries its own device's open token for its own event, where each platform
hands an app its data: the emulators record the ``fo_open`` of each push they accept."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.emulators.stack import LocalPushServices
from fanout.notification import Notification
from fanout.open_tokens import OpenTokens
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.stages.fanout import plan_event
from fanout.stages.opens import record_open
from fanout.stages.publish import record_event
from tests.helpers import run_everything, status
from tests.providers.conftest import add_devices

KEY = "open-token-key-for-the-emulators-test"


@pytest.fixture
async def opens_pipeline(push_settings: Settings) -> AsyncIterator[Pipeline]:
    settings = push_settings.model_copy(update={"open_token_key": SecretStr(KEY)})
    async with open_client(settings) as client:
        await create_queues(client, settings)
    async with Pipeline.open(settings) as pipeline:
        yield pipeline


async def _publish(pipeline: Pipeline, notification: Notification, topic: str) -> int:
    event = await record_event(pipeline.pool, notification, topic=topic)
    await plan_event(event.event_id, pipeline.pool, pipeline.queues, pipeline.settings)
    return event.event_id


@pytest.mark.parametrize("kind", ["alert", "background"])
async def test_each_push_carries_a_valid_open_token_of_its_device_and_event(
    opens_pipeline: Pipeline, services: LocalPushServices, kind: str
) -> None:
    emulators = {"apns": services.apns, "fcm": services.fcm, "webpush": services.webpush}
    carried = {platform: e.record_open_tokens() for platform, e in emulators.items()}
    device_of: dict[tuple[str, str], int] = {}
    topics = []
    for platform in emulators:
        topic, ids, tokens = await add_devices(opens_pipeline.pool, services, platform, 20)
        device_of.update({(platform, token): id_ for id_, token in zip(ids, tokens, strict=True)})
        topics.append(topic)
    notification = (
        Notification(title="Opened?", data={"book": "1"})
        if kind == "alert"
        else Notification(kind="background", data={"book": "1"})
    )
    events = [await _publish(opens_pipeline, notification, topic) for topic in topics]
    await run_everything(opens_pipeline)
    for event_id in events:
        assert (await status(opens_pipeline, event_id)).sent == 20

    checker = OpenTokens(KEY.encode())
    for platform, event_id in zip(emulators, events, strict=True):
        assert len(carried[platform]) == 20
        for token, opens in carried[platform].items():
            assert len(opens) == 1 and opens[0] is not None, (platform, token, opens)
            found = checker.verify(opens[0])
            assert (found.event_id, found.device_id) == (event_id, device_of[platform, token])


async def test_no_open_token_without_a_key(
    push_settings: Settings, services: LocalPushServices
) -> None:
    settings = push_settings.model_copy(update={"open_token_key": None, "secret_key": None})
    async with open_client(settings) as client:
        await create_queues(client, settings)
    async with Pipeline.open(settings) as pipeline:
        carried = services.apns.record_open_tokens()
        topic, _, _ = await add_devices(pipeline.pool, services, "apns", 3)
        event_id = await _publish(pipeline, Notification(title="t"), topic)
        await run_everything(pipeline)
        assert (await status(pipeline, event_id)).sent == 3
    assert [opens for opens in carried.values()] == [[None]] * 3


async def test_the_tokens_pushes_carried_count_as_opens_per_provider(
    opens_pipeline: Pipeline, services: LocalPushServices
) -> None:
    """The loop closed: tokens as the emulators received them, posted back for half of
    each platform's devices (and some twice), give each provider's open rate."""
    emulators = {"apns": services.apns, "fcm": services.fcm, "webpush": services.webpush}
    carried = {platform: e.record_open_tokens() for platform, e in emulators.items()}
    events = []
    for platform in emulators:
        topic, _, _ = await add_devices(opens_pipeline.pool, services, platform, 10)
        events.append(await _publish(opens_pipeline, Notification(title="t"), topic))
    await run_everything(opens_pipeline)
    checker = OpenTokens(KEY.encode())
    for platform, event_id in zip(emulators, events, strict=True):
        received = [opens[0] for opens in carried[platform].values()]
        for token in received[:5] + received[:2]:
            assert token is not None
            await record_open(
                opens_pipeline.pool,
                checker,
                token,
                action=None,
                opened_at=None,
                window_seconds=86400,
            )
        found = (await status(opens_pipeline, event_id)).opens
        assert found is not None
        assert (found.opened, found.open_rate) == (5, 0.5)
        provider = found.by_provider[platform]
        assert (provider.opened, provider.sent, provider.open_rate) == (5, 10, 0.5)
