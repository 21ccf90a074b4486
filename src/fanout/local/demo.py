"""``fanout demo``: the whole pipeline on one machine, with nothing configured.

It starts what is missing (an embedded PostgreSQL when FANOUT_DATABASE_URL is unset,
moto's SQS server when FANOUT_SQS_ENDPOINT_URL is unset, and always a local push
sink), seeds a topic, publishes one event, runs the fan-out and delivery workers,
shows progress and ends with a summary. It exits 0 only if every active device
received the notification exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fanout.config import Settings
from fanout.local.demo_console import keep_serving
from fanout.local.emulators.stack import LocalPushServices, local_push_services
from fanout.local.services import embedded_postgres, local_sqs_server
from fanout.local.sink import DeliveryLedger, EmbeddedSink, PushSink
from fanout.notification import LocalizedText, Notification
from fanout.providers import Provider, build_providers
from fanout.providers.sink import SinkProvider
from fanout.queue.admin import create_queues
from fanout.queue.messages import PLATFORMS
from fanout.queue.sqs import open_client
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.worker import run_worker
from fanout.stages.progress import EventStatus, load_event_status
from fanout.stages.publish import PublishOptions, publish
from fanout.store import apps, connect, seeding, subscriptions
from fanout.store.audience import put_frequency_cap
from fanout.store.migrate import migrate

# How long the demo waits for the last notification before it calls the run failed.
DEADLINE_SECONDS = 600


@dataclass
class DemoSummary:
    subscribers: int
    devices: int
    held_back: dict[str, int]  # subscribers not sent to on purpose, by reason
    expected: int  # the devices of the subscribers not held back
    delivered: int
    failed: int
    invalid: int
    skipped: int
    duplicates: int
    shards: int
    # Both from publication, by the event's own timestamps (PostgreSQL's clock): the
    # fan-out is done before the last push, so fanout_seconds <= seconds.
    fanout_seconds: float  # until every batch was queued (fanned_out_at)
    seconds: float  # until the last batch's outcome was recorded (finished_at)
    notifications_per_second: float
    database: str
    sqs: str
    provider: str = "sink"
    # --apps: each app's summary (demo_apps.AppSummary as a dict, with its "ok")
    apps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        every_app = all(app["ok"] for app in self.apps)
        return (
            self.delivered == self.expected
            and self.duplicates == 0
            and self.failed == 0
            and every_app
        )


@dataclass(frozen=True)
class Seeded:
    topic: str
    subscribers: int
    devices: int
    device_ids: range


# The demo's notifications are of this category: the one its opt-outs and cap are about.
DEMO_CATEGORY = "new-book"
# Where readers live: every continent, both sides of the date line.
TIME_ZONES = (
    "America/Los_Angeles",
    "America/Mexico_City",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Africa/Lagos",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)


@dataclass(frozen=True)
class AudienceMix:
    """Shares of the subscribers (percent, by user id modulo 100, in disjoint bands) with
    each audience setting; everyone gets a time zone."""

    opted_out: int = 10  # of everything
    quiet_now: int = 20  # quiet hours cover the present hour in their zone
    muted: int = 5  # the topic (half for an hour, half until unmuted)
    capped: int = 5  # already had the cap's pushes of the category
    category_opt_out: int = 5  # of the category
    cap: int = 3  # the category's cap: pushes per day

    @property
    def held_back(self) -> int:
        """Percent the fan-out filters out (those in their quiet hours dropped: see
        ``_publish_and_watch``)."""
        return self.opted_out + self.quiet_now + self.muted + self.capped + self.category_opt_out


async def app_id_of(conn: asyncpg.Connection, app: str = apps.DEFAULT_APP) -> int:
    """The id of the app with this key (the demo's and the benchmarks' is ``default``)."""
    found = await apps.app_by_key(conn, key=app)
    if found is None:
        raise LookupError(f"no app {app!r}: run `fanout migrate`")
    return found.id


async def seed_audience(
    conn: asyncpg.Connection,
    *,
    topic: str,
    first_user_id: int,
    last_user_id: int,
    mix: AudienceMix,
    app: str = apps.DEFAULT_APP,
) -> None:
    """Preferences, mutes, a cap of DEMO_CATEGORY and the pushes that reach it, for users
    ``first_user_id`` to ``last_user_id`` (subscribers of ``topic``, of the app ``app``),
    server-side."""
    users = {"first_user_id": first_user_id, "last_user_id": last_user_id}
    muted_from = mix.opted_out + mix.quiet_now
    capped_from = muted_from + mix.muted
    category_from = capped_from + mix.capped
    async with conn.transaction():
        app_id = await app_id_of(conn, app)
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=topic)
        await seeding.seed_preferences(
            conn,
            **users,
            opted_out_percent=mix.opted_out,
            quiet_now_percent=mix.quiet_now,
            time_zones=TIME_ZONES,
            category_from_percent=category_from,
            category_percent=mix.category_opt_out,
            category=DEMO_CATEGORY,
        )
        await seeding.seed_mutes(
            conn, **users, from_percent=muted_from, topic_id=topic_id, percent=mix.muted
        )
        await put_frequency_cap(
            conn,
            app_id=app_id,
            category=DEMO_CATEGORY,
            max_sends=mix.cap,
            window_seconds=24 * 3600,
        )
        await seeding.seed_user_sends(
            conn,
            **users,
            from_percent=capped_from,
            percent=mix.capped,
            sends=mix.cap,
            category=DEMO_CATEGORY,
            event_id=0,
        )
    await conn.execute("ANALYZE user_preferences, topic_mutes, user_sends")


@contextlib.contextmanager
def _local_services(
    settings: Settings, say: Callable[[str], None]
) -> Iterator[tuple[Settings, str, str]]:
    """Fill in what the environment does not configure with local servers."""
    with contextlib.ExitStack() as stack:
        updates: dict[str, Any] = {
            # Short polls and visibility: the demo stops promptly and retries quickly.
            "poll_wait_seconds": 1,
            "visibility_timeout": 30,
            "retry_base_delay": 1,
            "queue_prefix": f"fanout-demo-{secrets.token_hex(3)}",
        }
        database = sqs = "configured"
        if settings.database_url is None:
            say("starting an embedded PostgreSQL (FANOUT_DATABASE_URL is not set) …")
            updates["database_url"] = SecretStr(stack.enter_context(embedded_postgres()))
            database = "embedded PostgreSQL"
        else:
            say(f"using the PostgreSQL at {settings.database_address()} (FANOUT_DATABASE_URL)")
        if settings.sqs_endpoint_url is None:
            say("starting moto's SQS server on loopback (FANOUT_SQS_ENDPOINT_URL is not set) …")
            updates["sqs_endpoint_url"] = stack.enter_context(local_sqs_server())
            updates["fanout_queue_url"] = updates["delivery_queue_url"] = None
            # moto keeps the queue in this process's memory: keep its backlog short.
            updates["delivery_backlog_limit"] = 16
            sqs = "moto SQS on loopback"
        else:
            say(f"using the SQS at {settings.sqs_endpoint_url} (FANOUT_SQS_ENDPOINT_URL)")
        yield settings.model_copy(update=updates), database, sqs


@dataclass(frozen=True)
class DeviceShape:
    """Which platforms the demo's devices use, and what their Web Push subscriptions are."""

    platforms: tuple[str, ...] = PLATFORMS
    webpush_endpoint_base: str = "https://push.example.net/wp/"
    p256dh: str = "B" + "A" * 86
    auth: str = "A" * 22


async def seed(
    conn: asyncpg.Connection,
    subscribers: int,
    devices_per_user: int,
    shape: DeviceShape | None = None,
    audience: AudienceMix | None = None,
    app: str = apps.DEFAULT_APP,
) -> Seeded:
    """A fresh topic of the app ``app`` with ``subscribers`` new users, each with
    ``devices_per_user`` devices, and with ``audience``, their preferences."""
    shape = shape or DeviceShape()
    run = secrets.token_hex(4)
    topic = f"demo:{run}"
    async with conn.transaction():
        app_id = await app_id_of(conn, app)
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=topic)
        users = await seeding.seed_users(
            conn, app_id=app_id, prefix=f"demo-{run}-", count=subscribers
        )
        await seeding.seed_subscriptions(
            conn, topic_id=topic_id, first_user_id=users.first_id, last_user_id=users.last_id
        )
        devices = await seeding.seed_devices(
            conn,
            first_user_id=users.first_id,
            last_user_id=users.last_id,
            per_user=devices_per_user,
            token_seed=run,
            webpush_endpoint_base=shape.webpush_endpoint_base,
            web_push_p256dh=shape.p256dh,
            web_push_auth=shape.auth,
            platforms=shape.platforms,
        )
    await conn.execute("ANALYZE subscriptions, devices")
    if audience is not None:
        await seed_audience(
            conn,
            topic=topic,
            first_user_id=users.first_id,
            last_user_id=users.last_id,
            mix=audience,
            app=app,
        )
    return Seeded(
        topic=topic,
        subscribers=subscribers,
        devices=devices.count,
        device_ids=range(devices.first_id, devices.last_id + 1),
    )


def demo_notification() -> Notification:
    return Notification(
        title="A new book by your favourite author",
        body="“The Long Fan-Out” is out today.",
        url="https://books.example.com/b/42",
        data={"book_id": "42"},
        category=DEMO_CATEGORY,
        localized={
            "de": LocalizedText(title="Ein neues Buch Ihres Lieblingsautors"),
            "fr": LocalizedText(title="Un nouveau livre de votre auteur préféré"),
            "pt": LocalizedText(title="Um novo livro do seu autor favorito"),
            "ja": LocalizedText(title="お気に入りの作家の新刊"),
        },
    )


PROVIDERS = ("sink", "apns", "fcm", "webpush", "mixed")


async def run_demo(
    settings: Settings,
    *,
    subscribers: int,
    devices_per_user: int,
    console: Console,
    provider: str = "sink",
    preferences: bool = False,
    serve_console: socket.socket | None = None,
    app_count: int = 1,
) -> DemoSummary:
    """``provider`` sink: one local sink for every platform; apns, fcm, webpush or mixed:
    local APNs / FCM / push-service emulators over HTTP/2 and TLS, spoken to for real.
    ``preferences``: the subscribers get a realistic mix of audience settings
    (``AudienceMix``), and the summary counts who was held back and why.
    ``serve_console``, a listening socket (bound before, so that a port in use is said at
    once, not after the event): afterwards, keep the API, its console and a worker serving
    there until Ctrl-C. ``app_count`` above 1: that many apps, each with its own
    emulator credentials, devices and event (``demo_apps``; emulators only)."""

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    with _local_services(settings, say) as (settings, database, sqs):
        say(f"creating the queues {settings.queue_prefix}-fanout and -delivery …")
        async with open_client(settings) as client:
            await create_queues(client, settings)
        say("applying the schema migrations …")
        conn = await connect(settings.migration_dsn())
        try:
            await migrate(conn)
        finally:
            await conn.close()
        async with contextlib.AsyncExitStack() as stack:
            if provider == "sink":
                say("starting the local push sink …")
                ledger = DeliveryLedger()
                sink = await stack.enter_async_context(EmbeddedSink(PushSink(ledger)))
                sink_provider = SinkProvider(sink.url)
                stack.push_async_callback(sink_provider.aclose)
                providers: Mapping[str, Provider] = dict.fromkeys(PLATFORMS, sink_provider)
                shape = DeviceShape()

                def delivered() -> tuple[int, int]:
                    return ledger.unique, ledger.duplicates
            else:
                say("starting the local APNs, FCM and Web Push emulators (HTTP/2, TLS) …")
                services = await stack.enter_async_context(local_push_services())
                settings = settings.model_copy(update=services.settings)
                providers = build_providers(settings)
                for each in providers.values():
                    stack.push_async_callback(each.aclose)
                shape = DeviceShape(
                    platforms=PLATFORMS if provider == "mixed" else (provider,),
                    webpush_endpoint_base=services.webpush_endpoint_base,
                    p256dh=services.p256dh,
                    auth=services.auth,
                )
                delivered = services.delivered
                if app_count > 1:
                    return await _apps_demo(
                        settings,
                        services,
                        app_count=app_count,
                        subscribers=subscribers,
                        devices_per_user=devices_per_user,
                        platforms=shape.platforms,
                        console=console,
                        provider=provider,
                        places=(database, sqs),
                    )
            conn = await connect(settings.database_dsn(), pooler=settings.database_pooler)
            try:
                per_user = f"{devices_per_user} device{'s' if devices_per_user > 1 else ''} each"
                say(f"seeding {subscribers:,} subscribers with {per_user} …")
                mix = None
                if preferences:
                    mix = AudienceMix()
                    say(
                        f"with preferences: {mix.opted_out}% opted out, {mix.quiet_now}% in "
                        f"quiet hours, {mix.muted}% muting the topic, {mix.capped}% at the "
                        f"'{DEMO_CATEGORY}' cap, {mix.category_opt_out}% opted out of it …"
                    )
                seeded = await seed(conn, subscribers, devices_per_user, shape, mix)
            finally:
                await conn.close()
            if provider == "sink":
                # One byte per device instead of a dict entry: memory stays flat as N grows.
                ledger.expect(seeded.device_ids)
            async with Pipeline.open(settings, providers=providers) as pipeline:
                say(f"publishing one event to {seeded.topic}; fan-out and delivery running …")
                summary = await _publish_and_watch(
                    pipeline, seeded, devices_per_user, delivered, console
                )
                summary.database, summary.sqs, summary.provider = database, sqs, provider
                if serve_console is not None:
                    console.print(summary_table(summary))
                    await keep_serving(pipeline, serve_console, say)
    return summary


async def _apps_demo(
    settings: Settings,
    services: LocalPushServices,
    *,
    app_count: int,
    subscribers: int,
    devices_per_user: int,
    platforms: tuple[str, ...],
    console: Console,
    provider: str,
    places: tuple[str, str],
) -> DemoSummary:
    """``--apps``: the apps' summaries, and their sums as the demo's."""
    from fanout.local.demo_apps import run_apps_demo  # it imports this module

    found = await run_apps_demo(
        settings,
        services,
        count=app_count,
        subscribers=subscribers,
        devices_per_user=devices_per_user,
        platforms=platforms,
        console=console,
    )
    devices = sum(app.devices for app in found)
    seconds = max(app.seconds for app in found)
    delivered = sum(app.delivered for app in found)
    return DemoSummary(
        subscribers=subscribers * app_count,
        devices=devices,
        held_back={},
        expected=devices,
        delivered=delivered,
        failed=sum(app.failed for app in found),
        invalid=sum(app.invalid for app in found),
        skipped=sum(app.skipped for app in found),
        duplicates=sum(app.duplicates for app in found),
        shards=sum(app.shards for app in found),
        fanout_seconds=max(app.fanout_seconds for app in found),
        seconds=seconds,
        notifications_per_second=round(delivered / seconds, 1) if seconds else 0.0,
        database=places[0],
        sqs=places[1],
        provider=provider,
        apps=[{**asdict(app), "ok": app.ok} for app in found],
    )


async def _publish_and_watch(
    pipeline: Pipeline,
    seeded: Seeded,
    devices_per_user: int,
    delivered_so_far: Callable[[], tuple[int, int]],
    console: Console,
) -> DemoSummary:
    stopping = asyncio.Event()
    workers = asyncio.create_task(run_worker(pipeline.settings, stopping, pipeline=pipeline))
    started = time.monotonic()
    # Those in their quiet hours are dropped, not deferred (the default): deferred, the
    # event would wait for their windows to end, hours away, before it could end.
    async with pipeline.pool.acquire() as conn:
        app_id = await app_id_of(conn)
    published = await publish(
        pipeline.pool,
        pipeline.queues,
        demo_notification(),
        app_id=app_id,
        topic=seeded.topic,
        options=PublishOptions(quiet_hours="drop"),
    )
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bars:
            fanned = bars.add_task("fan-out", total=seeded.devices, rate="")
            delivered = bars.add_task("delivered", total=seeded.devices, rate="")
            while True:
                progress = await _event_progress(pipeline.pool, published.event_id)
                elapsed = time.monotonic() - started
                bars.update(fanned, completed=progress.devices)
                unique, _ = delivered_so_far()
                bars.update(delivered, completed=unique, rate=f"{unique / elapsed:,.0f}/s")
                if progress.terminal:
                    break
                if workers.done() or elapsed > DEADLINE_SECONDS:
                    break
                await asyncio.sleep(0.2)
    finally:
        stopping.set()
        await workers
    unique, duplicates = delivered_so_far()
    fanout_seconds, seconds = timings(progress, waited=time.monotonic() - started)
    # Every seeded subscriber has devices_per_user devices: those of the subscribers not
    # held back are what the push service should have seen, each once.
    held_back = sum(progress.held_back.values())
    return DemoSummary(
        subscribers=seeded.subscribers,
        devices=seeded.devices,
        held_back=progress.held_back,
        expected=seeded.devices - held_back * devices_per_user,
        delivered=unique,
        failed=progress.failed,
        invalid=progress.invalid,
        skipped=progress.skipped,
        duplicates=duplicates,
        shards=progress.shards,
        fanout_seconds=round(fanout_seconds, 3),
        seconds=round(seconds, 3),
        notifications_per_second=round(unique / seconds, 1) if seconds else 0.0,
        database="",
        sqs="",
    )


def timings(status: EventStatus, *, waited: float) -> tuple[float, float]:
    """Seconds from publication until the fan-out was done, and until the last push was
    recorded, by the event's own timestamps; ``waited`` (the demo's wait) for a stage that
    had not ended when it stopped waiting.

    The fan-out's figure was once the demo's own clock when its poll, every 0.2 s, first
    saw the event fanned out: often past the last push, so it read larger than the whole."""

    def since_publication(moment: datetime | None) -> float:
        return waited if moment is None else (moment - status.started_at).total_seconds()

    return since_publication(status.fanned_out_at), since_publication(status.finished_at)


async def _event_progress(pool: asyncpg.Pool, event_id: int) -> EventStatus:
    found = await load_event_status(pool, event_id)
    assert found is not None
    return found


# Rows whose field name alone would not say what they measure.
SUMMARY_LABELS = {
    "fanout_seconds": "seconds to fan out",
    "seconds": "seconds to the last push",
}


def summary_table(summary: DemoSummary) -> Table:
    table = Table(title="fanout demo", show_header=False)
    for key, value in asdict(summary).items():
        if key == "apps":
            for app in value:
                table.add_row(
                    f"app {app['app']}",
                    f"{app['delivered']:,}/{app['devices']:,} by its own credential, "
                    f"{app['foreign']:,} by another's",
                )
            continue
        if isinstance(value, dict):
            for reason, count in sorted(value.items()):
                table.add_row(f"held back: {reason.replace('_', ' ')}", f"{count:,}")
            continue
        label = SUMMARY_LABELS.get(key, key.replace("_", " "))
        table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    table.add_row(
        "result", "[green]every device exactly once[/]" if summary.ok else "[red]FAILED[/]"
    )
    return table
