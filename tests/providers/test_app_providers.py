"""Each app pushes with its own stored credential; a credential replaced reaches a running
worker within the refresh interval (60 s), never before its check, without a restart."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import required_keyring, store_credential
from fanout.credentials.validation import apns_credential
from fanout.local.emulators.stack import LocalPushServices, local_push_services
from fanout.notification import Notification
from fanout.providers import build_providers
from fanout.providers.apps import AppProviders
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.stages.publish import publish
from fanout.store import apps, subscriptions
from fanout.store.apps import DEFAULT_APP_ID
from tests.helpers import run_everything, status

TEAM, BUNDLE = "TEAM123456", "com.example.books"


def new_apns_key(services: LocalPushServices) -> tuple[str, str]:
    """A new .p8 key the APNs emulator knows (as Apple knows every key of the team): its
    key id and PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_id = secrets.token_hex(5).upper()
    services.apns.public_keys[key_id] = key.public_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_id, pem


def kids_seen(services: LocalPushServices) -> set[str]:
    """The key ids of the provider tokens the APNs emulator was sent since last cleared."""
    return {jwt.get_unverified_header(token)["kid"] for token in services.apns.jwts_seen}


async def topic_of_one_device(conn: asyncpg.Connection, app_id: int) -> str:
    key = f"books:{secrets.token_hex(4)}"
    topic_id = await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=key)
    user_id = await subscriptions.find_or_create_user(conn, app_id=app_id, user=key)
    await subscriptions.subscribe(conn, topic_id=topic_id, user_id=user_id)
    await conn.execute(
        "INSERT INTO devices (app_id, user_id, platform, token) VALUES ($1, $2, 'apns', $3)",
        app_id,
        user_id,
        secrets.token_hex(32),
    )
    return key


@pytest.fixture
async def services() -> AsyncIterator[LocalPushServices]:
    async with local_push_services() as found:
        yield found


async def test_each_app_pushes_with_its_own_credential_and_a_new_one_reaches_the_worker(
    settings: Settings, services: LocalPushServices
) -> None:
    settings = settings.model_copy(
        update={**services.settings, "secret_key": SecretStr(generate_key())}
    )
    keyring = required_keyring(settings)
    default_kid = settings.apns_key_id
    async with open_client(settings) as client:
        await create_queues(client, settings)
    now = [0.0]
    providers = AppProviders(settings, build_providers(settings), keyring, clock=lambda: now[0])
    try:
        async with Pipeline.open(settings, providers=providers) as pipeline:
            two_kid, two_pem = new_apns_key(services)
            async with pipeline.pool.acquire() as conn:
                two = await apps.insert_app(conn, key="books-two", name="two", settings={})
                assert two is not None
                credential = apns_credential(
                    key_pem=two_pem, key_id=two_kid, team_id=TEAM, bundle_id=BUNDLE
                )
                await store_credential(conn, app=two, credential=credential, keyring=keyring)
                default_topic = await topic_of_one_device(conn, DEFAULT_APP_ID)
                two_topic = await topic_of_one_device(conn, two.id)

            async def push(app_id: int, topic: str) -> set[str]:
                """Publish to the app's topic, deliver it; the key ids it was signed with."""
                services.apns.jwts_seen.clear()
                await publish(
                    pipeline.pool,
                    pipeline.queues,
                    Notification(title="hi"),
                    app_id=app_id,
                    topic=topic,
                )
                await run_everything(pipeline)
                return kids_seen(services)

            # The default app has no stored credential: the FANOUT_APNS_* one.
            assert await push(DEFAULT_APP_ID, default_topic) == {default_kid}
            # Another app: its own, never the settings'.
            assert await push(two.id, two_topic) == {two_kid}

            # Replaced: a worker that checked less than 60 s ago goes on with the one it
            # has; once the interval is over, the new one.
            three_kid, three_pem = new_apns_key(services)
            async with pipeline.pool.acquire() as conn:
                replaced = apns_credential(
                    key_pem=three_pem, key_id=three_kid, team_id=TEAM, bundle_id=BUNDLE
                )
                await store_credential(conn, app=two, credential=replaced, keyring=keyring)
            now[0] += 59
            assert await push(two.id, two_topic) == {two_kid}
            now[0] += 2
            assert await push(two.id, two_topic) == {three_kid}
            # Removed: the app has nothing to push with on APNs; the default app is as
            # it was.
            async with pipeline.pool.acquire() as conn:
                assert await apps.delete_credential(conn, app_id=two.id, provider="apns")
            now[0] += 61
            assert await push(two.id, two_topic) == set()
            assert await push(DEFAULT_APP_ID, default_topic) == {default_kid}
    finally:
        await providers.aclose()
    # Every push reached its device once: default 2, app two 3 (the last had no
    # credential, its device skipped).
    assert (services.apns.ledger.unique, services.apns.ledger.duplicates) == (5, 0)


async def test_sandbox_and_production_devices_of_one_app_are_each_sent_to_their_endpoint(
    settings: Settings, services: LocalPushServices
) -> None:
    """Each APNs device goes to the environment it was registered for, with the app's one
    key; the emulators refuse a token sent to the other one (400 BadDeviceToken), as Apple
    does, so a device registered for the wrong environment is deactivated, not pushed."""
    from fanout.store import devices
    from fanout.store.apps import DEFAULT_APP_ID

    assert services.apns_sandbox is not None
    settings = settings.model_copy(update=services.settings)
    async with open_client(settings) as client:
        await create_queues(client, settings)
    tokens = {name: secrets.token_hex(32) for name in ("release", "debug", "misregistered")}
    # What Apple knows: which environment each token was issued for.
    services.apns.token_environments.update(
        {
            tokens["release"]: "production",
            tokens["debug"]: "sandbox",
            tokens["misregistered"]: "sandbox",  # registered below as production
        }
    )
    async with Pipeline.open(settings) as pipeline:
        async with pipeline.pool.acquire() as conn:
            topic = f"books:{secrets.token_hex(4)}"
            topic_id = await subscriptions.find_or_create_topic(
                conn, app_id=DEFAULT_APP_ID, topic=topic
            )
            ids = {}
            for name, sandbox in (("release", False), ("debug", True), ("misregistered", False)):
                user_id = await subscriptions.find_or_create_user(
                    conn, app_id=DEFAULT_APP_ID, user=f"{topic}-{name}"
                )
                await subscriptions.subscribe(conn, topic_id=topic_id, user_id=user_id)
                registered = await devices.upsert_device(
                    conn,
                    app_id=DEFAULT_APP_ID,
                    user_id=user_id,
                    platform="apns",
                    token=tokens[name],
                    web_push_p256dh=None,
                    web_push_auth=None,
                    locale=None,
                    apns_sandbox=sandbox,
                )
                ids[name] = registered.id
        published = await publish(
            pipeline.pool, pipeline.queues, Notification(title="hi"), topic=topic
        )
        await run_everything(pipeline)
        found = await status(pipeline, published.event_id)
        async with pipeline.pool.acquire() as conn:
            active = dict(
                await conn.fetch(
                    "SELECT id, active FROM devices WHERE id = ANY($1)", list(ids.values())
                )
            )
    assert (found.sent, found.invalid) == (2, 1)
    assert services.apns.ledger.unique == 1 and services.apns_sandbox.ledger.unique == 1
    assert active == {ids["release"]: True, ids["debug"]: True, ids["misregistered"]: False}


async def test_live_activity_tokens_of_a_debug_build_are_sent_to_the_sandbox(
    settings: Settings, services: LocalPushServices
) -> None:
    """A Live Activity's tokens are APNs tokens of the same builds: each goes to the
    environment it was registered for (``apns_environment``, production by default), and
    one registered for the wrong one is retired on Apple's 400 BadDeviceToken."""
    from fanout.notification import LiveActivity
    from fanout.stages.live_activity import publish_update
    from fanout.store import live_activities

    assert services.apns_sandbox is not None
    settings = settings.model_copy(update=services.settings)
    async with open_client(settings) as client:
        await create_queues(client, settings)
    tokens = {name: secrets.token_hex(32) for name in ("release", "debug", "misregistered")}
    services.apns.token_environments.update(
        {
            tokens["release"]: "production",
            tokens["debug"]: "sandbox",
            tokens["misregistered"]: "sandbox",  # registered below as production
        }
    )
    activity = f"match-{secrets.token_hex(4)}"
    async with Pipeline.open(settings) as pipeline:
        async with pipeline.pool.acquire() as conn:
            activity_id = await live_activities.find_or_create_activity(
                conn, app_id=DEFAULT_APP_ID, activity_key=activity
            )
            ids = {}
            for name, sandbox in (("release", False), ("debug", True), ("misregistered", False)):
                user_id = await subscriptions.find_or_create_user(
                    conn, app_id=DEFAULT_APP_ID, user=f"{activity}-{name}"
                )
                registered = await live_activities.upsert_token(
                    conn,
                    activity_id=activity_id,
                    user_id=user_id,
                    kind="activity",
                    token=tokens[name],
                    topic_id=None,
                    apns_sandbox=sandbox,
                )
                ids[name] = registered.id
        live = LiveActivity(event="update", content_state={"score": "1-0"})
        note = Notification(kind="liveactivity", live_activity=live)
        done = await publish_update(pipeline.pool, pipeline.queues, note, activity_key=activity)
        await run_everything(pipeline)
        found = await status(pipeline, done.published.event_id)
        async with pipeline.pool.acquire() as conn:
            active = dict(
                await conn.fetch(
                    "SELECT id, active FROM live_activity_tokens WHERE id = ANY($1)",
                    list(ids.values()),
                )
            )
    assert (found.sent, found.invalid) == (2, 1)
    assert services.apns.ledger.unique == 1 and services.apns_sandbox.ledger.unique == 1
    assert active == {ids["release"]: True, ids["debug"]: True, ids["misregistered"]: False}


async def test_two_senders_of_a_new_app_at_once_keep_one_set_of_providers(
    settings: Settings, services: LocalPushServices
) -> None:
    """Both build the app's providers while the other awaits the database: one set is kept
    and the other closed, never two live sets of connections with one forgotten."""
    settings = settings.model_copy(
        update={**services.settings, "secret_key": SecretStr(generate_key())}
    )
    keyring = required_keyring(settings)
    async with open_client(settings) as client:
        await create_queues(client, settings)
    providers = AppProviders(settings, build_providers(settings), keyring)
    try:
        async with Pipeline.open(settings, providers=providers) as pipeline:
            kid, pem = new_apns_key(services)
            async with pipeline.pool.acquire() as conn:
                app = await apps.insert_app(conn, key="books-race", name="race", settings={})
                assert app is not None
                credential = apns_credential(
                    key_pem=pem, key_id=kid, team_id=TEAM, bundle_id=BUNDLE
                )
                await store_credential(conn, app=app, credential=credential, keyring=keyring)

            async def lease() -> object:
                async with providers.lease(pipeline.pool, app.id) as leased:
                    return leased["apns"]

            first, second = await asyncio.gather(lease(), lease())
            assert first is second  # the same provider, the other one built was closed
            assert len(providers._entries) == 1
    finally:
        await providers.aclose()
