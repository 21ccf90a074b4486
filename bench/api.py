"""Load on the HTTP API: registration, subscribe, both publish routes and the batch endpoint.

    python bench/api.py [--requests 5000] [--concurrency 32] [--batch-size 1000]
                        [--only register_device,subscribe,publish_user,publish_topic,batch]
                        [--json]

Starts `fanout serve` (one uvicorn process) against PostgreSQL (FANOUT_DATABASE_URL, else a
fresh database on 127.0.0.1:5432, else an embedded server) and an SQS endpoint (moto's
server); this process is the client. Prints requests/second and latency percentiles per
operation, and for the batch endpoint the notifications accepted per second. The publish
rate limit per key is lifted for the run (it would measure the limit). Publishing measures
the API alone: no worker runs, the events wait on the queue.

Against another build of fanout, back to back on one machine (issue #26: the previous
main's publish rates against this one's), run the same file with that build's sources first
on the path: ``PYTHONPATH=/path/to/old/src python bench/api.py --only publish_user,publish_topic``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson
from _services import database, free_port, queues_ready

from fanout.api.keys import create_api_key
from fanout.local.services import local_sqs_server
from fanout.store import connect
from fanout.store.migrate import migrate


async def prepare(database_url: str) -> str:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        _, token = await create_api_key(conn, ["manage", "publish"], "bench")
        return token
    finally:
        await conn.close()


def start_server(database_url: str, sqs_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FANOUT_DATABASE_URL": database_url,
        "FANOUT_SQS_ENDPOINT_URL": sqs_url,
        "FANOUT_QUEUE_PREFIX": "bench",
        "FANOUT_API_PUBLISH_RATE": "1000000000",
        "FANOUT_API_PUBLISH_BURST": "1000000000",
    }
    queues_ready(env)
    server = subprocess.Popen(
        [
            sys.executable,
            *os.environ.get("BENCH_SERVER_WRAP", "").split(),
            "-m",
            "fanout",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/openapi.json", timeout=1)
            return server, url
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


# The load generator is aiohttp, not httpx: with httpx the client process saturated its
# core at ~310 req/s while the server sat at 37% CPU, so it measured the client.
Request = Callable[[aiohttp.ClientSession, int], Awaitable[aiohttp.ClientResponse]]


async def load(
    url: str, token: str, requests: int, concurrency: int, make_request: Request
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as client:

        async def user() -> None:
            nonlocal errors
            for i in counter:
                started = time.perf_counter()
                async with await make_request(client, i) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status >= 300

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": requests,
        "errors": errors,
        "requests_per_second": round(requests / elapsed, 1),
        "median_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


OPERATIONS = ("register_device", "subscribe", "publish_user", "publish_topic", "batch")


async def run(
    url: str,
    token: str,
    requests: int,
    concurrency: int,
    *,
    batch_size: int = 1000,
    only: tuple[str, ...] = OPERATIONS,
) -> dict[str, dict[str, float]]:
    run_id = secrets.token_hex(3)

    def register(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        body = {"user_id": f"b{run_id}-{i}", "platform": "apns", "token": secrets.token_hex(32)}
        return client.post("/v1/devices", json=body)

    def subscribe(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        return client.put(f"/v1/topics/author:{run_id}/subscribers/b{run_id}-{i}")

    def publish_user(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        body = {"notification": {"title": "Anna liked your review", "data": {"n": str(i)}}}
        return client.post(f"/v1/users/p{run_id}-{i}/notifications", json=body)

    def publish_topic(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        body = {"topic": f"author:{run_id}", "notification": {"title": f"chapter {i}"}}
        return client.post("/v1/events", json=body)

    def batch(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        items = [
            {"user_id": f"n{run_id}-{i}-{j}", "notification": {"title": "Your order shipped"}}
            for j in range(batch_size)
        ]
        return client.post("/v1/notifications/batch", data=orjson.dumps({"items": items}),
                           headers={"Content-Type": "application/json"})  # fmt: skip

    # A short warm-up so connection set-up and first-query planning are not measured.
    await load(url, token, min(200, requests), concurrency, register)
    chosen: dict[str, tuple[Request, int]] = {
        "register_device": (register, requests),
        "subscribe": (subscribe, requests),
        "publish_user": (publish_user, requests),
        "publish_topic": (publish_topic, requests),
        # A thousand notifications a request: as many requests as make `requests`
        # notifications, at least a few per client.
        "batch": (batch, max(requests // batch_size, 2 * min(concurrency, 8))),
    }
    results: dict[str, dict[str, float]] = {}
    for name in only:
        make_request, count = chosen[name]
        limit = min(concurrency, 8) if name == "batch" else concurrency
        results[name] = await load(url, token, count, limit, make_request)
        if name == "batch":
            results[name]["notifications_per_second"] = round(
                results[name]["requests_per_second"] * batch_size, 1
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1000, help="items per batch request")
    parser.add_argument("--only", default=",".join(OPERATIONS), help="operations, by name")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    only = tuple(name for name in args.only.split(",") if name)
    if unknown := set(only) - set(OPERATIONS):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (of {', '.join(OPERATIONS)})")

    with database() as database_url, local_sqs_server() as sqs_url:
        token = asyncio.run(prepare(database_url))
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanout-bench-api-{os.getpid()}.log"
        server, url = start_server(database_url, sqs_url, log)
        try:
            results = asyncio.run(
                run(
                    url,
                    token,
                    args.requests,
                    args.concurrency,
                    batch_size=args.batch_size,
                    only=only,
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=60)  # it drains: the events it committed are enqueued

    print(f"{'operation':<18}{'req/s':>10}{'median ms':>12}{'p99 ms':>10}{'errors':>8}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['requests_per_second']:>10,.0f}{r['median_ms']:>12}"
            f"{r['p99_ms']:>10}{r['errors']:>8.0f}"
        )
    if "batch" in results:
        print(
            f"batch: {results['batch']['notifications_per_second']:,.0f} notifications/s "
            f"({args.batch_size} a request, concurrency {min(args.concurrency, 8)})"
        )
    print(f"(one server process, one client process, concurrency {args.concurrency})")
    if args.json:
        print(orjson.dumps({"concurrency": args.concurrency, **results}).decode())


if __name__ == "__main__":
    main()
