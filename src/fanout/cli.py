"""The ``fanout`` command: demo, migrate, queues, worker, publish, cancel, status, sink, caps,
import and export.

A mistake in the configuration ends any command with one line naming the setting and
exit status 2 (as for a wrong option); a service that does not answer, with one line
naming it, where it is and the setting, and exit status 1. Never a traceback, never a
setting's value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import pydantic
import typer
from rich.console import Console

from fanout.config import ConfigError, Settings, Unreachable, invalid_settings
from fanout.runtime.listening import AddressSettings, listen

# Tracebacks never show local variables: they may hold keys and database URLs.
app = typer.Typer(
    help="Mass push notifications: one event in, a push on every device out.",
    pretty_exceptions_show_locals=False,
)
queues_app = typer.Typer(help="Create the SQS queues and see what they hold.")
app.add_typer(queues_app, name="queues")
apikey_app = typer.Typer(help="Create, list and revoke API keys.")
app.add_typer(apikey_app, name="apikey")
dlq_app = typer.Typer(help="Inspect and redrive the dead-letter queues.")
app.add_typer(dlq_app, name="dlq")
caps_app = typer.Typer(help="Frequency caps: at most N pushes per user in a rolling window.")
app.add_typer(caps_app, name="caps")
apps_app = typer.Typer(
    help="Apps, each with its own push credentials (stored now; delivery per app comes next)."
)
app.add_typer(apps_app, name="apps")
credentials_app = typer.Typer(help="An app's push credentials: checked when set, stored sealed.")
apps_app.add_typer(credentials_app, name="credentials")
vapid_app = typer.Typer(help="Web Push (VAPID) key pairs.")
apps_app.add_typer(vapid_app, name="vapid")
secrets_app = typer.Typer(help="The key app credentials are sealed with (FANOUT_SECRET_KEY).")
app.add_typer(secrets_app, name="secrets")
webhooks_app = typer.Typer(
    help="Webhooks: signed calls to an app's backend when an event ends or tokens are retired."
)
app.add_typer(webhooks_app, name="webhooks")
sources_app = typer.Typer(
    help="Sources: a topic prefix whose subscribers are read from the app's own tables."
)
app.add_typer(sources_app, name="sources")
live_app = typer.Typer(help="Live Activities (iOS): register their tokens, publish updates.")
app.add_typer(live_app, name="live-activities")
live_tokens_app = typer.Typer(help="The APNs tokens registered for an activity.")
live_app.add_typer(live_tokens_app, name="tokens")
QueueRole = Annotated[str, typer.Option("--queue", help="fanout, delivery or both.")]
err = Console(stderr=True, soft_wrap=True)  # one line per message, even in logs


# SQS tries per request from a command a person waits on: a down endpoint is reported
# after at most ~3 s of backoff, not the ~10-20 s of the services' five tries.
CLI_SQS_ATTEMPTS = 3

# Exit statuses: 2 as click gives a wrong option, for any mistake in the configuration
# (fanout can tell from the settings alone) or a database not migrated (waiting will not
# mend it); 1 when the outside world failed.
EXIT_FAILED = 1
EXIT_CONFIG = 2


# The app a command works in (its key); what predates apps is the app `default`'s.
AppOption = Annotated[
    str, typer.Option("--app", help="The app (its key, as `fanout apps list` shows).")
]


def _fail(line: str, status: int = EXIT_FAILED) -> NoReturn:
    # Plain text: a message may hold brackets that rich would take for markup.
    sys.stderr.write(f"fanout: {line}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def _settings() -> Settings:
    from fanout.config import load_settings

    try:
        return asyncio.run(load_settings())
    except pydantic.ValidationError as exc:
        # Name the variable, never echo its value: it may be a secret.
        *others, last = invalid_settings(exc)
        for line in others:
            sys.stderr.write(f"fanout: {line}\n")
        _fail(last, EXIT_CONFIG)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _migrations_missing() -> str | None:
    """What a worker says at start (``check_schema``) if the database lacks some of fanout's
    migrations (never migrated, or by an older fanout); None if it has them all, or does
    not answer now (the command's own failure is then the one to report)."""
    from fanout.runtime.schema import SchemaNotMigrated, check_schema
    from fanout.store import connect

    settings = _settings()

    async def check() -> None:
        dsn = settings.database_dsn()
        conn = await connect(dsn, connect_timeout=10, pooler=settings.database_pooler)
        try:
            await check_schema(conn, dsn)
        finally:
            await conn.close()

    try:
        asyncio.run(check())
    except SchemaNotMigrated as exc:
        return str(exc)
    except Exception:
        return None
    return None


def _explain(exc: Exception) -> tuple[str, int] | None:
    """One line and an exit status for a failure the user can act on; None for a bug."""
    import asyncpg
    import botocore.exceptions

    from fanout.queue.sqs import QueueError

    if isinstance(exc, ConfigError):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, Unreachable):
        return str(exc), EXIT_FAILED
    # What a statement meets on a database that lacks some of fanout's migrations: a table,
    # a column, a function or a type a migration adds. Said as a worker says it at start.
    schema_behind = (
        asyncpg.UndefinedTableError,
        asyncpg.UndefinedColumnError,
        asyncpg.UndefinedFunctionError,
        asyncpg.UndefinedObjectError,
    )
    if isinstance(exc, schema_behind) and (line := _migrations_missing()) is not None:
        return line, EXIT_CONFIG
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"database error: {type(exc).__name__}: {exc}", EXIT_FAILED
    if isinstance(exc, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError):
        return f"queue error: {exc}", EXIT_FAILED
    if isinstance(exc, QueueError | OSError | RuntimeError | ValueError):
        return f"error: {exc}", EXIT_FAILED
    return None


@app.command()
def demo(
    subscribers: Annotated[
        int, typer.Option(min=1, help="Subscribers of the demo topic.")
    ] = 20_000,
    devices_per_user: Annotated[int, typer.Option(min=1, max=10)] = 1,
    provider: Annotated[
        str,
        typer.Option(help="sink, or local apns / fcm / webpush / mixed push service emulators."),
    ] = "sink",
    preferences: Annotated[
        bool,
        typer.Option(
            "--preferences",
            help="Give the subscribers a mix of audience settings (time zones, opt-outs, "
            "quiet hours, mutes, a frequency cap) and count who is held back.",
        ),
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    console: Annotated[
        bool,
        typer.Option(
            "--console",
            help="Afterwards keep the API, its operator console and a worker running; "
            "prints the console's URL and an API key to sign in with.",
        ),
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="The console's port (default: FANOUT_API_PORT).")
    ] = None,
    apps: Annotated[
        int,
        typer.Option(
            min=1,
            max=100,
            help="Apps, each with its own emulator credentials (APNs key, FCM project, "
            "VAPID key), subscribers and event: --subscribers each. Above 1 it implies "
            "the emulators (--provider mixed unless apns, fcm or webpush is given).",
        ),
    ] = 1,
) -> None:
    """Run the whole pipeline locally and check every device got the push exactly once
    (every device not held back on purpose; with --apps, signed by its own app's
    credential)."""
    from fanout.local.demo import PROVIDERS, run_demo, summary_table

    if provider not in PROVIDERS:
        raise typer.BadParameter(f"one of {', '.join(PROVIDERS)}", param_hint="--provider")
    if apps > 1:
        if preferences or console:
            raise typer.BadParameter("not with --preferences or --console", param_hint="--apps")
        if provider == "sink":
            provider = "mixed"
    _logging(verbose)
    settings = _settings()
    if apps > 1 and settings.database_url is not None and settings.secret_key is None:
        # The apps' credentials stay sealed in that database: under a key made for the run,
        # every later worker and server would refuse to start for want of it.
        raise typer.BadParameter(
            "stores each app's credentials sealed in the database FANOUT_DATABASE_URL names: "
            "set FANOUT_SECRET_KEY (fanout secrets generate-key) first",
            param_hint="--apps",
        )
    console_listener = (
        listen(
            settings.api_host,
            port or settings.api_port,
            "the console",
            _api_address_settings(None, port),
        )
        if console
        else None
    )
    summary = asyncio.run(
        run_demo(
            settings,
            subscribers=subscribers,
            devices_per_user=devices_per_user,
            console=err,
            provider=provider,
            preferences=preferences,
            serve_console=console_listener,
            app_count=apps,
        )
    )
    if json:
        out = {**summary.__dict__, "ok": summary.ok}
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    elif not console:  # with --console the table came before the console's URL
        Console().print(summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
def migrate() -> None:
    """Apply the database migrations (safe to run again)."""
    from fanout.store import connect
    from fanout.store.migrate import migrate as apply
    from fanout.store.sources import prepare_source_role

    # Directly to PostgreSQL when a pooler is in front: a migration holds an advisory lock
    # for its session, which a transaction-mode pooler cannot keep.
    dsn = _settings().migration_dsn()

    role = _settings().source_role

    async def main() -> tuple[list[str], str | None]:
        conn = await connect(dsn)
        try:
            applied = await apply(conn, source_role=None)
            return applied, await prepare_source_role(conn, role=role)
        finally:
            await conn.close()

    applied, sources_off = asyncio.run(main())
    err.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    if sources_off:  # not a failure: only sources need the role
        err.print(f"sources are off: {sources_off}", markup=False)


@queues_app.command("create")
def queues_create() -> None:
    """Create both queues and their dead-letter queues (safe to run again)."""
    from fanout.queue.admin import create_queues
    from fanout.queue.sqs import open_client

    settings = _settings()

    async def main() -> dict[str, str]:
        async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
            return await create_queues(client, settings)

    for role, url in asyncio.run(main()).items():
        typer.echo(f"{role}: {url}")


@queues_app.command("list")
def queues_list() -> None:
    """Messages in each queue and dead-letter queue: waiting, in flight, delayed."""
    from fanout.queue.admin import QueueDepth, queue_depths
    from fanout.queue.sqs import open_client, open_queues

    settings = _settings()

    async def main() -> list[QueueDepth]:
        async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
            return await queue_depths(await open_queues(client, settings))

    depths = asyncio.run(main())
    width = max(len(d.name) for d in depths)
    typer.echo(f"{'queue':<{width}}  {'waiting':>9}  {'in flight':>9}  {'delayed':>9}")
    for d in depths:
        typer.echo(f"{d.name:<{width}}  {d.waiting:>9,}  {d.in_flight:>9,}  {d.delayed:>9,}")


@app.command()
def worker(
    role: Annotated[
        str, typer.Option(help="Which queues to consume: all, fanout or delivery.")
    ] = "all",
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose/--quiet",
            "-v/-q",
            help="Log start, stop and each event's shards (default), or warnings only.",
        ),
    ] = True,
) -> None:
    """Consume the queues until SIGTERM or Ctrl-C.

    While the database or SQS does not answer, the worker says so and keeps trying.
    """
    from fanout.providers import check_credentials
    from fanout.queue.sqs import sqs_usage
    from fanout.runtime import eventloop
    from fanout.runtime.worker import run_worker, serve_metrics

    roles = {"all": ("fanout", "delivery"), "fanout": ("fanout",), "delivery": ("delivery",)}
    if role not in roles:
        raise typer.BadParameter("must be all, fanout or delivery", param_hint="--role")
    _logging(verbose)
    settings = _settings()
    settings.database_dsn()  # unset is a mistake to report now, not to wait out
    check_credentials(settings)  # so is a push credential fanout cannot use
    _check_secret_key(settings)  # and no key to open the stored ones
    if settings.metrics_port is not None:
        serve_metrics(settings)

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        consumers = await run_worker(settings, stopping, roles=roles[role], settle_heap=True)
        log = logging.getLogger("fanout.runtime.worker")
        for consumer in consumers:
            log.info("%s: %s", consumer.queue.name, consumer.stats)
        # One JSON line (operation: [requests, billed requests]); bench/pipeline.py reads it.
        log.info("sqs usage %s", orjson.dumps(sqs_usage()).decode())

    eventloop.run(main(), settings.event_loop)


@app.command()
def publish(
    topic: Annotated[str | None, typer.Argument(help="Topic key, e.g. author:42")] = None,
    title: Annotated[str | None, typer.Option(help="Required for an alert.")] = None,
    body: Annotated[str, typer.Option()] = "",
    kind: Annotated[
        str, typer.Option(help="alert (shows title and body) or background (wakes the app).")
    ] = "alert",
    thread_id: Annotated[
        str | None, typer.Option(help="Groups notifications (APNs thread-id, tag elsewhere).")
    ] = None,
    interruption_level: Annotated[
        str | None, typer.Option(help="APNs: passive, active, time-sensitive or critical.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the app (a background push's whole content); repeat."),
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    send_at: Annotated[
        str | None, typer.Option(help="Not before: ISO 8601 with an offset (2026-03-29T07:00Z).")
    ] = None,
    deliver_at_local: Annotated[
        str | None, typer.Option(help="HH:MM on each recipient's clock, in waves by time zone.")
    ] = None,
    quiet_hours: Annotated[
        str, typer.Option(help="Recipients in their quiet hours: defer, drop or ignore.")
    ] = "defer",
    expires_at: Annotated[
        str | None, typer.Option(help="Nothing is sent after: ISO 8601 with an offset.")
    ] = None,
    throttle: Annotated[
        int | None,
        typer.Option(
            help="Paced: at most N devices a minute, across every worker (default: the "
            "app's default_throttle_per_minute, if set)."
        ),
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter",
            help='Only subscribers whose tags match, as JSON: \'{"tags": {"plan": "premium"}}\'.',
        ),
    ] = None,
    app_key: AppOption = "default",
    batch: Annotated[
        Path | None,
        typer.Option(
            help="NDJSON of 1:1 sends, one a line as an item of POST /v1/notifications/batch "
            '({"user_id": …, "notification": {…}, "idempotency_key": …}); instead of TOPIC.',
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Publish an event to a topic's subscribers (with ``--filter`` and no TOPIC: to every
    user of the app whose tags match); prints the event id. With ``--batch``:
    1:1 sends from a file, each its own event, committed a thousand lines at a time; prints
    a JSON line per line of the file (its event, or its problems naming the line and field),
    and exits 1 if any line was refused."""
    if batch is not None:
        if topic is not None:
            raise typer.BadParameter("give either TOPIC or --batch, not both", param_hint="TOPIC")
        _publish_batch(batch, app_key)
        return
    if topic is None and filter_ is None:
        raise typer.BadParameter(
            "a topic to publish to (or --batch FILE; or --filter alone: every user of the app "
            "whose tags match)",
            param_hint="TOPIC",
        )
    from fanout.notification import CRITICAL_NOT_ALLOWED, critical_asked
    from fanout.queue.sqs import open_client, open_queues
    from fanout.stages.publish import InvalidPublishOption
    from fanout.stages.publish import publish as do_publish
    from fanout.store import apps, create_pool

    settings = _settings()
    asked = {"title": title, "thread_id": thread_id, "interruption_level": interruption_level}
    notification: dict[str, Any] = {
        "kind": kind,
        **{k: v for k, v in asked.items() if v is not None},
    }
    if body:  # a background push has none; an alert's defaults to empty
        notification["body"] = body
    if data:
        pairs = [item.partition("=") for item in data]
        if bad := next(
            (item for item, (_, eq, _) in zip(data, pairs, strict=True) if not eq), None
        ):
            raise typer.BadParameter(f"{bad!r} is not KEY=VALUE", param_hint="--data")
        notification["data"] = {key: value for key, _, value in pairs}
    try:
        tag_filter = None if filter_ is None else orjson.loads(filter_)
    except orjson.JSONDecodeError:
        raise typer.BadParameter("is not JSON", param_hint="--filter") from None
    request = _publish_request(
        {
            "topic": topic,
            "notification": notification,
            "idempotency_key": idempotency_key,
            "send_at": send_at,
            "deliver_at_local": deliver_at_local,
            "quiet_hours": quiet_hours,
            "expires_at": expires_at,
            "throttle_per_minute": throttle,
            "filter": tag_filter,
        }
    )
    critical = critical_asked(request.notification) is not None

    async def main() -> int:
        pool = await create_pool(settings)
        try:
            async with pool.acquire() as conn:
                found = await _app_named(conn, app_key)
                if critical and not await apps.allows_critical(
                    conn, app_id=found.id, default=settings.apns_allow_critical
                ):
                    raise typer.BadParameter(
                        CRITICAL_NOT_ALLOWED, param_hint="--interruption-level"
                    )
            async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
                queues = await open_queues(client, settings)
                published = await do_publish(
                    pool,
                    queues,
                    request.notification,
                    app_id=found.id,
                    topic=request.topic,
                    idempotency_key=request.idempotency_key,
                    batch_max_bytes=settings.batch_max_bytes,
                    overdue_after=settings.reconcile_after_seconds,
                    options=request.options(),
                    default_time_zone=settings.default_time_zone,
                )
                return published.event_id
        finally:
            await pool.close()

    try:
        typer.echo(asyncio.run(main()))
    except InvalidPublishOption as exc:
        hint = f"--{exc.field.replace('_', '-')}"
        raise typer.BadParameter(exc.message, param_hint=hint) from None


def _publish_batch(path: Path, app_key: str) -> None:
    """``fanout publish --batch``: the file read a chunk at a time (memory flat in its
    size), each chunk validated and committed as the batch endpoint does."""
    from fanout.api.routes.batch import publish_items
    from fanout.api.schemas import MAX_NOTIFICATION_BATCH
    from fanout.queue.sqs import open_client, open_queues
    from fanout.stages.group_commit import Enqueuer, GroupCommit
    from fanout.stages.publish import publish as do_publish
    from fanout.store import apps, create_pool

    settings = _settings()
    try:
        lines = path.open("rb")
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--batch"
        ) from None

    async def main() -> int:
        refused = 0
        pool = await create_pool(settings)
        try:
            async with pool.acquire() as conn:
                found = await _app_named(conn, app_key)
                allowed = await apps.allows_critical(
                    conn, app_id=found.id, default=settings.apns_allow_critical
                )

            async def allow_critical() -> bool:
                return allowed

            async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
                queues = await open_queues(client, settings)

                async def opened() -> Any:
                    return queues

                group = GroupCommit(
                    pool,
                    Enqueuer(
                        pool,
                        opened,
                        overdue_after=settings.reconcile_after_seconds,
                        coalesce=settings.coalesce_direct,
                        coalesce_window=settings.coalesce_window_seconds,
                    ),
                    overdue_after=settings.reconcile_after_seconds,
                )

                async def publish_one(app_id: int, api_key_id: int | None, item: Any) -> Any:
                    return await do_publish(
                        pool,
                        queues,
                        item.notification,
                        app_id=app_id,
                        user=item.user_id,
                        idempotency_key=item.idempotency_key,
                        batch_max_bytes=settings.batch_max_bytes,
                        overdue_after=settings.reconcile_after_seconds,
                        options=item.options(),
                        default_time_zone=settings.default_time_zone,
                    )

                async def flush(chunk: list[Any], first_line: int) -> int:
                    results = await publish_items(
                        chunk,
                        group=group,
                        publish_one=publish_one,
                        app_id=found.id,
                        api_key_id=None,
                        batch_max_bytes=settings.batch_max_bytes,
                        allow_critical=allow_critical,
                        at=(),
                    )
                    bad = 0
                    for offset, result in enumerate(results):
                        line = first_line + offset
                        if result.errors:
                            bad += 1
                            errors = [
                                {**e.model_dump(), "loc": [f"line {line}", *e.loc[1:]]}
                                for e in result.errors
                            ]
                            typer.echo(orjson.dumps({"line": line, "errors": errors}))
                        else:
                            shown = {
                                "line": line,
                                "event_id": result.event_id,
                                "created": result.created,
                            }
                            typer.echo(orjson.dumps(shown))
                    return bad

                try:
                    chunk: list[Any] = []
                    first_line = 1
                    for number, raw in enumerate(lines, start=1):
                        try:
                            chunk.append(orjson.loads(raw))
                        except orjson.JSONDecodeError:
                            chunk.append(None)  # refused by the model, by its line
                        if len(chunk) == MAX_NOTIFICATION_BATCH:
                            refused += await flush(chunk, first_line)
                            chunk, first_line = [], number + 1
                    if chunk:
                        refused += await flush(chunk, first_line)
                finally:
                    await group.close()  # the last chunk's enqueue
        finally:
            await pool.close()
            lines.close()
        return refused

    if asyncio.run(main()):
        raise typer.Exit(1)


def _publish_request(fields: dict[str, Any]) -> Any:
    """The publish, checked by the API's own model (``EventIn``), so the CLI accepts what
    the API accepts and nothing else; a mistake names its option in one line."""
    from fanout.api.schemas import EventIn

    try:
        return EventIn.model_validate(fields)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = [str(part) for part in error["loc"]]
        if where[:2] == ["notification", "data"]:
            message = f"{'.'.join(where[2:])}: {error['msg']}"
            raise typer.BadParameter(message, param_hint="--data") from None
        if where[0] == "filter":
            message = f"{'.'.join(where)}: {error['msg']}"
            raise typer.BadParameter(message, param_hint="--filter") from None
        name = where[-1] if where[0] == "notification" else where[0]
        name = {"throttle_per_minute": "throttle"}.get(name, name)
        hint = "TOPIC" if name == "topic" else f"--{name.replace('_', '-')}"
        raise typer.BadParameter(error["msg"], param_hint=hint) from None


@app.command()
def cancel(event_id: int) -> None:
    """Cancel an event: its fan-out stops at the next page, batches not yet sent are not
    sent. Prints its status as JSON (what was sent before, held_back.cancelled)."""
    from fanout.stages.progress import load_event_status
    from fanout.stages.publish import TooLateToCancel
    from fanout.stages.publish import cancel as do_cancel
    from fanout.store import create_pool

    settings = _settings()

    async def main() -> str | None:
        pool = await create_pool(settings)
        try:
            if await do_cancel(pool, event_id) is None:
                return None
            found = await load_event_status(pool, event_id)
        finally:
            await pool.close()
        return None if found is None else found.model_dump_json(indent=2)

    try:
        shown = asyncio.run(main())
    except TooLateToCancel as exc:
        _fail(str(exc))
    if shown is None:
        err.print(f"[red]no event {event_id}[/]")
        raise typer.Exit(1)
    typer.echo(shown)


@app.command()
def reconcile(
    event: Annotated[int | None, typer.Option(help="Only this event's work.")] = None,
) -> None:
    """One reconciler pass: send again, from PostgreSQL, whatever work is overdue.

    Every worker runs this every FANOUT_RECONCILE_INTERVAL_SECONDS; on AWS a scheduled
    function does. Run it by hand after an outage to act at once; prints what it did.
    """
    from fanout.queue.sqs import open_client, open_queues
    from fanout.runtime.reconciler import reconcile_once
    from fanout.store import create_pool

    settings = _settings()

    async def main() -> dict[str, Any]:
        pool = await create_pool(settings)
        try:
            async with open_client(settings) as client:
                queues = await open_queues(client, settings)
                report = await reconcile_once(pool, queues, settings, event_id=event)
        finally:
            await pool.close()
        return dataclasses.asdict(report)

    typer.echo(orjson.dumps(asyncio.run(main()), option=orjson.OPT_INDENT_2).decode())


# How often `status --wait` reads the event again: a person waits on it, PostgreSQL
# barely notices one indexed read every half second.
STATUS_POLL_SECONDS = 0.5


@app.command()
def status(
    event_id: int,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the event has ended (delivered, failed, no_recipients, …), "
            "then show it.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0, help="With --wait: the longest to wait, in seconds; then exit status 1."
        ),
    ] = 120,
) -> None:
    """Show an event's progress as JSON (the same fields as GET /v1/events/{id})."""
    from fanout.stages.progress import EventStatus, load_event_status
    from fanout.store import connect

    settings = _settings()

    async def main() -> tuple[EventStatus | None, bool]:
        """The event's status, and whether the wait ran out before it ended."""
        conn = await connect(settings.database_dsn(), pooler=settings.database_pooler)
        try:
            deadline = time.monotonic() + timeout
            while True:
                found = await load_event_status(conn, event_id)
                if found is None or found.terminal or not wait:
                    return found, False
                if (left := deadline - time.monotonic()) <= 0:
                    return found, True
                await asyncio.sleep(min(STATUS_POLL_SECONDS, left))
        finally:
            await conn.close()

    found, still_running = asyncio.run(main())
    if found is None:
        err.print(f"[red]no event {event_id}[/]")
        raise typer.Exit(1)
    typer.echo(found.model_dump_json(indent=2))
    if still_running:
        _fail(f"event {event_id} is still {found.status} after {timeout:g}s: is a worker running?")


@app.command()
def sink(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0: any free port.")] = 8765,
    events_kept: Annotated[
        int, typer.Option(min=1, help="The most recent events counted apart in /stats.")
    ] = 16,
) -> None:
    """Serve a local push sink that counts what it receives, per event (tests, benchmarks).

    Prints its URL. POST /push takes what FANOUT_PROVIDER=sink sends; GET /stats gives
    the totals and each recent event's counts as JSON.
    """
    from fanout.local.sink import serve

    def listening(url: str) -> None:
        typer.echo(url)
        err.print(f"push sink on {url}: POST /push, GET /stats")

    serve(
        listen(host, port, "the push sink", AddressSettings("--host", "--port")),
        listening=listening,
        events_kept=events_kept,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: FANOUT_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: FANOUT_API_PORT")] = None,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from fanout.api import create_app
    from fanout.api.connection_limits import connection_budget, limited_http_protocol

    settings = _settings()
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = connection_budget(
        settings, None if open_files == resource.RLIM_INFINITY else open_files
    )
    # Bound here, once, to say which setting is wrong: uvicorn's failure is a log and exit 3.
    where = _api_address_settings(host, port)
    listen(host or settings.api_host, port or settings.api_port, "the API", where).close()
    asyncio.run(_check_before_serving(settings))
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        # What slow clients may hold: time to send, connections per address and in all.
        http=limited_http_protocol(settings, budget.max_connections),
        backlog=budget.backlog,
        timeout_keep_alive=settings.api_keep_alive_seconds,
    )


def _api_address_settings(host: str | None, port: int | None) -> AddressSettings:
    """What chose the API's address (or the demo's console's): the option, else its variable."""
    return AddressSettings(
        "--host" if host else "FANOUT_API_HOST", "--port" if port else "FANOUT_API_PORT"
    )


def _check_secret_key(settings: Settings) -> None:
    """FANOUT_SECRET_KEY must be set, and be the key, if app credentials are stored sealed
    (``ConfigError``). A database that does not answer yet is not this check's to report:
    the worker says so itself and waits for it."""
    from fanout.credentials.stored import check_secret_key
    from fanout.store import connect

    async def check() -> None:
        try:
            conn = await connect(
                settings.database_dsn(), connect_timeout=10, pooler=settings.database_pooler
            )
        except Unreachable:
            return
        try:
            await check_secret_key(conn, settings=settings)
        finally:
            await conn.close()

    asyncio.run(check())


async def _check_before_serving(settings: Settings) -> None:
    """What would otherwise fail inside uvicorn's start-up, as a traceback, or every
    request, as a 500: the database must answer, migrated (and FANOUT_SECRET_KEY open the
    credentials stored in it); SQS must be configured (it may be down: publishing goes on
    without it)."""
    from fanout.credentials.stored import check_secret_key
    from fanout.queue.sqs import open_client
    from fanout.runtime.schema import check_schema
    from fanout.store import connect

    conn = await connect(
        settings.database_dsn(), connect_timeout=10, pooler=settings.database_pooler
    )
    try:
        await check_schema(conn, settings.database_dsn())
        await check_secret_key(conn, settings=settings)
    finally:
        await conn.close()
    async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS):
        pass


def _with_connection(work: Any) -> Any:
    """Run ``work(conn)`` on one connection (settings are read before the loop starts)."""
    from fanout.store import connect

    settings = _settings()
    return asyncio.run(_connected(settings, work, connect))


async def _connected(settings: Settings, work: Any, connect: Any) -> Any:
    conn = await connect(settings.database_dsn(), pooler=settings.database_pooler)
    try:
        return await work(conn)
    finally:
        await conn.close()


@apikey_app.command("create")
def apikey_create(
    scope: Annotated[
        list[str],
        typer.Option(help="publish, manage or read; repeat for several. admin: alone."),
    ],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    app_key: AppOption = "default",
) -> None:
    """Create an API key of an app (everything it does is inside that app; an admin key
    manages apps, their credentials and keys). It is printed once and cannot be shown
    again."""
    from fanout.api.keys import check_scopes, create_api_key

    try:
        check_scopes(scope, app_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None

    async def create(conn: Any) -> Any:
        await _app_named(conn, app_key)
        return await create_api_key(conn, scope, name, app=app_key)

    key, token = _with_connection(create)
    err.print(
        f"key {key.key_id} of the app {key.app} with scopes {', '.join(sorted(key.scopes))}; "
        "store it now:"
    )
    typer.echo(token)


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="The id shown by 'list'.")]) -> None:
    """Revoke an API key at once."""
    from fanout.api.keys import revoke_api_key

    if not _with_connection(lambda conn: revoke_api_key(conn, key_id)):
        err.print(f"[red]no live key {key_id}[/]")
        raise typer.Exit(1)
    err.print(f"revoked {key_id}")


@apikey_app.command("list")
def apikey_list() -> None:
    """List API keys of every app (ids, apps and scopes; secrets are never stored)."""
    from fanout.store.api_keys import list_api_keys

    for key in _with_connection(list_api_keys):
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "live"
        typer.echo(f"{key.key_id}  {key.app:<16} {','.join(key.scopes):<22} {state:<18} {key.name}")


@caps_app.command("set")
def caps_set(
    category: Annotated[
        str, typer.Argument(help="A notification category, or '*' for every push.")
    ],
    max_sends: Annotated[
        int, typer.Option("--max", min=1, max=1_000_000, help="Pushes allowed per user.")
    ],
    window: Annotated[
        int, typer.Option(min=1, max=90 * 24 * 3600, help="The rolling window, in seconds.")
    ],
    app_key: AppOption = "default",
) -> None:
    """Set (or change) the cap of a category, as PUT /v1/frequency-caps/{category} does."""
    import re

    from fanout.api.schemas import CAP_CATEGORY_PATTERN
    from fanout.store.audience import put_frequency_cap

    if not re.match(CAP_CATEGORY_PATTERN, category):
        raise typer.BadParameter(f"must match {CAP_CATEGORY_PATTERN}", param_hint="CATEGORY")

    async def put(conn: Any) -> bool:
        found = await _app_named(conn, app_key)
        created: bool = await put_frequency_cap(
            conn, app_id=found.id, category=category, max_sends=max_sends, window_seconds=window
        )
        return created

    created = _with_connection(put)
    err.print(f"{'set' if created else 'changed'} the cap of {category}: {max_sends} per {window}s")


@caps_app.command("list")
def caps_list(app_key: AppOption = "default") -> None:
    """List an app's frequency caps."""
    from fanout.store.audience import list_frequency_caps

    async def caps(conn: Any) -> Any:
        return await list_frequency_caps(conn, app_id=(await _app_named(conn, app_key)).id)

    for cap in _with_connection(caps):
        typer.echo(f"{cap.category:<24} {cap.max_sends:>8} per {cap.window_seconds}s")


@caps_app.command("delete")
def caps_delete(
    category: Annotated[str, typer.Argument(help="The category, or '*'.")],
    app_key: AppOption = "default",
) -> None:
    """Remove a frequency cap of an app."""
    from fanout.store.audience import delete_frequency_cap

    async def delete(conn: Any) -> bool:
        found = await _app_named(conn, app_key)
        deleted: bool = await delete_frequency_cap(conn, app_id=found.id, category=category)
        return deleted

    if not _with_connection(delete):
        err.print(f"[red]no cap for {category}[/]")
        raise typer.Exit(1)
    err.print(f"removed the cap of {category}")


# --- Sources (issue #25) ----------------------------------------------------------------

# A source's option named in a refusal: SourceRefused.field -> the option or argument.
_SOURCE_OPTIONS = {"prefix": "PREFIX", "query": "--query", "column": "--column"}


@sources_app.command("add")
def sources_add(
    prefix: Annotated[str, typer.Argument(help="The topics' prefix, e.g. author:")],
    query: Annotated[
        str,
        typer.Option(
            help="A read-only SELECT over the app's tables returning the users' external "
            "ids for :key (the rest of the topic's key), e.g. SELECT follower_id::text AS "
            "user_id FROM books.follows WHERE author_id = :key::bigint"
        ),
    ],
    column: Annotated[str, typer.Option(help="The column holding the ids.")] = "user_id",
    sample_key: Annotated[str, typer.Option(help="The :key it is checked with.")] = "0",
    app_key: AppOption = "default",
) -> None:
    """Bind a topic prefix of an app to a query over its own tables (replacing the prefix's
    query if it had one), once checked: read-only under FANOUT_SOURCE_CHECK_TIMEOUT_SECONDS,
    the column returned, no sequential scan in its plan."""
    from fanout.sources import SourceRefused, SourcesUnavailable, check_prefix, check_source
    from fanout.store import sources

    settings = _settings()

    async def add(conn: Any) -> sources.Source:
        found = await _app_named(conn, app_key)
        check_prefix(prefix)
        bound = await check_source(
            conn,
            query=query,
            user_column=column,
            sample_key=sample_key,
            time_limit=settings.source_check_timeout_seconds,
            role=settings.source_role,
        )
        return await sources.put_source(
            conn, app_id=found.id, prefix=prefix, query=bound, user_column=column
        )

    from fanout.store import connect

    try:
        asyncio.run(_connected(settings, add, connect))
    except SourceRefused as refused:
        _fail(f"{_SOURCE_OPTIONS[refused.field]}: {refused}", EXIT_CONFIG)
    except SourcesUnavailable as unavailable:
        _fail(str(unavailable), EXIT_CONFIG)
    err.print(f"source {prefix} added to {app_key}", markup=False)


@sources_app.command("list")
def sources_list(app_key: AppOption = "default", json: JsonOutput = False) -> None:
    """List an app's sources."""
    from fanout.store import sources

    async def listed(conn: Any) -> list[sources.Source]:
        return await sources.list_sources(conn, app_id=(await _app_named(conn, app_key)).id)

    found = _with_connection(listed)
    if json:
        rows = [
            {
                "prefix": s.prefix,
                "query": s.query,
                "column": s.user_column,
                "created_at": s.created_at.isoformat(),
            }
            for s in found
        ]
        typer.echo(orjson.dumps(rows).decode())
        return
    for source in found:
        typer.echo(f"{source.prefix:<20} {source.user_column:<12} {source.query}")


@sources_app.command("test")
def sources_test(
    prefix: Annotated[str, typer.Argument(help="The source's prefix.")],
    key: Annotated[str, typer.Argument(help="The rest of a topic's key, e.g. 7 for author:7.")],
    app_key: AppOption = "default",
) -> None:
    """How many users the source returns for KEY, and the first few (as an event's audience
    is read: read-only, under the check's timeout)."""
    from fanout.sources import SourceRefused, SourceSample, SourcesUnavailable, run_checked
    from fanout.store import connect, sources

    settings = _settings()

    async def test(conn: Any) -> SourceSample:
        found = await _app_named(conn, app_key)
        source = await sources.get_source(conn, app_id=found.id, prefix=prefix)
        if source is None:
            _fail(f"no source {prefix} in {app_key} (`fanout sources list` shows them)")
        return await run_checked(
            conn,
            query=source.query,
            user_column=source.user_column,
            key=key,
            time_limit=settings.source_check_timeout_seconds,
            role=settings.source_role,
        )

    try:
        sample = asyncio.run(_connected(settings, test, connect))
    except SourceRefused as refused:
        _fail(str(refused))
    except SourcesUnavailable as unavailable:
        _fail(str(unavailable), EXIT_CONFIG)
    typer.echo(f"{sample.users} user(s) for {prefix}{key}")
    for user in sample.sample:
        typer.echo(f"  {user}")


@sources_app.command("delete")
def sources_delete(
    prefix: Annotated[str, typer.Argument(help="The source's prefix.")],
    app_key: AppOption = "default",
) -> None:
    """Forget a source: its topics take subscriptions again (events planned already keep
    the audience they read)."""
    from fanout.store import sources

    async def delete(conn: Any) -> bool:
        found = await _app_named(conn, app_key)
        return await sources.delete_source(conn, app_id=found.id, prefix=prefix)

    if not _with_connection(delete):
        _fail(f"no source {prefix} in {app_key}")
    err.print(f"source {prefix} deleted", markup=False)


# --- Live Activities ----------------------------------------------------------------------

JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead.")]
ActivityArgument = Annotated[str, typer.Argument(help="The activity's id, e.g. match:final.")]


def _checked_body(model: Any, fields: dict[str, Any], hints: dict[str, str]) -> Any:
    """``fields`` checked by the API's own model, so the CLI accepts what the API accepts;
    a mistake names its option (``hints``: a field's option where it is not --field)."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        hint = hints.get(name, f"--{name.replace('_', '-')}")
        raise typer.BadParameter(error["msg"], param_hint=hint) from None


def _json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=option) from None


@live_tokens_app.command("add")
def live_tokens_add(
    activity: ActivityArgument,
    user: Annotated[str, typer.Option("--user", help="The user's external id.")],
    token: Annotated[str, typer.Option("--token", help="The APNs token, hexadecimal.")],
    kind: Annotated[
        str, typer.Option(help="activity (its push token) or push_to_start (a start's).")
    ] = "activity",
    topic: Annotated[str | None, typer.Option(help="The topic the activity follows.")] = None,
    apns_environment: Annotated[
        str, typer.Option(help="production, or sandbox for a debug build's token.")
    ] = "production",
    app_key: AppOption = "default",
) -> None:
    """Register a user's token for the activity, as POST
    /v1/live-activities/{activity_id}/tokens does; prints the token's id."""
    import re

    from fanout.api.schemas import LiveActivityTokenIn
    from fanout.identifiers import TOPIC_PATTERN
    from fanout.store import live_activities, subscriptions

    if not re.match(TOPIC_PATTERN, activity):
        raise typer.BadParameter(f"must match {TOPIC_PATTERN}", param_hint="ACTIVITY")
    body = _checked_body(
        LiveActivityTokenIn,
        {"user_id": user, "token": token, "kind": kind, "topic": topic,
         "apns_environment": apns_environment},
        {"user_id": "--user"},
    )  # fmt: skip

    async def add(conn: Any) -> Any:
        found = await _app_named(conn, app_key)
        async with conn.transaction():
            activity_id = await live_activities.find_or_create_activity(
                conn, app_id=found.id, activity_key=activity
            )
            user_id = await subscriptions.find_or_create_user(
                conn, app_id=found.id, user=body.user_id
            )
            topic_id = None
            if body.topic is not None:
                topic_id = await subscriptions.find_or_create_topic(
                    conn, app_id=found.id, topic=body.topic
                )
            return await live_activities.upsert_token(
                conn,
                activity_id=activity_id,
                user_id=user_id,
                kind=body.kind,
                token=body.token.lower(),
                topic_id=topic_id,
                apns_sandbox=body.apns_environment == "sandbox",
            )

    registered = _with_connection(add)
    err.print(f"{'registered' if registered.created else 'refreshed'} a token of {activity}")
    typer.echo(registered.id)


@live_tokens_app.command("list")
def live_tokens_list(
    activity: ActivityArgument,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    app_key: AppOption = "default",
    as_json: JsonOutput = False,
) -> None:
    """List the tokens registered for an app's activity (each token's last 8 characters)."""
    from fanout.store import live_activities

    async def listed(conn: Any) -> Any:
        found = await _app_named(conn, app_key)
        return await live_activities.list_tokens(
            conn, app_id=found.id, activity_key=activity, limit=limit
        )

    tokens = _with_connection(listed)
    if as_json:
        typer.echo(orjson.dumps([dataclasses.asdict(t) for t in tokens]).decode())
        return
    for t in tokens:
        state = "active" if t.active else "retired"
        typer.echo(
            f"{t.id:>8} {t.user:<24} {t.kind:<14} …{t.token_end} {t.apns_environment:<10} "
            f"{state:<8} {t.topic or ''}"
        )


@live_app.command("update")
def live_update(
    activity: ActivityArgument,
    event: Annotated[str, typer.Option("--event", help="start, update or end.")],
    content_state: Annotated[
        str | None, typer.Option(help="The ContentState, a JSON object (start, update).")
    ] = None,
    stale_date: Annotated[
        str | None, typer.Option(help="ISO 8601 with an offset: shown as out of date then.")
    ] = None,
    dismissal_date: Annotated[
        str | None, typer.Option(help="end: ISO 8601 with an offset, when it leaves the screen.")
    ] = None,
    alert_title: Annotated[str | None, typer.Option(help="An alert shown with it.")] = None,
    alert_body: Annotated[str, typer.Option(help="The alert's body.")] = "",
    relevance_score: Annotated[float | None, typer.Option(help="0 to 1.")] = None,
    priority: Annotated[int, typer.Option(help="APNs priority: 5, or 10 (budgeted).")] = 5,
    attributes_type: Annotated[
        str | None, typer.Option(help="start: the ActivityAttributes type.")
    ] = None,
    attributes: Annotated[
        str | None, typer.Option(help="start: the attributes, a JSON object.")
    ] = None,
    ttl: Annotated[int, typer.Option(help="Seconds APNs may hold it.")] = 3600,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    app_key: AppOption = "default",
) -> None:
    """Publish a start, update or end to every token of the activity, as POST
    /v1/live-activities/{activity_id}/updates does; prints the event id (`fanout status`)."""
    import re

    from fanout.api.schemas import LiveActivityUpdateIn
    from fanout.identifiers import TOPIC_PATTERN
    from fanout.queue.sqs import open_client, open_queues
    from fanout.stages.live_activity import publish_update
    from fanout.store import create_pool

    if not re.match(TOPIC_PATTERN, activity):
        raise typer.BadParameter(f"must match {TOPIC_PATTERN}", param_hint="ACTIVITY")
    settings = _settings()
    alert = {"title": alert_title, "body": alert_body} if alert_title is not None else None
    body = _checked_body(
        LiveActivityUpdateIn,
        {
            "event": event,
            "content_state": _json_option(content_state, "--content-state"),
            "stale_date": stale_date,
            "dismissal_date": dismissal_date,
            "alert": alert,
            "relevance_score": relevance_score,
            "priority": priority,
            "attributes_type": attributes_type,
            "attributes": _json_option(attributes, "--attributes"),
            "ttl": ttl,
            "idempotency_key": idempotency_key,
        },
        {"alert": "--alert-title"},
    )

    async def main() -> Any:
        pool = await create_pool(settings)
        try:
            async with pool.acquire() as conn:
                found = await _app_named(conn, app_key)
            async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
                queues = await open_queues(client, settings)
                return await publish_update(
                    pool,
                    queues,
                    body.notification(),
                    activity_key=activity,
                    app_id=found.id,
                    idempotency_key=body.idempotency_key,
                    batch_max_bytes=settings.batch_max_bytes,
                    overdue_after=settings.reconcile_after_seconds,
                )
        finally:
            await pool.close()

    done = asyncio.run(main())
    err.print(
        f"timestamp {done.timestamp}; priority-10 updates of the activity in the last hour: "
        f"{done.priority_10_last_hour}"
    )
    typer.echo(done.published.event_id)


# --- Apps and their credentials -----------------------------------------------------------

# Each credential field (credentials.validation's names) as `apps credentials set` takes it.
_CREDENTIAL_OPTIONS = {
    "key": "--key-file",
    "key_id": "--key-id",
    "team_id": "--team-id",
    "bundle_id": "--bundle-id",
    "service_account": "--service-account",
    "vapid_private_key": "--vapid-private-key-file",
    "subject": "--subject",
}
_APNS, _FCM, _WEBPUSH = "APNs (apns)", "FCM (fcm)", "Web Push (webpush)"


async def _app_named(conn: Any, key: str) -> Any:
    """The app with this key, or one line saying there is none and exit 1."""
    from fanout.store import apps

    found = await apps.app_by_key(conn, key=key)
    if found is None:
        _fail(f"no app {key} (`fanout apps list` shows them)")
    return found


def _read_option_file(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise typer.BadParameter(f"cannot read {path}: {why}", param_hint=option) from None


def _checked(make: Any, **fields: Any) -> Any:
    """A credential made by ``make``, or the field at fault named as its option, exit 2."""
    from fanout.credentials.validation import InvalidCredential

    try:
        return make(**fields)
    except InvalidCredential as exc:
        hint = _CREDENTIAL_OPTIONS.get(exc.field, exc.field)
        raise typer.BadParameter(exc.problem, param_hint=hint) from None


# The order a credential's identity is shown in (jsonb keeps its keys in its own order).
_IDENTITY_ORDER = ("key_id", "team_id", "bundle_id", "project_id", "client_email",
                   "private_key_id", "public_key", "subject", "fingerprint")  # fmt: skip


def _identity_line(identity: dict[str, Any]) -> str:
    names = sorted(identity, key=lambda n: (*_IDENTITY_ORDER, n).index(n))
    return ", ".join(f"{name.replace('_', ' ')} {identity[name]}" for name in names)


@apps_app.command("create")
def apps_create(
    key: Annotated[str, typer.Argument(help="Short and unique, e.g. books-ios (a-z, 0-9, -).")],
    name: Annotated[str | None, typer.Option(help="What it is; default: the key.")] = None,
) -> None:
    """Create an app."""
    import re

    from fanout.store import apps

    if not re.match(apps.APP_KEY_PATTERN, key):
        raise typer.BadParameter(f"must match {apps.APP_KEY_PATTERN}", param_hint="KEY")
    created = _with_connection(
        lambda conn: apps.insert_app(conn, key=key, name=name or key, settings={})
    )
    if created is None:
        _fail(f"an app {key} exists already")
    err.print(f"created app {key}", markup=False)


@apps_app.command("list")
def apps_list(json: JsonOutput = False) -> None:
    """List the apps and the providers each has credentials for."""
    from fanout.store import apps

    found = _with_connection(apps.list_apps)
    if json:
        rows = [{**dataclasses.asdict(a), "created_at": a.created_at.isoformat()} for a in found]
        typer.echo(orjson.dumps(rows).decode())
        return
    for listed in found:
        providers = ",".join(listed.providers) or "-"
        typer.echo(f"{listed.key:<24} {providers:<18} {listed.name}")


@apps_app.command("show")
def apps_show(key: str, json: JsonOutput = False) -> None:
    """An app and what identifies each of its credentials (key ids, team, project, public
    key, fingerprints); never a private key."""
    from fanout.store import apps

    async def load(conn: Any) -> tuple[apps.App, list[apps.CredentialListing]]:
        found = await _app_named(conn, key)
        return found, await apps.app_credentials(conn, app_id=found.id)

    found, credentials = _with_connection(load)
    if json:
        shown = {
            "key": found.key,
            "name": found.name,
            "created_at": found.created_at.isoformat(),
            "settings": found.settings,
            "default_throttle_per_minute": found.default_throttle_per_minute,
            "allow_critical": found.allow_critical,
            "credentials": {
                c.provider: {
                    **c.identity,
                    "kek_id": c.kek_id,
                    "updated_at": c.updated_at.isoformat(),
                }
                for c in credentials
            },
        }
        typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(f"{found.key}  {found.name}  (created {found.created_at:%Y-%m-%d %H:%M} UTC)")
    if found.default_throttle_per_minute:
        typer.echo(f"  paces its events at {found.default_throttle_per_minute}/min by default")
    if found.allow_critical is not None:
        typer.echo(f"  critical alerts: {'allowed' if found.allow_critical else 'refused'}")
    if not credentials:
        typer.echo("  no credentials: `fanout apps credentials set` stores them")
    for c in credentials:
        typer.echo(f"  {c.provider:<8} {_identity_line(c.identity)}")
        typer.echo(f"  {'':<8} set {c.updated_at:%Y-%m-%d %H:%M} UTC, sealed under key {c.kek_id}")


@apps_app.command("settings")
def apps_settings(
    key: Annotated[str, typer.Argument(help="The app.")],
    throttle: Annotated[
        int | None,
        typer.Option(
            help="Pace its events at N devices a minute unless their publish sets one; "
            "0 clears it (unpaced)."
        ),
    ] = None,
    allow_critical: Annotated[
        str | None,
        typer.Option(
            help="true once Apple has granted the app the critical-alerts entitlement (its "
            "critical alerts are accepted), false (refused), or default (the deployment's "
            "FANOUT_APNS_ALLOW_CRITICAL decides)."
        ),
    ] = None,
) -> None:
    """Change an app's settings (as PATCH /v1/apps/{app}); prints them."""
    from fanout.api.schemas import MAX_THROTTLE_PER_MINUTE
    from fanout.store import apps

    if throttle is not None and not 0 <= throttle <= MAX_THROTTLE_PER_MINUTE:
        raise typer.BadParameter(
            f"must be 1 to {MAX_THROTTLE_PER_MINUTE} devices a minute, or 0 to clear it",
            param_hint="--throttle",
        )
    critical_choices: dict[str, bool | None] = {"true": True, "false": False, "default": None}
    if allow_critical is not None and allow_critical not in critical_choices:
        raise typer.BadParameter(
            f"must be true, false or default, not {allow_critical!r}",
            param_hint="--allow-critical",
        )

    async def change(conn: Any) -> apps.App:
        found: apps.App = await _app_named(conn, key)
        if throttle is not None:
            changed = await apps.set_default_throttle(
                conn, key=key, throttle_per_minute=throttle or None
            )
            found = changed or found
        if allow_critical is not None:
            changed = await apps.set_allow_critical(
                conn, key=key, allow_critical=critical_choices[allow_critical]
            )
            found = changed or found
        return found

    found = _with_connection(change)
    pace = found.default_throttle_per_minute
    typer.echo(f"{found.key}  default throttle: {f'{pace}/min' if pace else 'none (unpaced)'}")
    own = found.allow_critical
    critical = "default (FANOUT_APNS_ALLOW_CRITICAL)" if own is None else str(own).lower()
    typer.echo(f"{found.key}  allow critical: {critical}")


@apps_app.command("delete")
def apps_delete(key: str) -> None:
    """Delete an app and its credentials. The app `default` is never deleted: every row from
    before apps is its, and the FANOUT_APNS_*, _FCM_*, _VAPID_* settings are its."""
    from fanout.store import apps

    if key == apps.DEFAULT_APP:
        _fail(f"the app {apps.DEFAULT_APP} cannot be deleted: it owns what predates apps")
    try:
        deleted = _with_connection(lambda conn: apps.delete_app(conn, key=key))
    except apps.AppInUse as exc:
        _fail(str(exc))
    if not deleted:
        _fail(f"no app {key}")
    err.print(f"deleted app {key} and its credentials", markup=False)


@credentials_app.command("set")
def credentials_set(
    key: Annotated[str, typer.Argument(help="The app.")],
    provider: Annotated[str, typer.Argument(help="apns, fcm or webpush.")],
    key_file: Annotated[
        str | None, typer.Option(help="The .p8 key file from Apple.", rich_help_panel=_APNS)
    ] = None,
    key_id: Annotated[
        str | None, typer.Option(help="The key's 10-character id.", rich_help_panel=_APNS)
    ] = None,
    team_id: Annotated[
        str | None, typer.Option(help="The 10-character team id.", rich_help_panel=_APNS)
    ] = None,
    bundle_id: Annotated[
        str | None, typer.Option(help="The app's bundle id (the topic).", rich_help_panel=_APNS)
    ] = None,
    service_account: Annotated[
        str | None,
        typer.Option(help="The service account's JSON key file.", rich_help_panel=_FCM),
    ] = None,
    vapid_private_key_file: Annotated[
        str | None,
        typer.Option(
            help="A P-256 private key: PEM, or the base64url scalar web-push tools print.",
            rich_help_panel=_WEBPUSH,
        ),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            help="mailto: or https:// contact for push services.", rich_help_panel=_WEBPUSH
        ),
    ] = None,
) -> None:
    """Check a credential and store it, sealed, as the app's credential for the provider
    (replacing any). A field that is wrong is named; nothing is stored then."""
    from fanout.credentials import validation
    from fanout.credentials.stored import required_keyring, store_credential

    given = {
        "--key-file": key_file, "--key-id": key_id, "--team-id": team_id,
        "--bundle-id": bundle_id, "--service-account": service_account,
        "--vapid-private-key-file": vapid_private_key_file, "--subject": subject,
    }  # fmt: skip
    wanted = {
        "apns": ("--key-file", "--key-id", "--team-id", "--bundle-id"),
        "fcm": ("--service-account",),
        "webpush": ("--vapid-private-key-file", "--subject"),
    }
    if provider not in wanted:
        raise typer.BadParameter("must be apns, fcm or webpush", param_hint="PROVIDER")
    for option, value in given.items():
        if value is not None and option not in wanted[provider]:
            raise typer.BadParameter(f"is not for {provider}", param_hint=option)
    for option in wanted[provider]:
        if given[option] is None:
            raise typer.BadParameter(f"is needed for {provider}", param_hint=option)
    if provider == "apns":
        credential = _checked(
            validation.apns_credential,
            key_pem=_read_option_file(str(key_file), "--key-file"),
            key_id=key_id,
            team_id=team_id,
            bundle_id=bundle_id,
        )
    elif provider == "fcm":
        credential = _checked(
            validation.fcm_credential,
            service_account_json=_read_option_file(str(service_account), "--service-account"),
        )
    else:
        credential = _checked(
            validation.webpush_credential,
            vapid_private_key=_read_option_file(
                str(vapid_private_key_file), "--vapid-private-key-file"
            ),
            subject=subject,
        )
    keyring = required_keyring(_settings())

    async def store(conn: Any) -> bool:
        found = await _app_named(conn, key)
        return await store_credential(conn, app=found, credential=credential, keyring=keyring)

    created = _with_connection(store)
    err.print(
        f"{'stored' if created else 'replaced'} the {provider} credential of {key}: "
        f"{_identity_line(credential.identity)}",
        markup=False,
    )
    if provider == "webpush":  # what the app's pages pass to pushManager.subscribe()
        typer.echo(credential.identity["public_key"])


@credentials_app.command("remove")
def credentials_remove(
    key: Annotated[str, typer.Argument(help="The app.")],
    provider: Annotated[str, typer.Argument(help="apns, fcm or webpush.")],
) -> None:
    """Remove the app's credential for a provider."""
    from fanout.store import apps

    if provider not in apps.PROVIDERS:
        raise typer.BadParameter("must be apns, fcm or webpush", param_hint="PROVIDER")

    async def remove(conn: Any) -> bool:
        found = await _app_named(conn, key)
        return await apps.delete_credential(conn, app_id=found.id, provider=provider)

    if not _with_connection(remove):
        _fail(f"the app {key} has no {provider} credential")
    err.print(f"removed the {provider} credential of {key}", markup=False)


@apps_app.command("import-env")
def apps_import_env(
    key: Annotated[str, typer.Argument(help="The app: default, as a rule.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a credential the app has already.")
    ] = False,
) -> None:
    """Store the FANOUT_APNS_*, FANOUT_FCM_* and FANOUT_VAPID_* settings as the app's
    credentials, checked as `credentials set` checks them (a mistake names the setting)."""
    from fanout.credentials.stored import import_settings_credentials, required_keyring

    settings = _settings()
    keyring = required_keyring(settings)

    async def store(conn: Any) -> dict[str, str]:
        found = await _app_named(conn, key)
        return await import_settings_credentials(
            conn, app=found, settings=settings, keyring=keyring, replace=replace
        )

    done = _with_connection(store)
    if not done:
        _fail("no FANOUT_APNS_*, FANOUT_FCM_* or FANOUT_VAPID_* setting is set: nothing to import")
    for provider, what in done.items():
        kept = " (it had one; --replace replaces it)" if what == "kept" else ""
        err.print(f"{provider}: {what}{kept}", markup=False)


@vapid_app.command("generate")
def vapid_generate(
    key: Annotated[
        str | None, typer.Argument(help="Store the pair as this app's Web Push credential.")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="mailto: or https:// contact (with an app KEY).")
    ] = None,
    private_key_file: Annotated[
        str | None, typer.Option(help="Also write the private key (PEM) to this new file.")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace the app's VAPID key: every browser subscribed under the old "
            "one must subscribe again.",
        ),
    ] = False,
) -> None:
    """Make a VAPID key pair and print its public key as a browser's applicationServerKey
    takes it (base64url of the uncompressed point). The private key is never printed: it is
    stored sealed as the app's credential, or written to a file only you can read."""
    import os

    from fanout.credentials import validation
    from fanout.credentials.stored import required_keyring, store_credential
    from fanout.store import apps

    if key is None and private_key_file is None:
        raise typer.BadParameter(
            "give an app KEY to store the pair, or --private-key-file to write it",
            param_hint="KEY",
        )
    if key is not None and subject is None:
        raise typer.BadParameter("is needed to store the pair for an app", param_hint="--subject")
    pem = validation.generate_vapid_key()
    credential = None
    if key is not None:
        credential = _checked(validation.webpush_credential, vapid_private_key=pem, subject=subject)
    keyring = required_keyring(_settings()) if key is not None else None
    if private_key_file is not None:
        try:  # a new file, readable by its owner only: never over another key
            fd = os.open(private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            hint = "--private-key-file"
            raise typer.BadParameter(f"cannot create it: {exc.strerror}", param_hint=hint) from None
        with os.fdopen(fd, "w") as file:
            file.write(pem)
    if key is not None and credential is not None and keyring is not None:

        async def store(conn: Any) -> None:
            found = await _app_named(conn, key)
            held = {c.provider for c in await apps.app_credentials(conn, app_id=found.id)}
            if "webpush" in held and not replace:
                _fail(
                    f"the app {key} has a VAPID key already: replacing it unsubscribes every "
                    "browser subscribed under it; --replace does"
                )
            await store_credential(conn, app=found, credential=credential, keyring=keyring)

        try:
            _with_connection(store)
        except BaseException:  # not stored: no file of a key nothing uses
            if private_key_file is not None:
                os.unlink(private_key_file)
            raise
        err.print(f"stored a new VAPID key as the webpush credential of {key}", markup=False)
    typer.echo(validation.application_server_key(validation.load_vapid_private_key(pem)))


@secrets_app.command("generate-key")
def secrets_generate_key() -> None:
    """Make a key-encryption key for FANOUT_SECRET_KEY (32 random bytes, base64)."""
    from fanout.credentials.sealing import decode_key, generate_key, kek_id

    key = generate_key()
    err.print(
        f"key {kek_id(decode_key(key))}: set it as FANOUT_SECRET_KEY and keep it as you keep "
        "the database's password (without it the stored credentials cannot be opened)",
        markup=False,
    )
    typer.echo(key)


@secrets_app.command("rotate")
def secrets_rotate(
    new_key: Annotated[
        str,
        typer.Option(
            envvar="FANOUT_NEW_SECRET_KEY",
            show_envvar=True,
            help="The key to seal under from now on (base64, 32 bytes). Better given in "
            "FANOUT_NEW_SECRET_KEY than on a command line others can read.",
        ),
    ],
) -> None:
    """Reseal every stored credential under a new key, opening each with FANOUT_SECRET_KEY
    (or FANOUT_PREVIOUS_SECRET_KEYS).

    One credential at a time, each in its own transaction: the API and workers go on
    meanwhile, and a rotation cut short is finished by running it again. With no process
    left unable to open a row: first set FANOUT_SECRET_KEY to the new key and
    FANOUT_PREVIOUS_SECRET_KEYS to the old one everywhere, then rotate (--new-key the new
    key), then drop the previous one.
    """
    from fanout.credentials.sealing import Keyring, decode_key, kek_id
    from fanout.credentials.stored import KEK_UNSET, rotate

    settings = _settings()
    if settings.secret_key is None:
        _fail(KEK_UNSET, EXIT_CONFIG)
    try:
        new = decode_key(new_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--new-key") from None
    current = decode_key(settings.secret_key.get_secret_value())
    previous = [decode_key(key) for key in settings.previous_keys()]
    keyring = Keyring(new, current, *previous)
    done = _with_connection(lambda conn: rotate(conn, keyring=keyring))
    for failure in done.failed:
        sys.stderr.write(f"fanout: {failure}\n")
    err.print(
        f"resealed {done.resealed} credential(s) under key {kek_id(new)}; "
        f"{done.already} were under it already; {len(done.failed)} could not be opened",
        markup=False,
    )
    if done.failed:
        raise typer.Exit(EXIT_FAILED)


async def _with_queues(settings: Settings, role: str, work: Any) -> list[Any]:
    from fanout.queue.sqs import open_client, open_queues

    if role not in ("fanout", "delivery", "both"):
        raise typer.BadParameter("must be fanout, delivery or both", param_hint="--queue")
    async with open_client(settings, max_attempts=CLI_SQS_ATTEMPTS) as client:
        queues = await open_queues(client, settings)
        chosen = [queues.fanout, queues.delivery]
        chosen = [q for q in chosen if role in ("both", q.name.rsplit("-", 1)[-1])]
        return [(queue, await work(queue)) for queue in chosen]


@dlq_app.command("list")
def dlq_list(queue: QueueRole = "both") -> None:
    """How many messages wait in each dead-letter queue."""
    from fanout.queue.sqs import Queue

    async def depth(q: Queue) -> int:
        dlq = Queue(
            q.client,
            q.dead_letter_url or "",
            max_message_bytes=0,
            dead_letter_url=None,
            max_receive_count=None,
        )
        return await dlq.depth()

    for q, count in asyncio.run(_with_queues(_settings(), queue, depth)):
        typer.echo(f"{q.name}-dlq: {count}")


@dlq_app.command("show")
def dlq_show(
    queue: QueueRole = "both",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    body_chars: Annotated[int, typer.Option(help="How much of each body to print.")] = 200,
) -> None:
    """Dead letters with the reason each failed; they stay in the queue."""
    from fanout.queue.admin import peek_dead_letters

    for q, letters in asyncio.run(
        _with_queues(_settings(), queue, lambda q: peek_dead_letters(q, limit))
    ):
        typer.echo(f"== {q.name}-dlq: {len(letters)} shown")
        for letter in letters:
            typer.echo(f"{letter.message_id}  tries={letter.receive_count}  {letter.reason}")
            typer.echo(f"    {letter.body[:body_chars]}")


@dlq_app.command("redrive")
def dlq_redrive(
    queue: QueueRole = "both",
    limit: Annotated[int | None, typer.Option(min=1, help="Default: all.")] = None,
) -> None:
    """Move dead letters back to their queue to be tried again."""
    from fanout.queue.admin import redrive

    for q, moved in asyncio.run(_with_queues(_settings(), queue, lambda q: redrive(q, limit))):
        typer.echo(f"{q.name}: {moved} message(s) moved back")


@app.command()
def emulators(
    env: Annotated[
        bool, typer.Option("--env", help="Print shell 'export' lines instead of JSON.")
    ] = False,
    fcm_rate: Annotated[
        float,
        typer.Option(
            min=0, help="FCM answers 429 (Retry-After: 1) above this many sends/s; 0: never."
        ),
    ] = 0.0,
) -> None:
    """Serve local APNs, FCM and push-service emulators (HTTP/2, TLS) until interrupted.

    Prints the FANOUT_* settings that point fanout at them, and the Web Push
    subscription to use: one JSON line, or with --env 'export NAME=value' lines for a
    shell to source. The keys in them are generated now and only good for these.
    """
    from fanout.local.emulators.stack import local_push_services

    async def main() -> None:
        async with local_push_services(server="granian") as services:
            if fcm_rate:
                services.fcm.limit_rate(fcm_rate)
            values = {
                f"FANOUT_{k.upper()}": v.get_secret_value() if hasattr(v, "get_secret_value") else v
                for k, v in services.settings.items()
            }
            subscription = {
                "webpush_endpoint_base": services.webpush_endpoint_base,
                "p256dh": services.p256dh,
                "auth": services.auth,
            }
            if env:
                sys.stdout.write(_export_lines(values, subscription))
            else:
                line = {"settings": values, **subscription}
                sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            await stopping.wait()

    asyncio.run(main())


def _export_lines(values: dict[str, Any], subscription: dict[str, str]) -> str:
    """``export NAME=value`` lines, quoted for a POSIX shell (PEM keys span lines)."""
    lines = [f"export {name}={shlex.quote(str(value))}" for name, value in values.items()]
    # Not settings: what a Web Push device registered with these emulators must carry.
    lines += [f"# {name}: {value}" for name, value in subscription.items()]
    return "\n".join(lines) + "\n"


# --- Bulk import and export (fanout.bulk) -------------------------------------------------

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", help="csv or ndjson (default: from the name, .ndjson/.jsonl, else csv)."
    ),
]


@app.command("import")
def import_(
    kind: Annotated[str, typer.Argument(help="users, devices or subscriptions.")],
    file: Annotated[str, typer.Argument(help="A CSV or NDJSON file, gzipped or not; - for stdin.")],
    fmt: FormatOption = None,
    mapping: Annotated[
        str | None,
        typer.Option(help="Read another service's export: onesignal (CSV export) or firebase."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check every row, write nothing; say what would change."),
    ] = False,
    rejects: Annotated[
        str | None,
        typer.Option(
            help="Where bad rows' line numbers and reasons go (default: FILE.rejects.csv)."
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="A rows/s bar on stderr (default: on a terminal)."
        ),
    ] = None,
    connections: Annotated[
        int,
        typer.Option(
            min=1, max=8, help="Chunks in the database at once, each on its own connection."
        ),
    ] = 2,
    json: JsonOutput = False,
    app_key: AppOption = "default",
) -> None:
    """Import users, devices or subscriptions in bulk into an app: COPY into a staging table
    and one set-based upsert per chunk; the same file twice changes nothing; a bad row is
    reported with its line and reason (in the rejects file) and the others land."""
    import csv

    from fanout.bulk import FORMATS, KINDS
    from fanout.bulk.load import import_rows
    from fanout.bulk.plain_csv import csv_key_rows
    from fanout.bulk.readers import format_of, open_input, records
    from fanout.bulk.rows import MAPPINGS, csv_device_rows

    if kind not in KINDS:
        raise typer.BadParameter(f"one of {', '.join(KINDS)}", param_hint="KIND")
    fmt = format_of(file, fmt)
    if fmt not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    if mapping is not None and mapping not in MAPPINGS:
        raise typer.BadParameter(f"one of {', '.join(MAPPINGS)}", param_hint="--mapping")
    try:
        stream = open_input(file)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from None
    rejects_path = rejects or (
        "fanout-import.rejects.csv" if file == "-" else f"{file}.rejects.csv"
    )
    # Written on every run (a header alone: nothing rejected), so it is never last run's.
    try:
        rejects_file = open(rejects_path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        stream.close()
        why = f"cannot write {rejects_path}: {exc.strerror}"
        raise typer.BadParameter(why, param_hint="--rejects") from None
    rejects_csv = csv.writer(rejects_file, lineterminator="\n")
    rejects_csv.writerow(["line", "reason"])

    def on_reject(line: int, reason: str) -> None:
        rejects_csv.writerow([line, reason])

    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()

    def on_progress(rows: int) -> None:
        if show:
            rate = rows / max(time.monotonic() - started, 1e-6)
            sys.stderr.write(f"\r{kind}: {rows:,} rows  {rate:,.0f} rows/s")
            sys.stderr.flush()

    settings = _settings()

    from fanout.store import connect

    async def run(conn: Any) -> Any:
        found = await _app_named(conn, app_key)
        # Two chunks at once: 52,000 devices/s against 33,000 on one connection (20,000-row
        # chunks, the loaded 2-core development machine).
        more = [
            await connect(settings.database_dsn(), pooler=settings.database_pooler)
            for _ in range(connections - 1)
        ]
        try:
            return await import_rows(
                conn,
                kind=kind,
                app_id=found.id,
                numbered=(
                    records(stream, fmt)
                    if fmt != "csv" or mapping is not None
                    else csv_device_rows(stream)
                    if kind == "devices"
                    else csv_key_rows(stream, kind)
                ),
                mapping=mapping,
                dry_run=dry_run,
                more_connections=more,
                on_reject=on_reject,
                on_progress=on_progress,
            )
        finally:
            for extra in more:
                await extra.close()

    try:
        counts = asyncio.run(_connected(settings, run, connect))
    finally:
        stream.close()
        rejects_file.close()
    seconds = max(time.monotonic() - started, 1e-6)
    if show:
        sys.stderr.write("\n")
    if json:
        typer.echo(orjson.dumps({**counts.as_dict(), "seconds": round(seconds, 3)}).decode())
    would = "would be " if dry_run else ""
    summary = (
        f"{kind}: {counts.rows:,} rows in {seconds:.1f}s ({counts.rows / seconds:,.0f} rows/s): "
        f"{counts.inserted:,} {would}inserted, {counts.updated:,} {would}updated, "
        f"{counts.unchanged:,} unchanged, {counts.rejected:,} rejected"
    )
    if counts.rejected:
        summary += f" (lines and reasons in {rejects_path})"
    err.print(summary, markup=False)


@app.command("export")
def export(
    kind: Annotated[str, typer.Argument(help="devices or subscriptions.")],
    file: Annotated[str, typer.Argument(help="Where to write; - (the default) for stdout.")] = "-",
    fmt: FormatOption = None,
    app_key: AppOption = "default",
) -> None:
    """Export an app's active devices or its subscriptions in the columns `fanout import`
    reads (CSV or NDJSON; .gz names are gzipped), a page at a time."""
    import gzip
    import io

    from fanout.bulk import EXPORT_KINDS, FORMATS
    from fanout.bulk.load import export_records
    from fanout.bulk.readers import format_of
    from fanout.bulk.writers import RecordWriter

    if kind not in EXPORT_KINDS:
        raise typer.BadParameter(f"one of {', '.join(EXPORT_KINDS)}", param_hint="KIND")
    fmt = format_of(file, fmt)
    if fmt not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    settings = _settings()
    out: Any
    if file == "-":
        out = sys.stdout
    elif file.endswith(".gz"):
        out = io.TextIOWrapper(gzip.open(file, "wb"), encoding="utf-8", newline="")  # noqa: SIM115
    else:
        out = open(file, "w", encoding="utf-8", newline="")  # noqa: SIM115

    async def run(conn: Any) -> int:
        found = await _app_named(conn, app_key)
        writer = RecordWriter(out, kind=kind, fmt=fmt)
        written = 0
        page: list[dict[str, Any]] = []
        async for record in export_records(conn, kind=kind, app_id=found.id):
            page.append(record)
            if len(page) >= 10_000:
                written += writer.write(page)
                page.clear()
        return written + writer.write(page)

    from fanout.store import connect

    try:
        written = asyncio.run(_connected(settings, run, connect))
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    err.print(f"{kind}: {written:,} rows exported", markup=False)


# --- Webhooks (issue #24), as /v1/webhooks -------------------------------------------------
WebhookId = Annotated[int, typer.Argument(min=1, help="The endpoint's id (`webhooks list`).")]


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="https:// on a public address.")],
    kind: Annotated[
        list[str],
        typer.Option(
            "--kind",
            help="event.finished, devices.retired, devices.failed or push.opened; repeat "
            "for several.",
        ),
    ],
    app_key: AppOption = "default",
) -> None:
    """Register an endpoint; prints its id and its whsec_ signing secret, shown this once."""
    from fanout.credentials.stored import keyring
    from fanout.webhooks import addresses
    from fanout.webhooks.endpoints import UnknownKind, register

    settings = _settings()

    async def add(conn: Any) -> Any:
        found = await _app_named(conn, app_key)
        return await register(
            conn,
            app_id=found.id,
            url=url,
            kinds=kind,
            keyring=keyring(settings),
            resolver=addresses.system_resolver,
            allow_private=settings.webhook_allow_private,
        )

    try:
        endpoint, secret = _with_connection(add)
    except addresses.RefusedAddress as exc:
        _fail(f"URL: {exc}", EXIT_CONFIG)
    except UnknownKind as exc:
        _fail(f"--kind: {exc}", EXIT_CONFIG)
    err.print(f"webhook {endpoint.id} for {', '.join(endpoint.kinds)}", markup=False)
    err.print("its signing secret (shown this once; keep it where your backend reads it):")
    typer.echo(secret)


@webhooks_app.command("list")
def webhooks_list(app_key: AppOption = "default", json: JsonOutput = False) -> None:
    """An app's endpoints and their state (active, failing, disabled)."""
    from fanout.api.routes.webhooks import webhook_out
    from fanout.store import webhooks

    async def listed(conn: Any) -> Any:
        found = await _app_named(conn, app_key)
        return await webhooks.list_endpoints(conn, app_id=found.id)

    shown = [webhook_out(endpoint) for endpoint in _with_connection(listed)]
    if json:
        typer.echo(orjson.dumps([s.model_dump(mode="json") for s in shown]).decode())
        return
    for one in shown:
        typer.echo(f"{one.id:>6} {one.state:<9} {','.join(one.kinds):<40} {one.url}")


@webhooks_app.command("delete")
def webhooks_delete(webhook: WebhookId, app_key: AppOption = "default") -> None:
    """Delete an endpoint and its deliveries."""
    from fanout.store import webhooks

    async def delete(conn: Any) -> bool:
        found = await _app_named(conn, app_key)
        deleted: bool = await webhooks.delete_endpoint(conn, app_id=found.id, endpoint_id=webhook)
        return deleted

    if not _with_connection(delete):
        _fail(f"no webhook {webhook} in app {app_key}")
    err.print(f"deleted webhook {webhook}")


@webhooks_app.command("test")
def webhooks_test(webhook: WebhookId, app_key: AppOption = "default") -> None:
    """Queue a webhook.test delivery to the endpoint (a worker sends it)."""
    from fanout.store import webhooks

    async def test(conn: Any) -> int | None:
        found = await _app_named(conn, app_key)
        made: int | None = await webhooks.enqueue_test(
            conn,
            app_id=found.id,
            endpoint_id=webhook,
            kind=webhooks.TEST_KIND,
            payload={"webhook": webhook, "app": app_key},
        )
        return made

    made = _with_connection(test)
    if made is None:
        _fail(f"no webhook {webhook} in app {app_key}")
    err.print(f"delivery {made} queued; `fanout webhooks list` shows the endpoint's state")


@webhooks_app.command("replay")
def webhooks_replay(
    webhook: Annotated[
        int | None, typer.Argument(min=1, help="Every failed delivery of this endpoint.")
    ] = None,
    delivery: Annotated[int | None, typer.Option(min=1, help="One failed delivery.")] = None,
    app_key: AppOption = "default",
) -> None:
    """Send failed deliveries again (each with its own webhook-id): an endpoint's (enabling
    it again if it was disabled), or one with --delivery."""
    from fanout.store import webhooks

    if (webhook is None) == (delivery is None):
        raise typer.BadParameter("give an endpoint's id or --delivery, one of them")

    async def replay(conn: Any) -> int | None:
        found = await _app_named(conn, app_key)
        if delivery is not None:
            done = await webhooks.replay_delivery(conn, app_id=found.id, delivery_id=delivery)
            return 1 if done else None
        assert webhook is not None
        replayed: int | None = await webhooks.replay_endpoint(
            conn, app_id=found.id, endpoint_id=webhook
        )
        return replayed

    replayed = _with_connection(replay)
    if replayed is None:
        what = f"failed delivery {delivery}" if delivery else f"webhook {webhook}"
        _fail(f"no {what} in app {app_key}")
    err.print(f"{replayed} deliveries sent again")


def main() -> None:
    try:
        app()
    except Exception as exc:
        explained = _explain(exc)
        if explained is None:
            raise
        _fail(*explained)
