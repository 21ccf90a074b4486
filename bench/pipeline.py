"""The whole pipeline, each part in its own process, measured from the database's clocks.

    python bench/pipeline.py [--subscribers 100000] [--preferences] [--json]
                             [--kind alert|background|liveactivity [--rounds N]]

moto's SQS server, the APNs emulator (HTTP/2 + TLS, verifying every JWT), a fan-out worker
and a delivery worker each run as a separate process; PostgreSQL as in bench/api.py. It
seeds N subscribers with 1.2 APNs devices each, publishes one event and reports the fan-out
stage's devices/second (database to queue), the delivery stage's notifications/second
(queue to the APNs emulator), the time to the last notification, each worker's peak RSS
and the SQS requests made per 1,000 notifications (counted in moto's request log).
With --preferences, 30% of the subscribers are filtered out by the fan-out's audience
rules (BENCH_AUDIENCE: opted out, opted out of the category, muting the topic, at its
frequency cap); the fan-out's devices/second still counts every device of the topic.
With --kind background or liveactivity, a second event of that kind follows the alert in
the same run, on the same data and workers (a Live Activity update to one token per APNs
device of the topic), and both kinds' rates are printed with their ratio: a kind should
cost what an alert costs. With --rounds N, after that first alert (the warm-up), N rounds of
an alert and the kind, fresh events, the order alternating round by round: each round's
rates and CPU per device are printed, then each kind's medians and the ratio of the medians.
With --source, the same subscribers as followers in an app's own table (benchapp.follows,
indexed by author, as an app would have it) behind a source (issue #25): an event on
benchauthor:1 reads them at planning and fans out from them; the ratio of its fan-out
rate to the alert's over fanout's own subscriptions, same run (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from _services import database, free_port, queues_ready, stop_processes

from fanout.config import Settings
from fanout.local.demo import DEMO_CATEGORY, AudienceMix, seed_audience
from fanout.notification import LiveActivity, Notification
from fanout.queue.sqs import open_client, open_queues
from fanout.sources import check_source
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import PublishOptions, publish
from fanout.store import (
    connect,
    create_pool,
    events,
    live_activities,
    seeding,
    sources,
    subscriptions,
)
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.lifecycle import TERMINAL_STATES
from fanout.store.migrate import migrate
from fanout.store.subscriptions import find_or_create
from fanout.tags import compile_filter

# 30% filtered out by the rules the fan-out applies today. No quiet hours: that rule
# belongs to the publish options (it may defer rather than drop).
BENCH_AUDIENCE = AudienceMix(opted_out=10, quiet_now=0, muted=10, capped=5, category_opt_out=5)
assert BENCH_AUDIENCE.held_back == 30


async def seed(
    database_url: str, subscribers: int, webpush_base: str, audience: AudienceMix | None
) -> tuple[str, int]:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        run = os.urandom(3).hex()
        topic = f"bench:{run}"
        async with conn.transaction():
            topic_id = await find_or_create(conn, subscriptions.UPSERT_TOPIC, topic, 1)
            users = await conn.fetchrow(seeding.SEED_USERS, f"bench-{run}-", subscribers, 1)
            first, last = users["first_id"], users["last_id"]
            await conn.execute(seeding.SEED_SUBSCRIPTIONS, topic_id, first, last)
            args = (run, webpush_base, None, None, ["apns"])
            one = await conn.fetchrow(seeding.SEED_DEVICES, first, last, 1, *args)
            # A second device for every fifth user: 1.2 devices a subscriber on average.
            extra = await conn.fetchrow(
                seeding.SEED_DEVICES, first, first + subscribers // 5 - 1, 1, run + "b", *args[1:]
            )
        if audience is not None:
            await seed_audience(
                conn, topic=topic, first_user_id=first, last_user_id=last, mix=audience
            )
        await conn.execute("ANALYZE")
        return topic, one["devices"] + extra["devices"]
    finally:
        await conn.close()


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sqs_requests_so_far(moto_log: Path) -> int:
    """moto's server logs one line per request it answers."""
    return moto_log.read_text().count('"POST /')


KINDS = ("alert", "background", "liveactivity")


async def seed_activity(database_url: str, topic: str) -> str:
    """The benchmark's Live Activity: a token for each APNs device of the topic."""
    conn = await connect(database_url)
    try:
        activity = f"{topic}:live"
        async with conn.transaction():
            activity_id = await live_activities.find_or_create_activity(
                conn, app_id=DEFAULT_APP_ID, activity_key=activity
            )
            topic_id = await find_or_create(conn, subscriptions.UPSERT_TOPIC, topic, DEFAULT_APP_ID)
            await seeding.seed_live_activity_tokens(
                conn, activity_id=activity_id, topic_id=topic_id
            )
        await conn.execute("ANALYZE")
        return activity
    finally:
        await conn.close()


# --filter: 30% of the subscribers tagged premium, the rest free; the filtered event goes to
# the premium ones (one jsonb containment per subscriber in the page query).
FILTER = {"tags": {"plan": "premium"}}


async def tag_subscribers(database_url: str, topic: str) -> None:
    """Tag the topic's subscribers: 30% premium (user id mod 10 below 3), the rest free."""
    conn = await connect(database_url)
    try:
        await conn.execute(
            """UPDATE users AS u
               SET tags = jsonb_build_object(
                   'plan', CASE WHEN u.id % 10 < 3 THEN 'premium' ELSE 'free' END)
               FROM subscriptions AS s JOIN topics AS t ON t.id = s.topic_id
               WHERE t.key = $1 AND s.user_id = u.id""",
            topic,
        )
        # VACUUM, not only ANALYZE: rewriting every user's tags at once leaves a dead version
        # of each row (the GIN index on tags rules out HOT updates), which an app's tags,
        # written over time under autovacuum, do not have; read before autovacuum came by,
        # every read of a user visited both versions (5.4 buffers a users_pkey probe, not 3).
        await conn.execute("VACUUM (ANALYZE) users")
    finally:
        await conn.close()


# --source: the topic's subscribers as an app's own follow table, and the source over it.
SOURCE_PREFIX = "benchauthor:"
SOURCE_QUERY = "SELECT follower_id AS user_id FROM benchapp.follows WHERE author_id = :key::bigint"


async def follow_table(database_url: str, topic: str) -> None:
    """benchapp.follows: author 1 followed by every subscriber of the topic (by their
    external id, as the app knows them), indexed as an app would; then the source."""
    conn = await connect(database_url)
    try:
        await conn.execute(
            """CREATE SCHEMA IF NOT EXISTS benchapp;
               CREATE TABLE IF NOT EXISTS benchapp.follows (
                   author_id bigint NOT NULL, follower_id text NOT NULL);
               CREATE INDEX IF NOT EXISTS follows_by_author ON benchapp.follows (author_id);
               GRANT USAGE ON SCHEMA benchapp TO fanout_source;
               GRANT SELECT ON benchapp.follows TO fanout_source;"""
        )
        await conn.execute(
            """INSERT INTO benchapp.follows (author_id, follower_id)
               SELECT 1, u.external_id
               FROM subscriptions AS s JOIN topics AS t ON t.id = s.topic_id
               JOIN users AS u ON u.id = s.user_id
               WHERE t.key = $1""",
            topic,
        )
        await conn.execute("ANALYZE benchapp.follows")
        bound = await check_source(
            conn,
            query=SOURCE_QUERY,
            user_column="user_id",
            sample_key="1",
            time_limit=30,
            role="fanout_source",
        )
        await sources.put_source(
            conn, app_id=DEFAULT_APP_ID, prefix=SOURCE_PREFIX, query=bound, user_column="user_id"
        )
    finally:
        await conn.close()


async def publish_kind(
    pool: Any,
    queues: Any,
    kind: str,
    topic: str,
    category: str | None,
    tag_filter: dict[str, Any] | None = None,
) -> int:
    """Publish one event of ``kind``: to the topic, or (liveactivity) to its activity."""
    if kind == "liveactivity":
        live = LiveActivity(event="update", content_state={"chapter": 12})
        note = Notification(kind="liveactivity", priority="normal", live_activity=live)
        done = await publish_update(pool, queues, note, activity_key=f"{topic}:live")
        return done.published.event_id
    if kind == "background":
        note = Notification(kind="background", data={"book": "1001"}, category=category)
    else:
        note = Notification(title="New book", category=category)
    options = PublishOptions(tag_filter=compile_filter(tag_filter))
    return (await publish(pool, queues, note, topic=topic, options=options)).event_id


async def run(
    settings: Settings,
    topic: str,
    devices: int,
    moto_log: Path,
    category: str | None,
    kind: str = "alert",
    tag_filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pool = await create_pool(settings)
    try:
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            requests_before = await asyncio.to_thread(sqs_requests_so_far, moto_log)
            event_id = await publish_kind(pool, queues, kind, topic, category, tag_filter)
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(events.EVENT_PROGRESS, event_id)
                done = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
                # row["devices"]: those fanned out (the topic's, less any filtered out).
                if row["status"] in TERMINAL_STATES and done >= row["devices"]:
                    break
                await asyncio.sleep(0.25)
            async with pool.acquire() as conn:
                first_batch = await conn.fetchval(
                    "SELECT min(started_at) FROM delivery_batches WHERE event_id = $1",
                    event_id,
                )
                handled = await conn.fetchrow(
                    "SELECT count(*) AS batches,"
                    " sum(extract(epoch FROM finished_at - started_at)) AS seconds"
                    " FROM delivery_batches WHERE event_id = $1",
                    event_id,
                )
                shards = await conn.fetchval(
                    "SELECT count(*) FROM fanout_shards WHERE event_id = $1", event_id
                )
            requests = await asyncio.to_thread(sqs_requests_so_far, moto_log) - requests_before
    finally:
        await pool.close()
    fanout = (row["fanned_out_at"] - row["created_at"]).total_seconds()
    delivery = (row["last_finished_at"] - first_batch).total_seconds()
    total = (row["last_finished_at"] - row["created_at"]).total_seconds()
    # What a Lambda deployment would be billed for: an invocation per fan-out shard (each
    # counted as long as the whole fan-out, an upper bound) and per delivery batch.
    lambda_seconds = float(handled["seconds"]) + shards * fanout
    return {
        "devices": devices,
        "lambda": {"invocations": shards + handled["batches"], "seconds": round(lambda_seconds, 2)},
        "sent": row["sent"],
        "failed": row["failed"],
        "held_back": row["held_back"],
        "fanout_devices_per_second": round(devices / fanout),
        # Per device fanned out (sent to): what a filtered event is compared by.
        "fanout_sent_devices_per_second": round(int(row["devices"]) / fanout),
        "delivery_notifications_per_second": round(row["sent"] / delivery) if delivery else 0,
        "seconds_to_last_notification": round(total, 2),
        "sqs_requests": requests,
        "sqs_requests_per_1000": round(requests * 1000 / devices, 2),
    }


def measured(
    workers: dict[str, subprocess.Popen[Any]],
    settings: Settings,
    topic: str,
    devices: int,
    moto_log: Path,
    category: str | None,
    kind: str,
) -> dict[str, Any]:
    """One event of ``kind`` through the running workers, and each worker's CPU per device
    (what bounds a worker process, and steadier than a rate when the push service's
    emulator shares the machine's cores with it)."""
    cpu_before = {role: cpu_seconds(p.pid) for role, p in workers.items()}
    result = asyncio.run(run(settings, topic, devices, moto_log, category, kind=kind))
    result["cpu_us_per_device"] = {
        role: round((cpu_seconds(p.pid) - cpu_before[role]) / devices * 1e6, 1)
        for role, p in workers.items()
    }
    return result


# What --rounds compares, round by round: a rate, or a worker's CPU per device.
ROUND_FIGURES = (
    "fanout_devices_per_second",
    "delivery_notifications_per_second",
    "cpu_us_per_device.fanout",
    "cpu_us_per_device.delivery",
)


def round_figures(found: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(found["cpu_us_per_device"][key.split(".", 1)[1]] if "." in key else found[key])
        for key in ROUND_FIGURES
    }


def kind_rounds(rounds: int, kind: str, measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """``rounds`` rounds of an alert and an event of ``kind``, each a fresh event on the same
    workers and data, the order alternating (alert first in odd rounds, the kind first in
    even ones) so that neither is always the warmer or the later; each figure's median per
    kind and the ratio of the medians (the kind's over the alert's)."""
    per_round: list[dict[str, dict[str, float]]] = []
    for number in range(1, rounds + 1):
        order = ("alert", kind) if number % 2 else (kind, "alert")
        found = {k: round_figures(measure(k)) for k in order}
        per_round.append(found)
        print(
            f"  round {number}: "
            + "; ".join(
                f"{k} " + " ".join(f"{key} {value:g}" for key, value in found[k].items())
                for k in order
            ),
            flush=True,
        )
    medians = {
        k: {key: statistics.median(r[k][key] for r in per_round) for key in ROUND_FIGURES}
        for k in ("alert", kind)
    }
    return {
        "per_round": per_round,
        "medians": medians,
        # Above 1 for a rate: the kind is faster; above 1 for CPU: the kind costs more.
        "ratio_of_medians": {
            key: round(medians[kind][key] / medians["alert"][key], 3)
            if medians["alert"][key]
            else None
            for key in ROUND_FIGURES
        },
    }


def run_baseline(
    env: dict[str, str],
    settings: Settings,
    topic: str,
    subscribers: int,
    moto_log: Path,
    logs: Path,
) -> dict[str, Any]:
    """bench/baseline.py on the same data: one delivery process, then the fan-out."""
    here = Path(__file__).parent

    async def prepare() -> tuple[int, int]:
        from baseline import SETUP

        conn = await connect(settings.database_dsn())
        try:
            await conn.execute(SETUP)
            topic_id = await find_or_create(conn, subscriptions.UPSERT_TOPIC, topic, 1)
            return topic_id, await conn.fetchval(
                "SELECT coalesce(max(event_id), 0) + 1 FROM baseline_sent"
            )
        finally:
            await conn.close()

    topic_id, event_id = asyncio.run(prepare())
    delivery = subprocess.Popen(
        [sys.executable, str(here / "baseline.py"), "delivery"],
        env=env,
        stdout=(logs / "baseline-delivery.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_line(logs / "baseline-delivery.log", "baseline delivery consuming")
        requests_before = sqs_requests_so_far(moto_log)
        started = time.time()
        fanout = subprocess.run(
            [sys.executable, str(here / "baseline.py"), "fanout", str(topic_id), str(event_id)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )

        async def wait_done() -> float:
            conn = await connect(settings.database_dsn())
            try:
                while True:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM baseline_sent WHERE event_id = $1", event_id
                    )
                    if done >= subscribers:
                        last = await conn.fetchval(
                            "SELECT extract(epoch FROM max(finished_at)) FROM baseline_sent"
                            " WHERE event_id = $1",
                            event_id,
                        )
                        return float(last)
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()

        last = asyncio.run(wait_done())
        requests = sqs_requests_so_far(moto_log) - requests_before
        rss = peak_rss_kb(delivery.pid)
    finally:
        delivery.terminate()
        delivery.wait(timeout=30)
    usages = [
        orjson.loads(line.split(" ", 2)[2])
        for line in [*fanout.stdout.splitlines(), *(logs / "baseline-delivery.log").open()]
        if line.startswith("baseline usage ")
    ]
    return {
        "seconds_to_last_notification": round(last - started, 2),
        "sqs_requests": requests,
        "sqs_usage": merge_usage(u["sqs"] for u in usages),
        "lambda": {
            "invocations": sum(u["invocations"] for u in usages),
            "seconds": round(sum(u["handler_seconds"] for u in usages), 2),
        },
        "peak_rss_kb_delivery": rss,
    }


# What --kind compares between the alert and the other kind.
RATES = ("fanout_devices_per_second", "delivery_notifications_per_second", "sent")


def merge_usage(usages: Iterable[dict[str, list[int]]]) -> dict[str, list[int]]:
    """SQS calls of several processes: operation -> [requests, billed requests]."""
    merged: dict[str, list[int]] = {}
    for usage in usages:
        for operation, (requests, billed) in usage.items():
            total = merged.setdefault(operation, [0, 0])
            total[0] += requests
            total[1] += billed
    return merged


def wait_for_line(log: Path, text: str, timeout: float = 120) -> None:
    """Until a process's log says ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.05)
    raise SystemExit(f"{log.name} did not say {text!r} within {timeout:g}s")


def worker_usage(log: Path) -> dict[str, list[int]]:
    """The ``sqs usage {...}`` line a worker logs as it stops."""
    for line in log.read_text().splitlines():
        if " sqs usage " in line:
            return dict(orjson.loads(line.split(" sqs usage ", 1)[1]))
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--open-tokens",
        action="store_true",
        help="Opens on (FANOUT_OPEN_TOKEN_KEY): every push carries its fo_open token.",
    )
    parser.add_argument(
        "--preferences",
        action="store_true",
        help="Filter 30%% of the subscribers out by their audience settings.",
    )
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="Only fanout; no ratios (the baseline is slow).",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="alert",
        help="After the alert, an event of this kind on the same data, and the ratio.",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="With --kind: N rounds of an alert and the kind, alternating which goes first, "
        "each round printed, then the medians and their ratio.",
    )
    parser.add_argument(
        "--filter",
        action="store_true",
        help="After the alert, one with a tag filter matching 30%% of the subscribers, and "
        "the ratio of the devices fanned out per second (target >= 0.7).",
    )
    parser.add_argument(
        "--source",
        action="store_true",
        help="After the alert, one on a topic whose subscribers (the same) are read from an "
        "app's own table, and the ratio of the fan-out rates (target >= 0.7).",
    )
    args = parser.parse_args()
    if args.rounds and args.kind == "alert":
        parser.error("--rounds compares a --kind other than alert with the alert")

    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanout-bench-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    moto_port = free_port()
    moto_log = logs / "moto.log"
    processes: list[subprocess.Popen[Any]] = []
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=moto_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        emulators = subprocess.Popen(
            [sys.executable, "-m", "fanout", "emulators"], stdout=subprocess.PIPE, text=True
        )
        processes.append(emulators)
        assert emulators.stdout is not None
        info = orjson.loads(emulators.stdout.readline())
        with database() as database_url:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
                **info["settings"],
                "FANOUT_DATABASE_URL": database_url,
                "FANOUT_SQS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
                "FANOUT_QUEUE_PREFIX": "bench",
                # Opens on: every push carries its fo_open token (the cost on the hot path).
                **(
                    {"FANOUT_OPEN_TOKEN_KEY": "bench-open-token-key-" + "k" * 24}
                    if args.open_tokens
                    else {}
                ),
            }
            settings = queues_ready(env)
            topic, devices = asyncio.run(
                seed(
                    database_url,
                    args.subscribers,
                    info["webpush_endpoint_base"],
                    BENCH_AUDIENCE if args.preferences else None,
                )
            )
            if args.kind == "liveactivity":
                asyncio.run(seed_activity(database_url, topic))
            workers = {
                role: subprocess.Popen(
                    [sys.executable, "-m", "fanout", "worker", "--role", role],
                    env=env,
                    stdout=(logs / f"{role}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
                for role in ("fanout", "delivery")
            }
            processes.extend(workers.values())
            # Publish only once both workers consume: on a fresh install their first start
            # (compiling every module) takes seconds, which is not the stages' speed.
            for role in workers:
                wait_for_line(logs / f"{role}.log", "worker consuming")
            category = DEMO_CATEGORY if args.preferences else None
            result = measured(workers, settings, topic, devices, moto_log, category, "alert")
            if args.kind != "alert" and args.rounds:
                result["rounds"] = kind_rounds(
                    args.rounds,
                    args.kind,
                    lambda kind: measured(
                        workers, settings, topic, devices, moto_log, category, kind
                    ),
                )
            elif args.kind != "alert":  # the same workers, warm, on the same data
                other = measured(workers, settings, topic, devices, moto_log, category, args.kind)
                result["kinds"] = {
                    kind: {key: found[key] for key in (*RATES, "cpu_us_per_device")}
                    for kind, found in (("alert", result), (args.kind, other))
                }
                result["kind_ratio"] = {
                    key: round(other[key] / result[key], 3) if result[key] else None
                    for key in RATES
                } | {  # the alert's CPU over the kind's: above 1, the kind costs less
                    f"cpu_us_per_device.{role}": round(
                        result["cpu_us_per_device"][role] / other["cpu_us_per_device"][role], 3
                    )
                    for role in workers
                }
            if args.filter:  # the same workers, warm, on the same data, 30% matching
                asyncio.run(tag_subscribers(database_url, topic))
                filtered = asyncio.run(
                    run(settings, topic, devices, moto_log, category, tag_filter=FILTER)
                )
                result["filter"] = {
                    key: filtered[key]
                    for key in ("fanout_sent_devices_per_second", "sent", "held_back")
                }
                unfiltered = result["fanout_sent_devices_per_second"]
                result["filter_ratio"] = round(
                    filtered["fanout_sent_devices_per_second"] / unfiltered, 3
                )
            if args.source:  # the same workers, warm, the same users read from the app's table
                asyncio.run(follow_table(database_url, topic))
                sourced = asyncio.run(
                    run(settings, f"{SOURCE_PREFIX}1", devices, moto_log, category)
                )
                result["source"] = {
                    key: sourced[key] for key in ("fanout_devices_per_second", "sent", "held_back")
                }
                result["source_ratio"] = round(
                    sourced["fanout_devices_per_second"] / result["fanout_devices_per_second"], 3
                )
            result["peak_rss_kb"] = {role: peak_rss_kb(p.pid) for role, p in workers.items()}
            for process in workers.values():  # the baseline gets the machine to itself
                process.terminate()
                process.wait(timeout=30)
            result["sqs_usage"] = merge_usage(worker_usage(logs / f"{r}.log") for r in workers)
            if not args.skip_baseline:
                baseline = run_baseline(env, settings, topic, args.subscribers, moto_log, logs)
                result["baseline"] = baseline
                result["ratio_end_to_end"] = round(
                    baseline["seconds_to_last_notification"]
                    / result["seconds_to_last_notification"],
                    1,
                )
                result["ratio_sqs_requests"] = round(
                    baseline["sqs_requests"] / result["sqs_requests"], 1
                )
    finally:
        stop_processes(processes)

    where = "APNs emulator, HTTP/2 + TLS"
    print(f"subscribers {args.subscribers:,}, devices {result['devices']:,} ({where})")
    for key in (
        "fanout_devices_per_second",
        "delivery_notifications_per_second",
        "seconds_to_last_notification",
        "sqs_requests",
        "sqs_requests_per_1000",
        "peak_rss_kb",
        "cpu_us_per_device",
        "sent",
        "failed",
        "held_back",
    ):
        print(f"  {key:<36}{result[key]}")
    if "kinds" in result:
        for kind, rates in result["kinds"].items():
            print(f"  {kind:<14}" + "  ".join(f"{key} {value}" for key, value in rates.items()))
        print(f"  {args.kind + '/alert':<14}{result['kind_ratio']}")
    if "rounds" in result:
        for kind, medians in result["rounds"]["medians"].items():
            print(f"  median {kind:<14}" + "  ".join(f"{k} {v:g}" for k, v in medians.items()))
        print(f"  {args.kind + '/alert':<21}{result['rounds']['ratio_of_medians']}")
    if "filter" in result:
        print(f"  filtered (30% matching)  {result['filter']}")
        print(f"  filtered/unfiltered devices fanned out per second  {result['filter_ratio']}")
    if "source" in result:
        print(f"  from a source (the app's table)  {result['source']}")
        print(f"  sourced/subscriptions devices fanned out per second  {result['source_ratio']}")
    if "baseline" in result:
        baseline = result["baseline"]
        print("baseline (one SQS message per subscriber, devices looked up per message):")
        print(f"  {'seconds_to_last_notification':<40}{baseline['seconds_to_last_notification']}")
        print(f"  {'sqs_requests':<40}{baseline['sqs_requests']}")
        print(f"  {'ratio end to end (baseline/fanout)':<40}{result['ratio_end_to_end']}x")
        print(f"  {'ratio SQS requests (baseline/fanout)':<40}{result['ratio_sqs_requests']}x")
    if args.json:
        print(orjson.dumps({"subscribers": args.subscribers, **result}).decode())


if __name__ == "__main__":
    main()
