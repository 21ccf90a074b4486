"""A claim that commits while its client sees the connection drop (issue #27).

During a PostgreSQL restart a claim's statement can commit on the server while the driver
reports the connection lost: the shard or batch is leased to an invocation that believes
it holds nothing. The proxy in front of PostgreSQL makes exactly that: it lets the claim
run and commit, then cuts the connection before its reply reaches the client. The
claiming invocation tries again as the same owner and takes its own lease back, so the
work goes on at once. The lease here is 600 s: an invocation that waited for it to end
would not finish within these tests' wait (no clock is read to say so).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.stages.publish import publish
from fanout.store import batches, shards
from tests.faults.conftest import exactly_once, wait_until_delivered, worker_in_process
from tests.faults.proxy import FlakyProxy
from tests.helpers import make_topic

NOTE = Notification(title="New book")
DEVICES = 300
LEASE = 600  # seconds: far longer than WITHIN, so waiting it out cannot pass
WITHIN = 60.0  # seconds the event has to end in


async def deliver_losing_one_reply(
    statement: str, settings: Settings, pool: asyncpg.Pool, sink: EmbeddedSink
) -> int:
    """Publish an event to DEVICES devices through a worker whose database connection
    loses the reply to the first run of ``statement``; wait until it is delivered and
    return its id."""
    topic = await make_topic(pool, DEVICES)
    url = urlsplit(settings.database_dsn())
    async with FlakyProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxy.drop_reply_to(statement.encode())
        proxied = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
        settings = settings.model_copy(
            update={"database_url": SecretStr(proxied), "visibility_timeout": LEASE}
        )
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
