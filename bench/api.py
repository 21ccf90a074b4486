"""Load on the HTTP API: device registration and subscribe, from a second process.

    python bench/api.py [--requests 5000] [--concurrency 32] [--json]

Starts `fanout serve` (one uvicorn process) against PostgreSQL (FANOUT_DATABASE_URL, else a
fresh database on 127.0.0.1:5432, else an embedded server) and an SQS endpoint; this
process is the client. Prints requests/second and latency percentiles per operation.
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
from _services import database, free_port

from fanout.api.keys import create_api_key
from fanout.local.services import local_sqs_server
from fanout.store import connect
from fanout.store.migrate import migrate


async def prepare(database_url: str) -> str:
    conn = await connect(database_url)
    try:
        await migrate(conn)
        _, token = await create_api_key(conn, ["manage"], "bench")
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
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "fanout", "serve", "--port", str(port)],
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


async def run(url: str, token: str, requests: int, concurrency: int) -> dict[str, dict[str, float]]:
    run_id = secrets.token_hex(3)

    def register(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        body = {"user_id": f"b{run_id}-{i}", "platform": "apns", "token": secrets.token_hex(32)}
        return client.post("/v1/devices", json=body)

    def subscribe(client: aiohttp.ClientSession, i: int) -> Awaitable[aiohttp.ClientResponse]:
        return client.put(f"/v1/topics/author:{run_id}/subscribers/b{run_id}-{i}")

    # A short warm-up so connection set-up and first-query planning are not measured.
    await load(url, token, min(200, requests), concurrency, register)
    return {
        "register_device": await load(url, token, requests, concurrency, register),
        "subscribe": await load(url, token, requests, concurrency, subscribe),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with database() as database_url, local_sqs_server() as sqs_url:
        token = asyncio.run(prepare(database_url))
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanout-bench-api-{os.getpid()}.log"
        server, url = start_server(database_url, sqs_url, log)
        try:
            results = asyncio.run(run(url, token, args.requests, args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=10)

    print(f"{'operation':<18}{'req/s':>10}{'median ms':>12}{'p99 ms':>10}{'errors':>8}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['requests_per_second']:>10,.0f}{r['median_ms']:>12}"
            f"{r['p99_ms']:>10}{r['errors']:>8.0f}"
        )
    print(f"(one server process, one client process, concurrency {args.concurrency})")
    if args.json:
        print(orjson.dumps({"concurrency": args.concurrency, **results}).decode())


if __name__ == "__main__":
    main()
