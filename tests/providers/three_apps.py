"""Three apps on one deployment, each with its own APNs key (team, key id, bundle id), FCM
project and VAPID key stored sealed, and devices on every platform, against emulators that
know all three: what tests/providers/test_three_apps.py and test_refused_credentials.py
share."""

from __future__ import annotations

import collections
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import required_keyring, store_credential
from fanout.local.emulators.stack import EmulatedApp, LocalPushServices
from fanout.notification import Notification
from fanout.providers import build_providers
from fanout.providers.apps import REFRESH_SECONDS, AppProviders
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.stages.publish import publish
from fanout.store import apps, devices, subscriptions

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


def sealing_settings(push_settings: Settings) -> Settings:
    """Credentials sealed under a secret key; a refused credential's breaker cools down in
    half a second (held batches come back after SQS's shortest delay, 1 s, so the
    cool-down is always over when they do)."""
    return push_settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "breaker_cooldown_seconds": 0.5}
    )


@contextlib.asynccontextmanager
async def apps_pipeline(
    settings: Settings, *, refresh_seconds: float = REFRESH_SECONDS
) -> AsyncIterator[Pipeline]:
    """A pipeline sending with each app's stored credentials (``AppProviders``), which it
    checks for a change every ``refresh_seconds``."""
    async with open_client(settings) as client:
        await create_queues(client, settings)
    keyring = required_keyring(settings)
    providers = AppProviders(
        settings, build_providers(settings), keyring, refresh_seconds=refresh_seconds
    )
    try:
        async with Pipeline.open(settings, providers=providers) as opened:
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
    """By service: the pushes it accepted, by token and the credential that signed them."""
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
