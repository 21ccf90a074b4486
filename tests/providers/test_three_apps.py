"""Three apps on one deployment, each with its own APNs key (team, key id, bundle id), FCM
project and VAPID key, against emulators that know all three and check every push's
credential against the app its device belongs to: each device gets its push signed by its
own app's credential, never another's, and one app's key refused holds only its devices."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fanout.config import Settings
from fanout.credentials.stored import required_keyring, store_credential
from fanout.local.emulators.stack import LocalPushServices
from fanout.metrics import PROVIDER_OUTCOMES
from fanout.notification import Notification
from fanout.runtime.pipeline import Pipeline
from fanout.stages.progress import load_event_status
from fanout.stages.publish import publish
from tests.helpers import drain, run_everything
from tests.providers.three_apps import (
    DEVICES_PER_PLATFORM,
    PLATFORMS,
    TOPIC,
    apps_pipeline,
    merged,
    publish_to_each,
    sealing_settings,
    signers,
    three_apps,
)


@pytest.fixture
def app_settings(push_settings: Settings) -> Settings:
    return sealing_settings(push_settings)


@pytest.fixture
async def pipeline(app_settings: Settings) -> AsyncIterator[Pipeline]:
    async with apps_pipeline(app_settings) as opened:
        yield opened


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
    # APNs: 400 DeviceTokenNotForTopic and FCM: 403 SENDER_ID_MISMATCH blame the token, but
    # no push with the credential was ever accepted: tried again until they count failed,
    # none retired; the push service's 403 for a VAPID key not the subscription's holds the
    # Web Push ones.
    assert (status.invalid, status.failed) == (0, 2 * DEVICES_PER_PLATFORM)
    assert sum(status.held_by_breaker.values()) == DEVICES_PER_PLATFORM
    async with pipeline.pool.acquire() as conn:
        retired = await conn.fetchval(
            "SELECT count(*) FROM devices WHERE app_id = $1 AND NOT active", made[1].row.id
        )
    assert retired == 0
