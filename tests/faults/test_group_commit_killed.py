"""Group commit under faults: nothing an API process acknowledged is lost.

A stream of 1:1 sends runs against a real `fanout serve` while (1) the server is killed
(SIGKILL) mid-stream, (2) PostgreSQL drops its connections mid-stream. The faults land at
a point (enough sends acknowledged, more in flight), never on a timer. Every send answered
202 must then be an event of its own user, owned by the pipeline or the reconciler (due).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx

from fanout.api.keys import create_api_key
from fanout.config import Settings
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client
from fanout.store import connect
from tests.api.conftest import start_server
from tests.processes import stop

STREAMS = 24  # concurrent clients, so groups form


async def publish_key(settings: Settings) -> str:
    async with open_client(settings) as client:
        await create_queues(client, settings)
    conn = await connect(settings.database_dsn())
    try:
        return (await create_api_key(conn, ["publish"], "stream"))[1]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def send_stream(
    url: str, token: str, acknowledged: dict[int, str], stop_when: Callable[[], bool]
) -> AsyncIterator[None]:
    """STREAMS clients sending 1:1 sends until ``stop_when``; each 202 recorded (its
    event id and user). A send that fails (the server gone, a 5xx) is not acknowledged."""
    run = secrets.token_hex(3)

    async def one_client(n: int) -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            i = 0
            while not stop_when():
                user = f"{run}-{n}-{i}"
                i += 1
                try:
                    answer = await client.post(
                        f"/v1/users/{user}/notifications", json={"notification": {"title": user}}
                    )
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
                    continue
                if answer.status_code == 202:
                    acknowledged[answer.json()["event_id"]] = user

    tasks = [asyncio.create_task(one_client(n)) for n in range(STREAMS)]
    try:
        yield
    finally:
        await asyncio.gather(*tasks)


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def assert_every_acknowledged_send_is_kept(
    settings: Settings, acknowledged: dict[int, str]
) -> None:
    conn = await connect(settings.database_dsn())
    try:
        rows = await conn.fetch(
            """SELECT e.id, u.external_id, e.status, e.due_at IS NOT NULL AS due
               FROM events e JOIN users u ON u.id = e.user_id WHERE e.id = ANY($1::bigint[])""",
            list(acknowledged),
        )
    finally:
        await conn.close()
    found = {row["id"]: row["external_id"] for row in rows}
    assert found == acknowledged, f"{len(set(acknowledged) - set(found))} acknowledged sends lost"
    # Each is on its way or owned by the reconciler (due), none left without a deadline.
    assert all(row["status"] in ("pending", "enqueued") and row["due"] for row in rows)


async def test_an_api_killed_mid_group_loses_no_acknowledged_send(
    settings: Settings, tmp_path: Path
) -> None:
    token = await publish_key(settings)
    limits = {"FANOUT_API_PUBLISH_RATE": "100000", "FANOUT_API_PUBLISH_BURST": "100000"}
    server, url = start_server(settings, tmp_path / "serve.log", **limits)
    acknowledged: dict[int, str] = {}
    killed = asyncio.Event()
    try:
        async with send_stream(url, token, acknowledged, killed.is_set):
            await wait_for(lambda: len(acknowledged) >= 100)
            server.send_signal(signal.SIGKILL)  # sends in flight, groups mid-commit
            server.wait()
            before = len(acknowledged)
            await asyncio.sleep(0.2)  # the clients see the server gone
            killed.set()
    finally:
        stop(server)
    assert len(acknowledged) >= before >= 100
    await assert_every_acknowledged_send_is_kept(settings, acknowledged)


async def test_postgresql_dropping_the_apis_connections_loses_no_acknowledged_send(
    settings: Settings, tmp_path: Path
) -> None:
    token = await publish_key(settings)
    limits = {"FANOUT_API_PUBLISH_RATE": "100000", "FANOUT_API_PUBLISH_BURST": "100000"}
    server, url = start_server(settings, tmp_path / "serve.log", **limits)
    acknowledged: dict[int, str] = {}
    done = asyncio.Event()
    admin: asyncpg.Connection = await connect(settings.database_dsn())
    try:
        async with send_stream(url, token, acknowledged, done.is_set):
            await wait_for(lambda: len(acknowledged) >= 100)
            dropped = await admin.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            )
            assert dropped >= 1
            after = len(acknowledged)
            await wait_for(lambda: len(acknowledged) >= after + 100)  # it serves on
            done.set()
    finally:
        await admin.close()
        stop(server)
    await assert_every_acknowledged_send_is_kept(settings, acknowledged)
