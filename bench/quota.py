"""Does a provider quota shared by several workers hold, without a retry storm?

    python bench/quota.py [--rate 1000] [--seconds 60] [--workers 4] [--redis [URL]]
                          [--per-process] [--json]

An FCM emulator answers 429 (QUOTA_EXCEEDED, Retry-After: 1) to sends above ``--rate`` a
second, by a bucket of its own (not fanout's code). ``--workers`` delivery worker
processes (and one fan-out worker) deliver one event to ``rate x seconds`` FCM devices,
each told FANOUT_FCM_QUOTA_PER_MINUTE = rate x 60, so they share one budget through
PostgreSQL (or Redis with ``--redis``: FANOUT_REDIS_URL, default redis://127.0.0.1:6379).
Per-process limits alone would send ``workers`` times the quota.

Prints, from the emulator's own per-second counts over the steady seconds (the first and
last second of sending left out): sends accepted a second against the quota, the 429s, and
the 429s as a share of all requests. The promise: within 5% of the quota, 429s under 1%.
The default size takes ~1-2 minutes; ``--rate 200 --seconds 10`` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _services import database

from fanout.config import Settings
from fanout.local.demo import DeviceShape, seed
from fanout.local.emulators.fcm import RequestRate
from fanout.local.emulators.stack import local_push_services
from fanout.local.services import local_sqs_server
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client, open_queues
from fanout.stages.progress import load_event_status
from fanout.stages.publish import publish
from fanout.store import connect, create_pool
from fanout.store.lifecycle import TERMINAL_STATES
from fanout.store.migrate import migrate

# Small batches, so the event's work spreads over every delivery worker at once.
BATCH_BYTES = 64 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000, help="the quota, sends/s")
    parser.add_argument("--seconds", type=float, default=60, help="how long at the quota")
    parser.add_argument("--workers", type=int, default=4, help="delivery worker processes")
    parser.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/0", default=None)
    parser.add_argument(
        "--per-process",
        action="store_true",
        help="the old way, for contrast: no shared budget, each worker held to the quota "
        "by FANOUT_PROVIDER_RATE_LIMIT",
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with database() as dsn, local_sqs_server() as sqs:
        result = asyncio.run(run(args, dsn, sqs))
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print_table(result)


async def run(args: argparse.Namespace, dsn: str, sqs: str) -> dict[str, Any]:
    devices = int(args.rate * args.seconds)
    settings = Settings(
        database_url=SecretStr(dsn),
        sqs_endpoint_url=sqs,
        queue_prefix=f"quota{secrets.token_hex(3)}",
        batch_max_bytes=BATCH_BYTES,
    )
    conn = await connect(dsn)
    try:
        await migrate(conn)
        seeded = await seed(conn, devices, 1, DeviceShape(platforms=("fcm",)))
    finally:
        await conn.close()
    async with open_client(settings) as client:
        await create_queues(client, settings)
    async with local_push_services(server="granian") as services:
        meter = services.fcm.limit_rate(args.rate)
        logs = Path(tempfile.mkdtemp(prefix="fanout-quota-"))
        env = _worker_env(settings, services.settings, args)
        workers = [WorkerProcess("fanout", env, logs / "fanout.log")] + [
            WorkerProcess("delivery", env, logs / f"delivery-{i}.log") for i in range(args.workers)
        ]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                await asyncio.to_thread(worker.wait_until_consuming)
            started = time.monotonic()
            status = await _deliver(settings, seeded.topic, args.timeout)
            elapsed = time.monotonic() - started
        finally:
            await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
    return {
        "quota_per_second": args.rate,
        "workers": args.workers,
        "shared_state": "nothing (per process)"
        if args.per_process
        else "redis"
        if args.redis
        else "postgresql",
        "devices": devices,
        "sent": status["sent"],
        "failed": status["failed"],
        "event_status": status["status"],
        "seconds": round(elapsed, 1),
        **steady(meter),
        "logs": str(logs),
    }


def _worker_env(
    settings: Settings, push: dict[str, Any], args: argparse.Namespace
) -> dict[str, str]:
    fanout = {
        "FANOUT_DATABASE_URL": settings.database_dsn(),
        "FANOUT_SQS_ENDPOINT_URL": settings.sqs_endpoint_url or "",
        "FANOUT_QUEUE_PREFIX": settings.queue_prefix,
        "FANOUT_BATCH_MAX_BYTES": str(BATCH_BYTES),
        "FANOUT_POLL_WAIT_SECONDS": "1",
        "FANOUT_FCM_QUOTA_PER_MINUTE": str(int(args.rate * 60)),
        "FANOUT_PROVIDER": "push",
        "FANOUT_FCM_CREDENTIALS": push["fcm_credentials"].get_secret_value(),
        "FANOUT_FCM_ENDPOINT": push["fcm_endpoint"],
        "FANOUT_TLS_CA_FILE": push["tls_ca_file"],
    }
    if args.redis:
        fanout["FANOUT_REDIS_URL"] = args.redis
    if args.per_process:
        fanout["FANOUT_FCM_QUOTA_PER_MINUTE"] = "0"
        fanout["FANOUT_PROVIDER_RATE_LIMIT"] = str(args.rate)
    return worker_environment(fanout)


async def _deliver(settings: Settings, topic: str, give_up_after: float) -> dict[str, Any]:
    """Publish one event to the topic and wait until it ends."""
    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        async with open_client(settings) as client:
            queues = await open_queues(client, settings)
            event = await publish(pool, queues, Notification(title="Quota"), topic=topic)
        deadline = time.monotonic() + give_up_after
        while True:
            async with pool.acquire() as conn:
                status = await load_event_status(conn, event.event_id)
            assert status is not None
            if status.status in TERMINAL_STATES or time.monotonic() > deadline:
                return dict(status.model_dump(mode="json"))
            await asyncio.sleep(0.5)
    finally:
        await pool.close()


def steady(meter: RequestRate) -> dict[str, Any]:
    """The emulator's counts over the whole seconds of sending, first and last left out
    (partial seconds: the start-up and the tail of the last batches)."""
    seconds = sorted(set(meter.accepted) | set(meter.refused))
    window = seconds[1:-1] or seconds
    accepted = sum(meter.accepted[s] for s in window)
    refused = sum(meter.refused[s] for s in window)
    total_refused = sum(meter.refused.values())
    total = sum(meter.accepted.values()) + total_refused
    return {
        "steady_seconds": len(window),
        "sent_per_second": round(accepted / max(1, len(window)), 1),
        "vs_quota": round(accepted / max(1, len(window)) / meter.rate - 1, 4),
        "steady_429s": refused,
        "429s": total_refused,
        "429_share": round(total_refused / max(1, total), 5),
    }


HEADINGS = ("quota/s", "sent/s", "vs quota", "429s", "% of requests")


def print_table(r: dict[str, Any]) -> None:
    held = abs(r["vs_quota"]) <= 0.05
    calm = r["429_share"] < 0.01
    print(
        f"{r['workers']} delivery workers, one FCM quota of {r['quota_per_second']:,.0f}/s "
        f"shared through {r['shared_state']}; {r['devices']:,} devices, event "
        f"{r['event_status']} in {r['seconds']} s (sent {r['sent']:,}, failed {r['failed']:,})"
    )
    cells = (
        f"{r['quota_per_second']:,.0f}",
        f"{r['sent_per_second']:,.1f}",
        f"{r['vs_quota']:+.1%}",
        f"{r['429s']:,}",
        f"{r['429_share']:.2%}",
    )
    widths = [max(8, len(h)) for h in HEADINGS]
    print("| " + " | ".join(h.rjust(w) for h, w in zip(HEADINGS, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    print("| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    print(
        f"held within 5%: {'yes' if held else 'NO'}; 429s under 1%: {'yes' if calm else 'NO'} "
        f"(over {r['steady_seconds']} steady seconds; worker logs in {r['logs']})"
    )
    if not (held and calm):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
