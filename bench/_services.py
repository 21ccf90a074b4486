"""What the benchmarks share: a PostgreSQL database, free ports, the queues made ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg

from fanout.config import Settings
from fanout.local.services import embedded_postgres
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def database() -> Iterator[str]:
    """FANOUT_DATABASE_URL, else a fresh database on 127.0.0.1:5432, else an embedded one."""
    if url := os.environ.get("FANOUT_DATABASE_URL"):
        yield url
        return
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
    except OSError:
        with embedded_postgres() as url:
            yield url
        return
    name = f"fanout_bench_{secrets.token_hex(3)}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def queues_ready(env: dict[str, str]) -> Settings:
    """The ``Settings`` of the ``FANOUT_*`` variables in ``env``, once their SQS endpoint
    answers and both queues (with their dead-letter queues) exist."""
    settings = Settings(
        **{k.removeprefix("FANOUT_").lower(): v for k, v in env.items() if k.startswith("FANOUT_")}
    )

    async def create() -> None:
        for _ in range(100):  # moto's server takes a moment to bind its port
            try:
                async with open_client(settings) as client:
                    await create_queues(client, settings)
                return
            except Exception:
                await asyncio.sleep(0.1)
        async with open_client(settings) as client:  # the last try's error, as it is
            await create_queues(client, settings)

    asyncio.run(create())
    return settings


def stop_processes(processes: list[subprocess.Popen[Any]]) -> None:
    """Stop what a benchmark started, the last started first; kill what does not stop in
    15 s."""
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
