"""A paced event (throttle_per_minute) counted at the sink, window by window, with a
delivery worker SIGKILLed in the middle.

    python bench/pacing.py [--devices 100000] [--throttle 20000] [--window-seconds 60]
                           [--json]

moto's SQS server, the sink (`fanout sink`), a fan-out worker and two delivery workers each
run as a separate process; PostgreSQL as in bench/api.py. It seeds N subscribers with one
device each, publishes one event at the throttle, SIGKILLs one delivery worker half way
through the expected duration (it is not restarted) and reads the sink's count of unique
devices every second. It prints the devices the sink received in each window (a minute by
default), each window's deviation from the throttle (the last window, partly empty, is
shown but not judged), and the lost and duplicate devices. The issue's run: 100,000
devices at 20,000 a minute, five minutes, every full minute within 5% of 20,000, lost 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from _services import database, free_port, queues_ready

from fanout.local.demo import DeviceShape, seed
from fanout.local.sqs_server import MotoServer
from fanout.local.workers import WorkerProcess, worker_environment
from fanout.notification import Notification
from fanout.queue.sqs import open_client, open_queues
from fanout.stages.publish import PublishOptions, publish
from fanout.store import connect, create_pool
from fanout.store.migrate import migrate

DELIVERY_WORKERS = 2


def start_sink(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fanout", "sink", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200:
                return process
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the sink did not answer within 30s")


def windows(samples: list[tuple[float, int]], width: float) -> list[int]:
    """Devices received in each ``width``-second window, from (seconds, unique so far)
    samples taken about every second. What a sample adds arrived since the sample before
    it, so it counts in the window of that earlier sample, and the first window starts at
    the sample before the first device (not at the first sample that saw some)."""
    counts: list[int] = []
    start = None
    for (before_t, before_n), (_, n) in itertools.pairwise(samples):
        if n <= before_n:
            continue
        if start is None:
            start = before_t
        index = int((before_t - start) // width)
        while len(counts) <= index:
            counts.append(0)
        counts[index] += n - before_n
    return counts


async def run(args: argparse.Namespace, database_url: str, logs: Path) -> dict[str, Any]:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        seeded = await seed(conn, args.devices, 1, DeviceShape(platforms=("apns",)))
    finally:
        await conn.close()
    moto = MotoServer(log_file=logs / "moto.log")
    moto.start()
    sink_port = free_port()
    try:
        sink = start_sink(sink_port, logs / "sink.log")
    except BaseException:
        moto.stop()
        raise
    try:
        return await _measure(args, seeded.topic, moto, sink_port, logs)
    finally:
        sink.terminate()
        moto.stop()


async def _measure(
    args: argparse.Namespace, topic: str, moto: MotoServer, sink_port: int, logs: Path
) -> dict[str, Any]:
    database_url = args.database_url
    env = {
        "FANOUT_DATABASE_URL": database_url,
        "FANOUT_SQS_ENDPOINT_URL": moto.url,
        "FANOUT_QUEUE_PREFIX": f"pacing-{secrets.token_hex(3)}",
        "FANOUT_PROVIDER": "sink",
        "FANOUT_SINK_URL": f"http://127.0.0.1:{sink_port}",
        "FANOUT_RECONCILE_AFTER_SECONDS": "10",
        "FANOUT_POLL_WAIT_SECONDS": "2",
    }
    settings = await asyncio.to_thread(queues_ready, env)  # it runs a loop of its own
    roles = ["fanout"] + ["delivery"] * DELIVERY_WORKERS
    workers = [
        WorkerProcess(role, worker_environment(env), logs / f"{role}-{i}.log")
        for i, role in enumerate(roles)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await asyncio.to_thread(worker.wait_until_consuming)
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            async with open_client(settings) as client:
                queues = await open_queues(client, settings)
                published = await publish(
                    pool,
                    queues,
                    Notification(title="Paced"),
                    topic=topic,
                    options=PublishOptions(throttle_per_minute=args.throttle),
                )
        finally:
            await pool.close()
        expected = args.devices / args.throttle * 60
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        killed_at = None
        stats: dict[str, Any] = {}
        async with httpx.AsyncClient() as http:
            while time.monotonic() - started < expected * 1.5 + 120:
                stats = (await http.get(f"http://127.0.0.1:{sink_port}/stats")).json()
                elapsed = time.monotonic() - started
                samples.append((elapsed, stats["unique"]))
                if killed_at is None and elapsed >= expected / 2:
                    workers[1].kill()  # the first delivery worker, not restarted
                    killed_at = elapsed
                if stats["unique"] >= args.devices:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(2.0)  # a late duplicate still counts
            stats = (await http.get(f"http://127.0.0.1:{sink_port}/stats")).json()
    finally:
        for worker in workers:
            worker.stop()
    per_window = windows(samples, args.window_seconds)
    target = args.throttle * args.window_seconds / 60
    judged = per_window[:-1] if len(per_window) > 1 else per_window
    return {
        "event_id": published.event_id,
        "devices": args.devices,
        "throttle_per_minute": args.throttle,
        "window_seconds": args.window_seconds,
        "per_window": per_window,
        "target_per_window": target,
        "deviation_pct": [round((n - target) / target * 100, 1) for n in per_window],
        "worst_full_window_pct": max((abs(n - target) / target * 100 for n in judged), default=0),
        "killed_at_seconds": None if killed_at is None else round(killed_at, 1),
        "delivered": stats.get("unique", 0),
        "duplicates": stats.get("duplicates", 0),
        "lost": args.devices - stats.get("unique", 0),
        "seconds": round(samples[-1][0], 1) if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--throttle", type=int, default=20_000, help="devices a minute")
    parser.add_argument(
        "--window-seconds", type=float, default=60, help="the counting window (a minute)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fanout-pacing-"))
    with database() as url:
        args.database_url = url
        result = asyncio.run(run(args, url, logs))
    if args.json:
        print(orjson.dumps(result).decode())
        return
    print(
        f"{result['devices']:,} devices at {result['throttle_per_minute']:,}/min, "
        f"{DELIVERY_WORKERS} delivery workers, one SIGKILLed at {result['killed_at_seconds']}s"
    )
    for i, (n, pct) in enumerate(zip(result["per_window"], result["deviation_pct"], strict=True)):
        print(f"  window {i + 1} ({result['window_seconds']:g}s): {n:>8,}  {pct:+.1f}%")
    print(
        f"worst full window {result['worst_full_window_pct']:.1f}% off "
        f"{result['target_per_window']:,.0f} (target within 5%); delivered "
        f"{result['delivered']:,}, duplicates {result['duplicates']}, lost {result['lost']}; "
        f"logs in {logs}"
    )


if __name__ == "__main__":
    main()
