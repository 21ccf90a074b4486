"""FANOUT_DATABASE_READ_URL: the fan-out's recipient pages (and the shard plan's reads)
are read there; every write goes to FANOUT_DATABASE_URL.

The "replica" is a second database that holds the topic's subscribers and devices while
the primary holds none: every device delivered was read from the read URL, and every
row the pipeline wrote (event, shards, batches) is on the primary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from pydantic import SecretStr

from fanout.config import Settings, Unreachable
from fanout.local.postgres_server import free_port
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.runtime.pipeline import Pipeline
from fanout.runtime.worker import QueueConsumer
from fanout.stages.publish import publish
from fanout.store import create_read_pool, subscriptions
from tests.conftest import _copy_of
from tests.helpers import make_topic
from tests.integration.test_worker import running_worker, wait_until_done  # noqa: F401


@pytest.fixture
def replica_url(server_url: str, database_template: str) -> Iterator[str]:
    with _copy_of(server_url, database_template) as url:
        yield url


@pytest.fixture
def settings(settings: Settings, replica_url: str) -> Settings:
    return settings.model_copy(update={"database_read_url": SecretStr(replica_url)})


@pytest.fixture
async def replica(replica_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(replica_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_fanout_pages_are_read_from_the_read_url_and_every_write_goes_to_the_primary(
    pipeline: Pipeline,
    replica: asyncpg.Pool,
    sink: EmbeddedSink,
    running_worker: list[QueueConsumer],  # noqa: F811
) -> None:
    assert pipeline.read_pool is not None
    pipeline.settings = pipeline.settings.model_copy(update={"shard_size": 30, "page_size": 20})
    topic = await make_topic(replica, 100, devices_per_user=(1, 2))
    async with pipeline.pool.acquire() as conn:
        # The same topic id as on the replica (both copies of one template), and no
        # subscriber of it on the primary.
        assert await conn.fetchval(subscriptions.UPSERT_TOPIC, topic.key, 1) == topic.id
        assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 0

    event = await publish(pipeline.pool, pipeline.queues, Notification(title="hi"), topic=topic.key)
    progress = await wait_until_done(pipeline, event.event_id)

    assert progress["sent"] == len(topic.device_ids) == 150
    assert progress["shards"] == 4  # planned from the replica's subscribers too
    assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (150, 0)
    async with replica.acquire() as conn:  # nothing the pipeline writes went there
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
        assert await conn.fetchval("SELECT count(*) FROM delivery_batches") == 0


async def test_a_read_url_that_does_not_answer_is_named_with_its_setting(
    settings: Settings,
) -> None:
    nowhere = f"postgresql://fanout:secret@127.0.0.1:{free_port()}/fanout"
    broken = settings.model_copy(update={"database_read_url": SecretStr(nowhere)})
    with pytest.raises(Unreachable) as caught:
        await create_read_pool(broken)
    assert "(FANOUT_DATABASE_READ_URL)" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_a_sourced_events_members_are_read_from_the_primary_where_they_were_written(
    pipeline: Pipeline,
    sink: EmbeddedSink,
    running_worker: list[QueueConsumer],  # noqa: F811
) -> None:
    """A replica behind the primary would hold none of the members just read (here: it
    holds nothing at all), and nobody would be sent to."""
    from tests.integration.test_sourced_topics import FOLLOWERS, add_source, follow_table, followers

    pipeline.settings = pipeline.settings.model_copy(update={"shard_size": 7, "page_size": 3})
    await follow_table(pipeline.pool)
    await add_source(pipeline.pool, pipeline.settings, "author:", FOLLOWERS)
    users = await make_topic(pipeline.pool, 30)
    chosen = await followers(pipeline.pool, 7, users)

    event = await publish(
        pipeline.pool, pipeline.queues, Notification(title="hi"), topic="author:7"
    )
    progress = await wait_until_done(pipeline, event.event_id)

    assert progress["sent"] == len(chosen) == 15
    assert (sink.sink.ledger.unique, sink.sink.ledger.duplicates) == (15, 0)
