"""``fanout demo --apps N``: N apps on one deployment, each with its own credentials.

Each app gets its own APNs key (team, key id, bundle id), Firebase project and VAPID key,
stored sealed as `fanout apps credentials set` stores them, its own subscribers, devices
and topic, and one event. The emulators know all N apps and refuse a push signed by
another app's credential, as Apple, FCM and push services do; they record which
credential signed each push they accept. The run is good only if every device got
exactly one push, signed by its own app's credential.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass

import asyncpg
from pydantic import SecretStr
from rich.console import Console

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import required_keyring, store_credential
from fanout.local.demo import DeviceShape, demo_notification, seed, timings
from fanout.local.emulators.stack import EmulatedApp, LocalPushServices
from fanout.providers import build_providers
from fanout.providers.apps import AppProviders
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.worker import run_worker
from fanout.stages.progress import EventStatus, load_event_status
from fanout.stages.publish import PublishOptions, publish
from fanout.store import apps, connect
from fanout.store.seeding import SeededIds

# How long the demo waits for the last notification before it calls the run failed.
DEADLINE_SECONDS = 600


@dataclass
class AppSummary:
    app: str
    apns_key_id: str
    fcm_project: str
    devices: int
    delivered: int  # devices with exactly one push, signed by this app's own credential
    foreign: int  # pushes to its devices signed by another app's credential (must be 0)
    duplicates: int  # pushes past the first to one of its devices (must be 0)
    failed: int
    invalid: int
    skipped: int
    shards: int
    fanout_seconds: float  # from publication until every batch was queued
    seconds: float  # from publication to the last push recorded

    @property
    def ok(self) -> bool:
        return (self.delivered, self.foreign, self.duplicates, self.failed) == (
            self.devices,
            0,
            0,
            0,
        )


@dataclass(frozen=True)
class _SeededApp:
    emulated: EmulatedApp
    app_id: int
    topic: str
    devices: SeededIds


async def seed_apps(
    conn: asyncpg.Connection,
    services: LocalPushServices,
    settings: Settings,
    *,
    count: int,
    subscribers: int,
    devices_per_user: int,
    platforms: tuple[str, ...],
) -> list[_SeededApp]:
    """``count`` new apps, each with its credentials stored and ``subscribers`` users with
    devices on ``platforms``, subscribed to one topic of its own."""

    keyring = required_keyring(settings)
    run = secrets.token_hex(3)
    seeded = []
    for index in range(1, count + 1):
        key = f"demo-{run}-{index}"
        app = await apps.insert_app(conn, key=key, name=f"Demo app {index}", settings={})
        assert app is not None  # the run's keys are new
        emulated = services.add_app(key)
        for credential in emulated.credentials:
            await store_credential(conn, app=app, credential=credential, keyring=keyring)
        shape = DeviceShape(
            platforms=platforms,
            webpush_endpoint_base=emulated.webpush_endpoint_base,
            p256dh=services.p256dh,
            auth=services.auth,
        )
        made = await seed(conn, subscribers, devices_per_user, shape, app=key)
        # Seeded tokens are made in SQL: the services learn whose they are from the rows.
        rows = await conn.fetch(
            "SELECT platform, token FROM devices WHERE id BETWEEN $1 AND $2",
            made.device_ids.start,
            made.device_ids.stop - 1,
        )
        for row in rows:
            emulated.claim(row["platform"], row["token"])
        ids = SeededIds(made.device_ids.start, made.device_ids.stop - 1, made.devices)
        seeded.append(_SeededApp(emulated, app.id, made.topic, ids))
    return seeded


async def run_apps_demo(
    settings: Settings,
    services: LocalPushServices,
    *,
    count: int,
    subscribers: int,
    devices_per_user: int,
    platforms: tuple[str, ...],
    console: Console,
) -> list[AppSummary]:
    """Seed ``count`` apps, publish one event to each, deliver them with each app's stored
    credentials, and sum up per app."""
    if settings.secret_key is None:  # credentials are stored sealed: a key for this run
        settings = settings.model_copy(update={"secret_key": SecretStr(generate_key())})
    signers = {p: getattr(services, p).record_signers() for p in ("apns", "fcm", "webpush")}
    conn = await connect(settings.database_dsn(), pooler=settings.database_pooler)
    try:
        console.print(
            f"seeding {count} apps, each with its own APNs key, FCM project and VAPID key, "
            f"and {subscribers:,} subscribers …",
            markup=False,
            highlight=False,
        )
        seeded = await seed_apps(
            conn,
            services,
            settings,
            count=count,
            subscribers=subscribers,
            devices_per_user=devices_per_user,
            platforms=platforms,
        )
    finally:
        await conn.close()
    providers = AppProviders(settings, build_providers(settings), required_keyring(settings))
    try:
        async with Pipeline.open(settings, providers=providers) as pipeline:
            console.print(
                "publishing one event to each app's topic; fan-out and delivery running …",
                markup=False,
                highlight=False,
            )
            statuses = await _publish_and_wait(pipeline, seeded)
            tokens = await _tokens_by_app(pipeline.pool, seeded)
    finally:
        await providers.aclose()
    by_token = {platform: _by_token(counter) for platform, counter in signers.items()}
    summaries = []
    for app, (status, fanout_seconds, app_seconds), app_tokens in zip(
        seeded, statuses, tokens, strict=True
    ):
        delivered = foreign = duplicates = 0
        for platform, token in app_tokens:
            pushes = by_token[platform].get(EmulatedApp.wire_token(platform, token), {})
            own = pushes.get(app.emulated.signer(platform), 0)
            delivered += own >= 1
            duplicates += max(0, own - 1)
            foreign += sum(pushes.values()) - own
        summaries.append(
            AppSummary(
                app=app.emulated.name,
                apns_key_id=app.emulated.apns_key_id,
                fcm_project=app.emulated.fcm_project,
                devices=app.devices.count,
                delivered=delivered,
                foreign=foreign,
                duplicates=duplicates,
                failed=status.failed,
                invalid=status.invalid,
                skipped=status.skipped,
                shards=status.shards,
                fanout_seconds=round(fanout_seconds, 3),
                seconds=round(app_seconds, 3),
            )
        )
    return summaries


def _by_token(signers: collections.Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """token -> {credential: pushes it signed to that token}."""
    found: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (token, signer), pushes in signers.items():
        found[token][signer] = pushes
    return found


async def _publish_and_wait(
    pipeline: Pipeline, seeded: list[_SeededApp]
) -> list[tuple[EventStatus, float, float]]:
    """Publish one event per app with a worker running; each event's last status and its
    seconds from publication to the end of the fan-out and to the last push (or to the
    demo giving up)."""
    stopping = asyncio.Event()
    workers = asyncio.create_task(run_worker(pipeline.settings, stopping, pipeline=pipeline))
    started = time.monotonic()
    try:
        event_ids = []
        for app in seeded:
            published = await publish(
                pipeline.pool,
                pipeline.queues,
                demo_notification(),
                app_id=app.app_id,
                topic=app.topic,
                options=PublishOptions(quiet_hours="drop"),
            )
            event_ids.append(published.event_id)
        while True:
            statuses = [await load_event_status(pipeline.pool, e) for e in event_ids]
            waited = time.monotonic() - started
            done = all(s is not None and s.terminal for s in statuses)
            if done or workers.done() or waited > DEADLINE_SECONDS:
                break
            await asyncio.sleep(0.2)
    finally:
        stopping.set()
        await workers
    found = []
    for status in statuses:
        assert status is not None  # published above
        found.append((status, *timings(status, waited=waited)))
    return found


async def _tokens_by_app(
    pool: asyncpg.Pool, seeded: list[_SeededApp]
) -> list[list[tuple[str, str]]]:
    """Each app's (platform, token) of its seeded devices still active."""
    async with pool.acquire() as conn:
        return [
            [
                (row["platform"], row["token"])
                for row in await conn.fetch(
                    "SELECT platform, token FROM devices WHERE id BETWEEN $1 AND $2",
                    app.devices.first_id,
                    app.devices.last_id,
                )
            ]
            for app in seeded
        ]
