"""A steady stream of 1:1 sends through the API to the push emulators (issue #26).

    python bench/direct.py [--sends 100000] [--rate 1000] [--coalesce on|off|both]
                           [--window 0.5] [--json]

Processes as in bench/apps.py: moto's SQS server (its log counts every SQS request), the
APNs emulator (counting each event's pushes per token), `fanout serve`, a fan-out worker and
a delivery worker, on PostgreSQL (FANOUT_DATABASE_URL, else a fresh database on
127.0.0.1:5432, else an embedded one). ``--sends`` users get one APNs device each; this
process sends each of them one 1:1 notification through ``POST
/v1/users/{user_id}/notifications`` at ``--rate`` a second, then waits until every event
has ended. Printed: the rate the API kept, every device exactly once (each event's pushes
at the emulator: one, no duplicate), SQS requests per push (every request moto answered
while the sends went through, over the pushes), and publish → push p50 and p99 (each
event's ``finished_at`` - ``created_at``, PostgreSQL's clock: its last push recorded).

``--coalesce`` runs it with FANOUT_COALESCE_DIRECT on, off, or both back to back (the
default: the SQS requests per push of each, on fresh processes and queues).

Issue #26's measurement: ``--sends 100000 --rate 1000`` (one minute and a half); targets
every device once, SQS requests per push ≤ 0.01 (with coalescing), p50 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from _services import database, free_port, queues_ready, stop_processes
from apps import APNS_ONLY, Emulators, Workers
from pipeline import sqs_requests_so_far, wait_for_line

from fanout.api.keys import create_api_key
from fanout.store import connect, seeding
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.lifecycle import TERMINAL_STATES
from fanout.store.migrate import migrate

CONCURRENCY = 64  # requests in flight at most; the pacing sets the rate


async def seed(database_url: str, sends: int) -> tuple[str, str]:
    """``sends`` users with an APNs device each; their prefix, and a publishing key."""
    conn = await connect(database_url)
    try:
        await migrate(conn)
        prefix = f"d-{secrets.token_hex(3)}-"
        async with conn.transaction():
            users = await seeding.seed_users(
                conn, app_id=DEFAULT_APP_ID, prefix=prefix, count=sends
            )
            await seeding.seed_devices(
                conn,
                first_user_id=users.first_id,
                last_user_id=users.last_id,
                per_user=1,
                token_seed=prefix,
                webpush_endpoint_base="https://push.example.net/wp/",
                web_push_p256dh=APNS_ONLY.p256dh,
                web_push_auth=APNS_ONLY.auth,
                platforms=APNS_ONLY.platforms,
            )
        _, token = await create_api_key(conn, ["publish"], "bench-direct")
        return prefix, token
    finally:
        await conn.close()


async def send_all(
    url: str, token: str, prefix: str, sends: int, rate: float
) -> tuple[list[int], float, int]:
    """Each user one send, paced at ``rate``; the event ids, the seconds it took, errors."""
    ids: list[int] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    headers = {"Authorization": f"Bearer {token}"}
    slots = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as client:

        async def one(i: int) -> None:
            nonlocal errors
            body = {"notification": {"title": "Anna liked your review", "data": {"n": str(i)}}}
            try:
                async with client.post(f"/v1/users/{prefix}{i}/notifications", json=body) as r:
                    answer = await r.read()
                    if r.status == 202:
                        ids.append(orjson.loads(answer)["event_id"])
                    else:
                        errors += 1
            finally:
                slots.release()

        started = time.perf_counter()
        tasks = []
        for i in range(1, sends + 1):
            due = started + (i - 1) / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return ids, time.perf_counter() - started, errors


# Where an event's publish → push goes, by the timestamps its transitions record (each the
# start of the transaction that wrote it): committed → enqueued (the coalescing window and
# the enqueue), enqueued → fanned out (the fan-out message's receive, the group's planning),
# fanned out → ended (the bundle's send, receive and delivery).
STAGES = {
    "committed_to_enqueued": "enqueued_at - created_at",
    "enqueued_to_fanned_out": "fanned_out_at - enqueued_at",
    "fanned_out_to_ended": "finished_at - fanned_out_at",
}


async def wait_until_ended(
    database_url: str, ids: list[int]
) -> tuple[list[float], dict[str, float | None]]:
    """Until every event has ended; each one's publish → last push, in seconds, and the
    median (and ``<stage>_p99``) of each of its ``STAGES``."""
    conn = await connect(database_url)
    stages = ", ".join(f"extract(epoch FROM {span}) AS {name}" for name, span in STAGES.items())
    try:
        while True:
            rows = await conn.fetch(
                f"""SELECT status, extract(epoch FROM finished_at - created_at) AS seconds,
                          {stages}
                   FROM events WHERE id = ANY($1::bigint[])""",
                ids,
            )
            if all(row["status"] in TERMINAL_STATES for row in rows):
                medians: dict[str, float | None] = {}
                for name in STAGES:
                    spans = sorted(float(row[name]) for row in rows if row[name] is not None)
                    medians[name] = round(statistics.median(spans), 3) if spans else None
                    # Where the tail is spent: the stage's own p99.
                    p99 = round(spans[int(len(spans) * 0.99) - 1], 3) if spans else None
                    medians[f"{name}_p99"] = p99
                return sorted(float(row["seconds"]) for row in rows), medians
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fanout", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_line(log, url)
    return server, url


def sqs_by_operation(
    scraped: dict[str, str], since: dict[str, int] | None = None
) -> dict[str, int]:
    """``{"<process> <operation>": requests}`` from each process's ``fanout_sqs_requests``
    counter (minus ``since``), the most first."""
    counts: dict[str, int] = {}
    for where, url in scraped.items():
        text = httpx.get(url, timeout=10).text
        for line in text.splitlines():
            if line.startswith("fanout_sqs_requests_total{"):
                operation = line.split('operation="', 1)[1].split('"', 1)[0]
                key = f"{where} {operation}"
                counts[key] = int(float(line.rsplit(" ", 1)[1])) - (since or {}).get(key, 0)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def run(
    sends: int, rate: float, *, coalesce: bool, window: float, settings: dict[str, str]
) -> dict[str, Any]:
    """One measurement, FANOUT_COALESCE_DIRECT on or off, on fresh processes and queues."""
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanout-bench-direct-{os.getpid()}"
    logs = logs / ("coalesced" if coalesce else "alone")
    logs.mkdir(parents=True, exist_ok=True)
    moto_port, moto_log = free_port(), logs / "moto.log"
    processes: list[subprocess.Popen[Any]] = []
    result: dict[str, Any] = {"sends": sends, "rate_asked": rate, "coalesce": coalesce}
    result["settings"] = settings
    if coalesce:
        result["coalesce_window_seconds"] = window
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=moto_log.open("w"),
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
                "FANOUT_QUEUE_PREFIX": "bench-direct",
                "FANOUT_API_PUBLISH_RATE": "1000000000",
                "FANOUT_API_PUBLISH_BURST": "1000000000",
                "FANOUT_COALESCE_DIRECT": "true" if coalesce else "false",
                "FANOUT_COALESCE_WINDOW_SECONDS": str(window),
                **settings,
            }
            queues_ready(env)
            prefix, token = asyncio.run(seed(database_url, sends))
            # Each process's fanout_sqs_requests_total by operation: where the requests
            # per push come from (the moto log counts them all, not by whom or what).
            metrics = {role: free_port() for role in ("fanout", "delivery")}
            workers = [
                Workers({**env, "FANOUT_METRICS_PORT": str(port)}, logs / role)
                for role, port in metrics.items()
            ]
            for role, role_workers in zip(metrics, workers, strict=True):
                (logs / role).mkdir(exist_ok=True)
                role_workers.start(role)
            server, url = start_api(env, logs / "serve.log")
            processes.append(server)
            scraped = {"api": f"{url}/metrics"} | {
                f"{role} worker": f"http://127.0.0.1:{port}/metrics"
                for role, port in metrics.items()
            }
            by_operation_before = sqs_by_operation(scraped)
            sqs_before = sqs_requests_so_far(moto_log)
            ids, seconds, errors = asyncio.run(send_all(url, token, prefix, sends, rate))
            latencies, stage_p50s = asyncio.run(wait_until_ended(database_url, ids))
            sqs = sqs_requests_so_far(moto_log) - sqs_before
            by_operation = sqs_by_operation(scraped, since=by_operation_before)
            for role_workers in workers:
                role_workers.stop_all()
            counts = emulators.counts()
    finally:
        stop_processes(processes)

    pushed = [counts.get(event_id, (0, 0)) for event_id in ids]
    result |= {
        "accepted": len(ids),
        "errors": errors,
        "sends_per_second": round(len(ids) / seconds, 1),
        "devices_exactly_once": sum(1 for unique, dup in pushed if unique == 1 and dup == 0),
        "lost": sum(1 for unique, _ in pushed if unique == 0),
        "duplicates": sum(dup for _, dup in pushed),
        "sqs_requests": sqs,
        "sqs_requests_per_push": round(sqs / max(1, sum(u for u, _ in pushed)), 4),
        "sqs_requests_by_process_and_operation": by_operation,
        "publish_to_push_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "publish_to_push_p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3)
        if latencies
        else None,
        "stage_p50_s": stage_p50s,
    }
    every = result["devices_exactly_once"] == sends
    print(
        f"FANOUT_COALESCE_DIRECT={'true' if coalesce else 'false'}"
        f"{f' (window {window:g} s)' if coalesce else ''}: "
        f"{result['accepted']:,} of {sends:,} sends accepted at "
        f"{result['sends_per_second']:,.0f}/s (asked {rate:,.0f}/s), {errors} errors\n"
        f"  every device exactly once: {'yes' if every else 'NO'} "
        f"(lost {result['lost']}, duplicates {result['duplicates']})\n"
        f"  SQS requests per push: {result['sqs_requests_per_push']} "
        f"({sqs:,} requests, target <= 0.01)\n"
        + "".join(f"    {where}: {n:,}\n" for where, n in by_operation.items())
        + f"  publish -> push: p50 {result['publish_to_push_p50_s']} s, "
        f"p99 {result['publish_to_push_p99_s']} s\n"
        "    p50 by stage: "
        + ", ".join(f"{name} {p50} s" for name, p50 in stage_p50s.items() if "_p99" not in name)
        + "\n    p99 by stage: "
        + ", ".join(f"{name[:-4]} {p99} s" for name, p99 in stage_p50s.items() if "_p99" in name),
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=100_000, help="users, one send each")
    parser.add_argument("--rate", type=float, default=1000.0, help="sends a second")
    parser.add_argument(
        "--coalesce",
        choices=("on", "off", "both"),
        default="both",
        help="FANOUT_COALESCE_DIRECT for the run (both: off, then on, back to back)",
    )
    parser.add_argument(
        "--window", type=float, default=0.5, help="FANOUT_COALESCE_WINDOW_SECONDS (seconds)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FANOUT_NAME=VALUE",
        help="a setting for every process of the run (repeatable)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.coalesce]
    results = [
        run(args.sends, args.rate, coalesce=mode, window=args.window, settings=settings)
        for mode in modes
    ]
    if args.json:
        print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
