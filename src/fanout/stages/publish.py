"""Publishing an event: write it, then hand it to the fan-out queue (a transactional outbox).

The event row is committed as 'pending' before its message is sent. If the process
dies in between, the outbox sweeper (run by every worker) finds the pending event
and sends its message; fan-out is idempotent, so sending twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from fanout.notification import Notification
from fanout.queue.messages import FanoutTask
from fanout.queue.sqs import Queues
from fanout.store import find_or_create, queries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    event_id: int
    created: bool  # False: the idempotency key named an event published before


async def record_event(
    pool: asyncpg.Pool,
    notification: Notification,
    *,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
) -> Published:
    """Commit the event as pending: to a topic's subscribers or to one user's devices."""
    if (topic is None) == (user is None):
        raise ValueError("an event goes to exactly one of: a topic, a user")
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic) if topic else None
        user_id = await find_or_create(conn, queries.UPSERT_USER, user) if user else None
        event_id = await conn.fetchval(
            queries.INSERT_EVENT, topic_id, user_id, idempotency_key, payload
        )
        if event_id is not None:
            return Published(event_id, created=True)
        existing = await conn.fetchval(queries.EVENT_BY_IDEMPOTENCY_KEY, idempotency_key)
        return Published(existing, created=False)


async def enqueue_event(pool: asyncpg.Pool, queues: Queues, event_id: int) -> None:
    """Send the event's fan-out message and mark it enqueued."""
    await queues.fanout.send(FanoutTask(event_id).encode())
    async with pool.acquire() as conn:
        await conn.execute(queries.MARK_EVENT_ENQUEUED, event_id)


async def publish(
    pool: asyncpg.Pool,
    queues: Queues,
    notification: Notification,
    *,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
) -> Published:
    """Record and enqueue an event; the same idempotency key publishes nothing twice."""
    published = await record_event(
        pool, notification, topic=topic, user=user, idempotency_key=idempotency_key
    )
    if published.created:
        await enqueue_event(pool, queues, published.event_id)
    return published


async def sweep_outbox(
    pool: asyncpg.Pool, queues: Queues, *, older_than: float, limit: int = 100
) -> int:
    """Enqueue events left pending for longer than ``older_than`` seconds."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(queries.PENDING_EVENTS, older_than, limit)
    for row in rows:
        log.warning("event %d was left pending; enqueueing it now", row["id"])
        await enqueue_event(pool, queues, row["id"])
    return len(rows)
