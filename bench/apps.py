"""Many apps in one deployment: is each device pushed once, and what do apps cost?

    python bench/apps.py [--apps 100] [--devices-per-app 1000] [--configured-apps 1000]
                         [--set FANOUT_NAME=VALUE ...] [--json]

Processes as in bench/pipeline.py: moto's SQS server, the APNs emulator (HTTP/2 + TLS,
verifying every JWT, counting each event's pushes per token), a fan-out worker and a
delivery worker; PostgreSQL's clocks time the stages. Every app stores its own APNs
credential (sealed under FANOUT_SECRET_KEY, so the worker builds a provider per app from
it); the emulator knows one team, key and bundle id, and every app's credential is that
key, which is what it accepts.

1. Delivery, many apps against one: ``--apps`` apps with an event of ``--devices-per-app``
   devices each, published together, against the same number of devices in one app, on
   the same workers (the one app first, which also warms them). Each event's pushes are
   counted at the emulator: every device exactly once, per app. The ratio is the many
   apps' notifications/second over the one app's (target >= 0.8).
2. Memory, ``--configured-apps`` apps against one: a fresh delivery worker delivers an
   event of one device to each of the configured apps, all published together (so it
   builds every app's providers, at most CAPACITY of them kept), and another fresh worker
   the same number of devices in one app. The ratio is their peak RSS (target <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from _services import database, free_port, queues_ready, stop_processes
from pipeline import cpu_seconds, peak_rss_kb, wait_for_line

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import required_keyring, store_credential
from fanout.credentials.validation import apns_credential
from fanout.local.demo import DeviceShape
from fanout.notification import Notification
from fanout.queue.sqs import open_client, open_queues
from fanout.stages.publish import publish
from fanout.store import apps, connect, create_pool, events, seeding, subscriptions
from fanout.store.lifecycle import TERMINAL_STATES
from fanout.store.migrate import migrate

APNS_ONLY = DeviceShape(platforms=("apns",))
NOTE = Notification(title="New book", body="by an author you follow")
# What each phase expects of the many apps against the one.
RATE_TARGET, RSS_TARGET = 0.8, 1.2
WAIT_SECONDS = 3600.0  # for a round's events to end


# --- the emulator, in a process of its own -------------------------------------------


def serve_emulators() -> None:
    """The local push services (granian), one JSON line of settings as `fanout emulators`
    prints, then, for every "stats" line read, the APNs emulators' per-event counts."""
    from fanout.local.emulators.stack import local_push_services

    async def main() -> None:
        async with local_push_services(server="granian") as services:
            emulators = [services.apns] + ([services.apns_sandbox] if services.apns_sandbox else [])
            for emulator in emulators:  # every event of the run, not the last 16
                emulator.ledger.events_kept = 1_000_000
            values = {
                f"FANOUT_{k.upper()}": v.get_secret_value() if hasattr(v, "get_secret_value") else v
                for k, v in services.settings.items()
            }
            print(orjson.dumps({"settings": values}).decode(), flush=True)
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if line.strip() == "stats":
                    counts: dict[str, list[int]] = {}  # event -> [unique, duplicates]
                    for emulator in emulators:
                        for key, event in emulator.ledger.events().items():
                            found = counts.setdefault(key, [0, 0])
                            found[0] += event.unique
                            found[1] += event.duplicates
                    print(orjson.dumps(counts).decode(), flush=True)

    asyncio.run(main())


class Emulators:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-emulators"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.settings: dict[str, str] = orjson.loads(self.process.stdout.readline())["settings"]

    def counts(self) -> dict[int, tuple[int, int]]:
        """Event id -> (devices pushed, duplicate pushes), as the emulators counted."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        found = orjson.loads(self.process.stdout.readline())
        return {int(key): (unique, duplicates) for key, (unique, duplicates) in found.items()}


# --- data -------------------------------------------------------------------------------


async def seed_apps(
    settings: Settings, *, configured: int, busy: int, devices_per_app: int
) -> dict[str, Any]:
    """``configured`` apps (``bench-0001`` …) and the app ``bench-one``, each with its own
    stored APNs credential; topics: ``busy`` apps' of ``devices_per_app`` devices and
    ``bench-one``'s of as many in all, every configured app's of one device and
    ``bench-one``'s of as many in all."""
    keyring = required_keyring(settings)
    assert settings.apns_key is not None and settings.apns_key_id and settings.apns_team_id
    credential = apns_credential(
        key_pem=settings.apns_key.get_secret_value(),
        key_id=settings.apns_key_id,
        team_id=settings.apns_team_id,
        bundle_id=settings.apns_topic or "",
    )
    conn = await connect(settings.database_dsn())
    try:
        await migrate(conn)
        keys = [f"bench-{i:04d}" for i in range(1, configured + 1)]
        ids: dict[str, int] = {}
        for key in [*keys, "bench-one"]:
            async with conn.transaction():
                app = await apps.insert_app(conn, key=key, name=key, settings={})
                assert app is not None, f"the app {key} exists already"
                await store_credential(conn, app=app, credential=credential, keyring=keyring)
                ids[key] = app.id
        busy_topics = {
            key: await seed_topic(conn, ids[key], devices_per_app) for key in keys[:busy]
        }
        one_busy = await seed_topic(conn, ids["bench-one"], devices_per_app * busy)
        small_topics = {key: await seed_topic(conn, ids[key], 1) for key in keys}
        one_small = await seed_topic(conn, ids["bench-one"], configured)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return {
        "ids": ids,
        "busy": busy_topics,
        "one_busy": one_busy,
        "small": small_topics,
        "one_small": one_small,
    }


async def seed_topic(conn: asyncpg.Connection, app_id: int, devices: int) -> str:
    """A new topic of the app with ``devices`` subscribers, an APNs device each, server-side
    (``fanout.local.demo.seed`` without its ANALYZE, which 1,000 small topics would repeat)."""
    run = secrets.token_hex(4)
    topic = f"bench:{run}"
    async with conn.transaction():
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=app_id, topic=topic)
        users = await seeding.seed_users(conn, app_id=app_id, prefix=f"b-{run}-", count=devices)
        await seeding.seed_subscriptions(
            conn, topic_id=topic_id, first_user_id=users.first_id, last_user_id=users.last_id
        )
        await seeding.seed_devices(
            conn,
            first_user_id=users.first_id,
            last_user_id=users.last_id,
            per_user=1,
            token_seed=run,
            webpush_endpoint_base="https://push.example.net/wp/",
            web_push_p256dh=APNS_ONLY.p256dh,
            web_push_auth=APNS_ONLY.auth,
            platforms=APNS_ONLY.platforms,
        )
    return topic


# --- one round: events published together, until every one has ended ------------------


async def deliver(settings: Settings, targets: list[tuple[int, str]]) -> dict[str, Any]:
    """Publish an event to each (app id, topic) at once; wait until all have ended; the
    delivery stage's rate over all of them, from the database's clocks."""
    pool = await create_pool(settings, min_size=1, max_size=20)
    try:
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            published = await asyncio.gather(
                *(
                    publish(pool, queues, NOTE, app_id=app_id, topic=topic)
                    for app_id, topic in targets
                )
            )
        event_ids = [p.event_id for p in published]
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            async with pool.acquire() as conn:
                rows = [await conn.fetchrow(events.EVENT_PROGRESS, e) for e in event_ids]
            if all(_ended(row) for row in rows):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"events not ended within {WAIT_SECONDS:g}s")
            await asyncio.sleep(0.25)
        async with pool.acquire() as conn:
            span = await conn.fetchrow(
                "SELECT min(started_at) AS first, max(finished_at) AS last"
                " FROM delivery_batches WHERE event_id = ANY($1::bigint[])",
                event_ids,
            )
    finally:
        await pool.close()
    sent = int(sum(row["sent"] for row in rows))  # the progress sums are numeric
    delivery = (span["last"] - span["first"]).total_seconds()
    created = min(row["created_at"] for row in rows)
    return {
        "events": event_ids,
        "devices": int(sum(row["devices"] for row in rows)),
        "sent": sent,
        "failed": int(sum(row["failed"] + row["invalid"] + row["skipped"] for row in rows)),
        "delivery_notifications_per_second": round(sent / delivery) if delivery else 0,
        "seconds_to_last_notification": round((span["last"] - created).total_seconds(), 2),
    }


def _ended(row: Any) -> bool:
    done = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
    return bool(row["status"] in TERMINAL_STATES and done >= row["devices"])


def exactly_once(
    counts: dict[int, tuple[int, int]], event_ids: list[int], expected: int
) -> dict[str, int]:
    """Of these events (one per app), how many pushed each device exactly once, how many
    devices were missed and how many pushes were duplicates."""
    missed = duplicates = whole = 0
    for event_id in event_ids:
        unique, again = counts.get(event_id, (0, 0))
        missed += expected - unique
        duplicates += again
        whole += unique == expected and not again
    return {"apps_exactly_once": whole, "missed": missed, "duplicates": duplicates}


# --- processes --------------------------------------------------------------------------


class Workers:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: dict[str, subprocess.Popen[Any]] = {}
        self.started = 0

    def start(self, role: str) -> subprocess.Popen[Any]:
        self.started += 1
        log = self.logs / f"{role}-{self.started}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "fanout", "worker", "--role", role],
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.running[role] = process
        wait_for_line(log, "worker consuming")
        return process

    def stop(self, role: str) -> None:
        process = self.running.pop(role)
        process.terminate()
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for role in list(self.running):
            self.stop(role)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100, help="apps pushed to at once")
    parser.add_argument("--devices-per-app", type=int, default=1000)
    parser.add_argument(
        "--configured-apps", type=int, default=1000, help="apps the memory phase touches"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FANOUT_NAME=VALUE",
        help="a setting for the workers (repeatable), e.g. FANOUT_WORKER_CONCURRENCY=16",
    )
    parser.add_argument("--serve-emulators", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulators:
        serve_emulators()
        return
    if args.configured_apps < args.apps:
        parser.error("--configured-apps must be at least --apps")

    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanout-bench-apps-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    moto_port = free_port()
    processes: list[subprocess.Popen[Any]] = []
    result: dict[str, Any] = {
        "apps": args.apps,
        "devices_per_app": args.devices_per_app,
        "configured_apps": args.configured_apps,
    }
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=(logs / "moto.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        emulators = Emulators()
        processes.append(emulators.process)
        with database() as database_url:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
                **emulators.settings,
                "FANOUT_DATABASE_URL": database_url,
                "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
                "FANOUT_QUEUE_PREFIX": "bench-apps",
                "FANOUT_SECRET_KEY": generate_key(),
                **dict(item.split("=", 1) for item in args.set),
            }
            settings = queues_ready(env)
            seeded = asyncio.run(
                seed_apps(
                    settings,
                    configured=args.configured_apps,
                    busy=args.apps,
                    devices_per_app=args.devices_per_app,
                )
            )
            ids = seeded["ids"]
            workers = Workers(env, logs)
            workers.start("fanout")

            # 1. Delivery: one app, then as many devices over --apps apps, same workers.
            delivery = workers.start("delivery")
            cpu = cpu_seconds(delivery.pid)
            one = asyncio.run(deliver(settings, [(ids["bench-one"], seeded["one_busy"])]))
            one["cpu_us_per_device"] = round(
                (cpu_seconds(delivery.pid) - cpu) / one["sent"] * 1e6, 1
            )
            cpu = cpu_seconds(delivery.pid)
            many = asyncio.run(deliver(settings, [(ids[k], t) for k, t in seeded["busy"].items()]))
            many["cpu_us_per_device"] = round(
                (cpu_seconds(delivery.pid) - cpu) / many["sent"] * 1e6, 1
            )
            workers.stop("delivery")
            counts = emulators.counts()
            one |= exactly_once(counts, one["events"], args.apps * args.devices_per_app)
            many |= exactly_once(counts, many["events"], args.devices_per_app)
            result["one_app"] = {k: v for k, v in one.items() if k != "events"}
            result["many_apps"] = {k: v for k, v in many.items() if k != "events"}
            rate = "delivery_notifications_per_second"
            result["ratio_delivery_rate"] = round(many[rate] / one[rate], 3) if one[rate] else None

            # 2. Memory: a fresh delivery worker each, the same pushes, one app or each app.
            memory: dict[str, Any] = {}
            for label, targets, per_event in (
                ("one_app", [(ids["bench-one"], seeded["one_small"])], args.configured_apps),
                ("configured_apps", [(ids[k], t) for k, t in seeded["small"].items()], 1),
            ):
                delivery = workers.start("delivery")
                started_kb = rss_kb(delivery.pid)
                done = asyncio.run(deliver(settings, targets))
                memory[label] = {
                    "devices": done["devices"],
                    "sent": done["sent"],
                    "rss_kb_idle": started_kb,
                    "rss_kb": rss_kb(delivery.pid),
                    "peak_rss_kb": peak_rss_kb(delivery.pid),
                    **exactly_once(emulators.counts(), done["events"], per_event),
                }
                workers.stop("delivery")
            result["memory"] = memory
            result["ratio_peak_rss"] = round(
                memory["configured_apps"]["peak_rss_kb"] / memory["one_app"]["peak_rss_kb"], 3
            )
            workers.stop_all()
    finally:
        stop_processes(processes)

    report(result)
    if args.json:
        print(orjson.dumps(result).decode())


def report(result: dict[str, Any]) -> None:
    apps_, per_app = result["apps"], result["devices_per_app"]
    print(
        f"{apps_} apps x {per_app:,} devices, published together, against "
        f"{apps_ * per_app:,} devices in one app (APNs emulator, HTTP/2 + TLS)"
    )
    keys = (
        "devices", "sent", "failed", "delivery_notifications_per_second",
        "seconds_to_last_notification", "cpu_us_per_device", "apps_exactly_once", "missed",
        "duplicates",
    )  # fmt: skip
    print(f"  {'':<36}{'one app':>14}{'many apps':>14}")
    for key in keys:
        print(f"  {key:<36}{result['one_app'][key]:>14}{result['many_apps'][key]:>14}")
    verdict = _verdict(result["ratio_delivery_rate"], RATE_TARGET, at_least=True)
    print(f"  {'ratio delivery rate (many/one)':<36}{result['ratio_delivery_rate']}  {verdict}")
    memory = result["memory"]
    print(
        f"delivery worker memory: an event to each of {result['configured_apps']:,} apps "
        f"against as many devices in one app"
    )
    print(f"  {'':<36}{'one app':>14}{'each app':>14}")
    for key in ("sent", "rss_kb_idle", "rss_kb", "peak_rss_kb", "missed", "duplicates"):
        print(f"  {key:<36}{memory['one_app'][key]:>14}{memory['configured_apps'][key]:>14}")
    verdict = _verdict(result["ratio_peak_rss"], RSS_TARGET, at_least=False)
    print(f"  {'ratio peak RSS (each/one)':<36}{result['ratio_peak_rss']}  {verdict}")


def _verdict(ratio: float | None, target: float, *, at_least: bool) -> str:
    if ratio is None:
        return "(no rate)"
    met = ratio >= target if at_least else ratio <= target
    return f"({'meets' if met else 'misses'} the target {'>=' if at_least else '<='} {target})"


if __name__ == "__main__":
    main()
