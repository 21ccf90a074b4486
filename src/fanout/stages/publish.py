"""Publishing an event: write it, then hand it to the fan-out queue (a transactional outbox).

The event row is committed as 'pending' before its message is sent. If the process
dies in between, or the message is lost, the reconciler (runtime/reconciler.py) finds
the event overdue and sends its message again; fan-out is idempotent, so sending twice
is harmless. A notification that no delivery batch could carry is refused here, before
anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from fanout.notification import Notification
from fanout.queue.messages import MAX_MESSAGE_BYTES, FanoutTask
from fanout.queue.sqs import Queues
from fanout.stages.batching import MIN_DEVICE_ROOM_BYTES, room_for_devices
from fanout.stages.batching import batch_max_bytes as max_batch_bytes
from fanout.store import find_or_create, queries

log = logging.getLogger(__name__)


# How long an enqueued event may wait for its fan-out to start before the reconciler
# sends its message again (FANOUT_RECONCILE_AFTER's default; callers pass the setting).
DEFAULT_OVERDUE_AFTER = 60.0


class NotificationTooLarge(ValueError):
    """The notification cannot travel in a delivery batch: refused at the door."""


def check_fits_a_batch(notification: Notification, max_bytes: int) -> None:
    """Raise ``NotificationTooLarge`` unless a batch of ``max_bytes`` carries the
    notification (every locale: batches carry it whole) and at least one device."""
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    room = room_for_devices(payload, max_bytes)
    if room < MIN_DEVICE_ROOM_BYTES:
        raise NotificationTooLarge(
            f"the notification is {MIN_DEVICE_ROOM_BYTES - room:,} bytes too large: with "
            f"its envelope and one device it must fit a delivery batch of "
            f"{max_bytes:,} bytes (FANOUT_BATCH_MAX_BYTES, at most 90% of the queue's "
            "MaximumMessageSize); send fewer locales or shorter text"
        )


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
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> Published:
    """Commit the event as pending: to a topic's subscribers or to one user's devices.

    A notification that cannot fit a batch of ``batch_max_bytes`` (capped at 90% of the
    queue's 1 MiB) raises ``NotificationTooLarge``; nothing is written. The event is due
    ``overdue_after`` seconds on: if its fan-out message is not sent by then (the
    publisher died, SQS was down), the reconciler sends it.
    """
    if (topic is None) == (user is None):
        raise ValueError("an event goes to exactly one of: a topic, a user")
    check_fits_a_batch(notification, max_batch_bytes(batch_max_bytes, MAX_MESSAGE_BYTES))
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic) if topic else None
        user_id = await find_or_create(conn, queries.UPSERT_USER, user) if user else None
        event_id = await conn.fetchval(
            queries.INSERT_EVENT, topic_id, user_id, idempotency_key, payload, overdue_after
        )
        if event_id is not None:
            return Published(event_id, created=True)
        existing = await conn.fetchval(queries.EVENT_BY_IDEMPOTENCY_KEY, idempotency_key)
        return Published(existing, created=False)


async def enqueue_event(
    pool: asyncpg.Pool,
    queues: Queues,
    event_id: int,
    *,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> None:
    """Send the event's fan-out message and mark it enqueued (due ``overdue_after`` on)."""
    await queues.fanout.send(FanoutTask(event_id).encode())
    async with pool.acquire() as conn:
        await conn.execute(queries.MARK_EVENT_ENQUEUED, event_id, overdue_after)


async def publish(
    pool: asyncpg.Pool,
    queues: Queues,
    notification: Notification,
    *,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    batch_max_bytes: int | None = None,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> Published:
    """Record and enqueue an event; the same idempotency key publishes nothing twice.

    ``batch_max_bytes`` (FANOUT_BATCH_MAX_BYTES) is capped by the delivery queue's limit;
    a notification that cannot fit a batch raises ``NotificationTooLarge``.
    """
    configured = batch_max_bytes if batch_max_bytes is not None else MAX_MESSAGE_BYTES
    limit = max_batch_bytes(configured, queues.delivery.max_message_bytes)
    published = await record_event(
        pool,
        notification,
        topic=topic,
        user=user,
        idempotency_key=idempotency_key,
        batch_max_bytes=limit,
        overdue_after=overdue_after,
    )
    if published.created:
        await enqueue_event(pool, queues, published.event_id, overdue_after=overdue_after)
    return published
