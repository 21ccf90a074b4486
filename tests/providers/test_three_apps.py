"""Three apps on one deployment, each with its own APNs key (team, key id, bundle id), FCM
project and VAPID key, against emulators that know all three and check every push's
credential against the app its device belongs to: each device gets its push signed by its
own app's credential, never another's, and one app's key refused holds only its devices."""

from __future__ import annotations

import collections
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import required_keyring, store_credential
from fanout.local.emulators.stack import EmulatedApp, LocalPushServices
from fanout.metrics import PROVIDER_OUTCOMES
from fanout.notification import Notification
from fanout.providers import build_providers
from fanout.providers.apps import AppProviders
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.stages.progress import load_event_status
from fanout.stages.publish import publish
from fanout.store import apps, devices, subscriptions
from tests.helpers import drain, run_everything

PLATFORMS = ("apns", "fcm", "webpush")
DEVICES_PER_PLATFORM = 4  # per app: one user each
TOPIC = "news"  # the same topic key in every app: three topics


@dataclass
class App:
    row: apps.App
    emulated: EmulatedApp
    tokens: dict[str, list[str]] = field(default_factory=dict)  # platform -> device tokens

    def expected_signers(self, pushes: int) -> dict[str, dict[tuple[str, str], int]]:
        """By service: each device's token, signed ``pushes`` times by this app's credential."""
        return {
            platform: {
                (EmulatedApp.wire_token(platform, token), self.emulated.signer(platform)): pushes
                for token in tokens
            }
            for platform, tokens in self.tokens.items()
        }


@pytest.fixture
def app_settings(push_settings: Settings) -> Settings:
    """Credentials sealed under a secret key; a refused credential's breaker cools down in
    half a second (held batches come back after SQS's shortest delay, 1 s)."""
    return push_settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "breaker_cooldown_seconds": 0.5}
    )


@pytest.fixture
async def pipeline(app_settings: Settings) -> AsyncIterator[Pipeline]:
    async with open_client(app_settings) as client:
        await create_queues(client, app_settings)
    keyring = required_keyring(app_settings)
    providers = AppProviders(app_settings, build_providers(app_settings), keyring)
    try:
        async with Pipeline.open(app_settings, providers=providers) as opened:
            yield opened
    finally:
        await providers.aclose()


async def three_apps(
    pipeline: Pipeline, services: LocalPushServices, settings: Settings
) -> list[App]:
    """Three apps with their credentials stored and devices on every platform, each
    device's user subscribed to the app's ``news``."""
    keyring = required_keyring(settings)
    made = []
    async with pipeline.pool.acquire() as conn:
        for index in range(3):
            name = f"app{index}{secrets.token_hex(2)}"
            row = await apps.insert_app(conn, key=name, name=name, settings={})
            assert row is not None
            app = App(row, services.add_app(name))
            for credential in app.emulated.credentials:
                await store_credential(conn, app=row, credential=credential, keyring=keyring)
            topic_id = await subscriptions.find_or_create_topic(conn, app_id=row.id, topic=TOPIC)
            for platform in PLATFORMS:
                app.tokens[platform] = []
                for i in range(DEVICES_PER_PLATFORM):
                    user_id = await subscriptions.find_or_create_user(
                        conn, app_id=row.id, user=f"{platform}-{i}"
                    )
                    await subscriptions.subscribe(conn, topic_id=topic_id, user_id=user_id)
                    token = app.emulated.device_token(platform)
                    web = platform == "webpush"
                    await devices.upsert_device(
                        conn,
                        app_id=row.id,
                        user_id=user_id,
                        platform=platform,
                        token=token,
                        web_push_p256dh=services.p256dh if web else None,
                        web_push_auth=services.auth if web else None,
                        locale=None,
                    )
                    app.tokens[platform].append(token)
            made.append(app)
    return made


def signers(services: LocalPushServices) -> dict[str, dict[tuple[str, str], int]]:
    found = {p: getattr(services, p).signers for p in PLATFORMS}
    return {platform: dict(counter) for platform, counter in found.items() if counter is not None}


def merged(*by_app: dict[str, dict[tuple[str, str], int]]) -> dict[str, dict[tuple[str, str], int]]:
    out: dict[str, dict[tuple[str, str], int]] = collections.defaultdict(dict)
    for expected in by_app:
        for platform, counts in expected.items():
            out[platform] |= counts
    return dict(out)


async def publish_to_each(pipeline: Pipeline, made: list[App]) -> list[int]:
    events = []
    for app in made:
        published = await publish(
            pipeline.pool,
            pipeline.queues,
            Notification(title=f"news of {app.row.key}"),
            app_id=app.row.id,
            topic=TOPIC,
        )
        events.append(published.event_id)
    return events


async def test_every_device_gets_one_push_signed_by_its_own_apps_credential(
    pipeline: Pipeline, services: LocalPushServices, app_settings: Settings
) -> None:
    for platform in PLATFORMS:
        getattr(services, platform).record_signers()
    made = await three_apps(pipeline, services, app_settings)
    events = await publish_to_each(pipeline, made)
    await run_everything(pipeline)

    assert signers(services) == merged(*(app.expected_signers(1) for app in made))
    # The outcome counters say which app each push was for (FANOUT_METRICS_APP_LABEL).
    for app in made:
        for platform in PLATFORMS:
            accepted = PROVIDER_OUTCOMES.labels(platform, app.row.key, "ok", "")
            assert accepted._value.get() == DEVICES_PER_PLATFORM
    for event_id in events:
        status = await load_event_status(pipeline.pool, event_id)
        assert status is not None
        assert (status.status, status.sent) == ("delivered", 3 * DEVICES_PER_PLATFORM)
    # Three credentials per service, each accepted for its own app's devices only: none
    # refused for a mismatch either (a mismatch would not be in the counts above).
    assert services.apns.refused == services.fcm.refused == services.webpush.refused == 0


async def test_one_apps_apns_key_revoked_mid_send_holds_only_that_apps_devices(
    pipeline: Pipeline, services: LocalPushServices, app_settings: Settings
) -> None:
    """Apple revoking one app's key (403 InvalidProviderToken from then on) in the middle
    of its event's send holds back only that app's APNs devices not sent yet: its FCM and
    Web Push devices and the other apps' devices are delivered as if nothing happened;
    once the key is accepted again, the held devices get their push, once, signed with
    that key."""
    made = await three_apps(pipeline, services, app_settings)
    await publish_to_each(pipeline, made)
    await run_everything(pipeline)  # every app's breakers closed: the keys work
    for platform in PLATFORMS:
        getattr(services, platform).record_signers()

    revoked = made[0]
    sent_before_revoked = 1
    services.apns.revoke_after(revoked.emulated.apns_key_id, sent_before_revoked)
    events = await publish_to_each(pipeline, made)
    await run_everything(pipeline)

    held_devices = DEVICES_PER_PLATFORM - sent_before_revoked
    statuses = [await load_event_status(pipeline.pool, e) for e in events]
    first, *others = statuses
    assert first is not None
    assert first.held_by_breaker == {"apns config: 403 InvalidProviderToken": held_devices}
    assert (first.sent, first.failed, first.invalid) == (
        3 * DEVICES_PER_PLATFORM - held_devices,
        0,
        0,
    )
    for status in others:
        assert status is not None and status.held_by_breaker == {}
        assert (status.status, status.sent) == ("delivered", 3 * DEVICES_PER_PLATFORM)
    expected = merged(*(app.expected_signers(1) for app in made))
    revoked_apns = set(revoked.expected_signers(1)["apns"])
    found = signers(services)
    # Every push accepted was signed by its own app's key; of the revoked app's APNs
    # devices, only those sent before the key was revoked got theirs.
    assert {k: v for k, v in found["apns"].items() if k not in revoked_apns} == {
        k: v for k, v in expected["apns"].items() if k not in revoked_apns
    }
    assert [found["apns"].get(k, 0) for k in revoked_apns].count(1) == sent_before_revoked
    assert set(found["apns"]) <= set(expected["apns"])
    assert (found["fcm"], found["webpush"]) == (expected["fcm"], expected["webpush"])
    async with pipeline.pool.acquire() as conn:
        inactive = await conn.fetchval("SELECT count(*) FROM devices WHERE NOT active")
    assert inactive == 0  # no token blamed for its app's key

    services.apns.revoked_keys.discard(revoked.emulated.apns_key_id)
    for _ in range(5):  # each pass: the held batch back after its delay, one probe
        for body in await drain(pipeline.queues.delivery, at_least=1):
            await pipeline.handle(body)
        status = await load_event_status(pipeline.pool, events[0])
        assert status is not None
        if status.terminal:
            break
    assert (status.status, status.sent, status.held_by_breaker) == (
        "delivered",
        3 * DEVICES_PER_PLATFORM,
        {},
    )
    assert signers(services) == expected


async def test_a_push_signed_by_another_apps_credential_is_refused_by_every_service(
    pipeline: Pipeline, services: LocalPushServices, app_settings: Settings
) -> None:
    """What gives the tests above their teeth: with app 0's credentials stored for app 1
    (a mix-up fanout must never make), the services refuse every push to app 1's devices
    as Apple, FCM and push services do, and none is accepted."""
    for platform in PLATFORMS:
        getattr(services, platform).record_signers()
    made = await three_apps(pipeline, services, app_settings)
    keyring = required_keyring(app_settings)
    async with pipeline.pool.acquire() as conn:
        for credential in made[0].emulated.credentials:
            await store_credential(conn, app=made[1].row, credential=credential, keyring=keyring)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        Notification(title="mixed up"),
        app_id=made[1].row.id,
        topic=TOPIC,
    )
    await run_everything(pipeline)

    assert signers(services) == {platform: {} for platform in PLATFORMS}
    status = await load_event_status(pipeline.pool, published.event_id)
    assert status is not None and status.sent == 0
    # APNs: 400 DeviceTokenNotForTopic and FCM: 403 SENDER_ID_MISMATCH blame the token;
    # the push service's 403 for a VAPID key not the subscription's holds the Web Push ones.
    assert status.invalid == 2 * DEVICES_PER_PLATFORM
    assert sum(status.held_by_breaker.values()) == DEVICES_PER_PLATFORM
