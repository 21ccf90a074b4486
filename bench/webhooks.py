"""Webhook deliveries per second of one sending process, to a receiver on loopback.

    python bench/webhooks.py [--deliveries 2000] [--concurrency 16] [--json]

The outbox is filled with ``--deliveries`` rows (``devices.retired`` payloads of 100
devices each, the size a batch's report has) for one endpoint; this process then runs
the worker's webhook sender (``WebhookSender.send_due``, FANOUT_WEBHOOK_CONCURRENCY calls
at a time: claim, sign, POST, record) until none is left. The receiver is another process
(a bare asyncio HTTP/1.1 server answering 204), so the figure is the sender's. Reported:
deliveries/s, and the sender process's CPU per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import orjson
from _services import database, free_port, stop_processes
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import keyring
from fanout.store import connect, create_pool, webhooks
from fanout.store.apps import DEFAULT_APP_ID
from fanout.store.migrate import migrate
from fanout.webhooks.endpoints import register
from fanout.webhooks.sender import WebhookSender


async def _receive(port: int) -> None:
    """The receiver: read each request whole, answer 204, close (the sender keeps no
    connection between calls)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=1024)
    print("receiving", flush=True)
    async with server:
        await server.serve_forever()


async def _bench(url: str, port: int, deliveries: int, concurrency: int) -> dict[str, float]:
    settings = Settings(
        database_url=SecretStr(url),
        secret_key=SecretStr(generate_key()),
        webhook_allow_private=True,
        webhook_concurrency=concurrency,
    )
    conn = await connect(url)
    try:
        await migrate(conn)
        await register(
            conn,
            app_id=DEFAULT_APP_ID,
            url=f"http://127.0.0.1:{port}/hooks",
            kinds=["devices.retired"],
            keyring=keyring(settings),
            resolver=_no_dns,
            allow_private=True,
        )
        payload = {
            "event_id": 1,
            "batch": "1/0/0",
            "live_activity": False,
            "devices": [
                {"device_id": i, "platform": "apns", "token": "ab" * 32, "reason": "Unregistered"}
                for i in range(100)
            ],
        }
        async with conn.transaction():
            for _ in range(deliveries):
                await webhooks.enqueue(
                    conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload=payload
                )
    finally:
        await conn.close()
    pool = await create_pool(settings)
    sender = WebhookSender(pool, settings, keyring(settings))
    delivered = 0
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        while delivered < deliveries:
            done = await sender.send_due()
            delivered += done.delivered
            if done.claimed == 0:
                raise SystemExit(f"nothing due with {deliveries - delivered} undelivered")
    finally:
        await sender.aclose()
        await pool.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "deliveries": deliveries,
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "deliveries_per_second": round(deliveries / wall, 1),
        "cpu_us_per_delivery": round(cpu / deliveries * 1e6, 1),
    }


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError("the bench's URL is an address")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(_receive(args.receiver))
        return
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port)],
        stdout=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        assert receiver.stdout is not None
        receiver.stdout.readline()  # "receiving"
        with database() as url:
            found = asyncio.run(_bench(url, port, args.deliveries, args.concurrency))
    finally:
        stop_processes([receiver])
    if args.json:
        print(orjson.dumps(found).decode())
        return
    print(
        f"{found['deliveries']} webhook deliveries at concurrency {found['concurrency']}: "
        f"{found['deliveries_per_second']:,.0f}/s from one process, "
        f"{found['cpu_us_per_delivery']:,.0f} µs of its CPU each ({found['seconds']} s)"
    )


if __name__ == "__main__":
    main()
