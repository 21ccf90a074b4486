"""A claim that commits while its client sees the connection drop (issue #27).

During a PostgreSQL restart a claim's statement can commit on the server while the driver
reports the connection lost: the shard or batch is leased to an invocation that believes
it holds nothing. The proxy in front of PostgreSQL makes exactly that: it lets the claim
run and commit, then cuts the connection before its reply reaches the client. The
claiming invocation tries again as the same owner and takes its own lease back, so the
work goes on at once. The lease here is 600 s: an invocation that waited for it to end
would not finish within these tests' wait (no clock is read to say so).

The webhook sender's claim of due deliveries is a lease too (its rows' due time moved on):
one that committed unanswered is given back by the sender's next pass, which then sends
them, rather than left until the lease ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import keyring
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.stages.publish import publish
from fanout.store import UNTRUSTWORTHY, batches, create_pool, shards, webhooks
from fanout.store.apps import DEFAULT_APP_ID
from fanout.webhooks.endpoints import register
from fanout.webhooks.sender import WebhookSender
from tests.faults.conftest import exactly_once, wait_until_delivered, worker_in_process
from tests.faults.proxy import FlakyProxy
from tests.helpers import make_topic
from tests.webhook_receiver import Receiver

NOTE = Notification(title="New book")
DEVICES = 300
LEASE = 600  # seconds: far longer than WITHIN, so waiting it out cannot pass
WITHIN = 60.0  # seconds the event has to end in


@contextlib.asynccontextmanager
async def proxied(settings: Settings) -> AsyncIterator[tuple[FlakyProxy, Settings]]:
    """A proxy in front of the test's database, and ``settings`` reaching it through it."""
    url = urlsplit(settings.database_dsn())
    async with FlakyProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        through = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
        yield proxy, settings.model_copy(update={"database_url": SecretStr(through)})


async def deliver_losing_one_reply(
    statement: str, settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> int:
    """Publish an event to DEVICES devices through a worker whose database connection
    loses the reply to the first run of ``statement``; wait until it is delivered and
    return its id."""
    topic = await make_topic(pool, DEVICES)
    async with proxied(settings) as (proxy, settings):
        proxy.drop_reply_to(statement.encode())
        settings = settings.model_copy(update={"visibility_timeout": LEASE})
        async with worker_in_process(settings, sink) as pipeline:
            event = await publish(pool, pipeline.queues, NOTE, topic=topic.key)
            await wait_until_delivered(pool, event.event_id, DEVICES, timeout=WITHIN)
    assert proxy.replies_dropped == 1, "the claim's reply was not lost"
    return event.event_id


async def test_a_shard_claim_committed_but_unanswered_is_taken_again_by_its_owner(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    event_id = await deliver_losing_one_reply(shards.CLAIM_SHARD, fault_settings, pool, sink)
    async with pool.acquire() as conn:
        shard = await conn.fetchrow(
            "SELECT status, attempts FROM fanout_shards WHERE event_id = $1", event_id
        )
    # Claimed twice: the claim that committed unanswered, then by the same owner again.
    assert (shard["status"], shard["attempts"]) == ("done", 2)
    exactly_once(sink, DEVICES)


async def test_a_batch_claim_committed_but_unanswered_is_taken_again_by_its_owner(
    fault_settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> None:
    event_id = await deliver_losing_one_reply(batches.CLAIM_BATCH, fault_settings, pool, sink)
    async with pool.acquire() as conn:
        open_batches = await conn.fetchval(
            "SELECT count(*) FROM delivery_batches WHERE event_id = $1 AND status <> 'done'",
            event_id,
        )
    assert open_batches == 0
    exactly_once(sink, DEVICES)


async def test_a_webhook_claim_committed_but_unanswered_is_given_back_by_its_sender(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    settings = settings.model_copy(
        update={
            "secret_key": SecretStr(generate_key()),
            "webhook_allow_private": True,
            # The claim's lease is twice this and 5 s (125 s): the second pass below is
            # at once, far inside it, so only a claim given back can send the row.
            "webhook_timeout_seconds": 60.0,
        }
    )
    receiver = Receiver()
    async with pool.acquire() as conn:
        _, receiver.secret = await register(
            conn,
            app_id=DEFAULT_APP_ID,
            url=receiver.url,
            kinds=["devices.failed"],
            keyring=keyring(settings),
            resolver=_no_dns,
            allow_private=True,
        )
        await webhooks.enqueue(conn, app_id=DEFAULT_APP_ID, kind="devices.failed", payload={})
    receiver.up()
    try:
        async with proxied(settings) as (proxy, settings):
            proxy.drop_reply_to(webhooks.CLAIM_DELIVERIES.encode())
            sender_pool = await create_pool(settings)
            sender = WebhookSender(sender_pool, settings, keyring(settings))
            try:
                with pytest.raises(UNTRUSTWORTHY):
                    await sender.send_due()  # the claim commits; its answer is lost
                assert proxy.replies_dropped == 1, "the claim's reply was not lost"
                done = await sender.send_due()
            finally:
                await sender.aclose()
                await sender_pool.close()
    finally:
        receiver.down()
    assert done.delivered == 1
    assert len(receiver.received) == 1 and receiver.unverified == []
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, attempts FROM webhook_deliveries")
    # The claim that was never answered called nobody: it is not counted as an attempt.
    assert (row["status"], row["attempts"]) == ("delivered", 1)


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was resolved: the receiver's URL is an address")
