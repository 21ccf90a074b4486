"""The services the fault tests restart and kill: they come back where they were."""

from __future__ import annotations

import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from fanout.config import Settings
from fanout.local.postgres_server import PrivatePostgres
from fanout.local.sink import EmbeddedSink, PushSink
from fanout.local.sqs_server import MotoServer
from fanout.local.stalling_proxy import StallingProxy
from fanout.queue.admin import create_queues
from fanout.queue.sqs import open_client, open_queues
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


async def _answer(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM kept"))
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_keeps_port_and_committed_rows(
    private_postgres: PrivatePostgres, mode: str
) -> None:
    conn = await asyncpg.connect(private_postgres.dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
    await conn.execute("INSERT INTO kept VALUES (1)")
    before = await _answer(private_postgres.dsn)

    private_postgres.restart(mode)  # type: ignore[arg-type]

    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("SELECT 1")  # the old connection did not survive
    conn.terminate()
    assert await _answer(private_postgres.dsn) == before  # committed is committed


async def test_postgres_stop_refuses_connections_until_start(
    private_postgres: PrivatePostgres,
) -> None:
    private_postgres.stop("immediate")
    assert not private_postgres.running
    with pytest.raises(OSError):
        await asyncpg.connect(private_postgres.dsn, timeout=2)
    private_postgres.start()
    conn = await asyncpg.connect(private_postgres.dsn)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_killed_moto_loses_its_queues_and_comes_back_on_the_same_port() -> None:
    with MotoServer() as moto:
        settings = Settings(sqs_endpoint_url=moto.url, queue_prefix="private")
        async with open_client(settings) as client:
            await create_queues(client, settings)
            queues = await open_queues(client, settings)
            await queues.delivery.send("kept until the kill")
            assert await queues.delivery.depth() == 1

            moto.kill()
            moto.start()

            with pytest.raises(client.exceptions.QueueDoesNotExist):
                await client.get_queue_url(QueueName="private-delivery")
            await create_queues(client, settings)
            again = await open_queues(client, settings)
            assert again.delivery.url == queues.delivery.url  # same URL: workers reconnect
            assert await again.delivery.depth() == 0  # the message went with the server


async def test_stalling_proxy_passes_pushes_on_and_delays_or_holds_the_answers() -> None:
    push = {"collapse_key": "7", "payload": {}, "devices": [[1, "tok-1"]]}
    # A proxy each for the delay and the hang, each stall in force for an hour: a stall
    # of a fraction of a second could end before a loaded machine's request reached it.
    async with (
        EmbeddedSink(PushSink()) as sink,
        StallingProxy("127.0.0.1", int(sink.url.rsplit(":", 1)[1])) as slow,
        StallingProxy("127.0.0.1", int(sink.url.rsplit(":", 1)[1])) as hung,
        httpx.AsyncClient(timeout=30) as client,
    ):
        answer = await client.post(f"{slow.url}/push", json=push)
        assert answer.json() == {"results": ["ok"]}

        slow.answer_after(0.3, for_seconds=3600)
        started = time.monotonic()
        assert (await client.post(f"{slow.url}/push", json=push)).status_code == 200
        assert time.monotonic() - started >= 0.3

        hung.hang(for_seconds=3600)
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{hung.url}/push", json=push, timeout=0.5)
        # The push got through (once it has: the client may give up first); only its
        # answer was held back.
        await wait_for(lambda: hung.held == 1, "the push through the hung proxy")
        assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (1, 2)
        assert (slow.forwarded, slow.delayed, slow.held) == (2, 1, 0)
        assert (hung.forwarded, hung.delayed, hung.held) == (1, 0, 1)
