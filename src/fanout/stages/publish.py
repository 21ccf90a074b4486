"""Publishing an event: write it, then hand it to the fan-out queue (a transactional outbox).

The event row is committed as 'pending' before its message is sent. If the process
dies in between, or the message is lost, the reconciler (runtime/reconciler.py) finds
the event overdue and sends its message again; fan-out is idempotent, so sending twice
is harmless. A notification that no delivery batch could carry is refused here, before
anything is written.

Idempotency keys work as payment APIs' do. A key belongs to the API key that sent it
(the CLI and other internal callers share one scope of their own), so two clients
cannot collide. Sent again with the same request, it returns the first event; with a
different request (another topic or user, another notification) it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import orjson

from fanout import store
from fanout.notification import Notification
from fanout.queue.messages import MAX_MESSAGE_BYTES, FanoutTask
from fanout.queue.sqs import Queues
from fanout.stages.batching import batch_max_bytes as max_batch_bytes
from fanout.stages.batching import bytes_short

log = logging.getLogger(__name__)

# How long an enqueued event may wait for its fan-out to start before the reconciler
# sends its message again (FANOUT_RECONCILE_AFTER's default; callers pass the setting).
DEFAULT_OVERDUE_AFTER = 60.0


class NotificationTooLarge(ValueError):
    """The notification cannot travel in a delivery batch: refused at the door."""


class IdempotencyConflict(ValueError):
    """The idempotency key was used before, in the same scope, for a different request."""

    def __init__(self) -> None:
        super().__init__(
            "the idempotency key was already used for a different request (another topic, "
            "user or notification); use a new key for a new request"
        )


@dataclass(frozen=True, slots=True)
class Published:
    event_id: int
    created: bool  # False: the idempotency key named an event published before
    enqueued: bool = False  # False: not sent now (an earlier event, or left to the reconciler)


def check_fits_a_batch(notification: Notification, max_bytes: int) -> None:
    """Raise ``NotificationTooLarge`` unless a batch of ``max_bytes`` carries the
    notification (every locale: batches carry it whole) and at least one device."""
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    if short := bytes_short(payload, max_bytes):
        raise NotificationTooLarge(
            f"the notification is {short:,} bytes too large: with "
            f"its envelope and one device it must fit a delivery batch of "
            f"{max_bytes:,} bytes (FANOUT_BATCH_MAX_BYTES, at most 90% of the queue's "
            "MaximumMessageSize); send fewer locales or shorter text"
        )


def request_fingerprint(payload: dict[str, Any], *, topic: str | None, user: str | None) -> bytes:
    """SHA-256 of the request's canonical JSON: what an idempotency key binds.

    ``payload`` is the validated notification without its defaults, so key order,
    whitespace or a field sent with its default value do not make a request different.
    """
    request = {"topic": topic, "user": user, "notification": payload}
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).digest()


async def record_event(
    pool: asyncpg.Pool,
    notification: Notification,
    *,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> Published:
    """Commit the event as pending: to a topic's subscribers or to one user's devices.

    A notification that cannot fit a batch of ``batch_max_bytes`` (capped at 90% of the
    queue's 1 MiB) raises ``NotificationTooLarge``; nothing is written. The event is due
    ``overdue_after`` seconds on: if its fan-out message is not sent by then (the
    publisher died, SQS was down), the reconciler sends it.

    ``api_key_id`` is the idempotency key's scope (None: the internal one). A key used
    before returns that event with ``created=False``, or raises IdempotencyConflict if
    the request differs.
    """
    if (topic is None) == (user is None):
        raise ValueError("an event goes to exactly one of: a topic, a user")
    check_fits_a_batch(notification, max_batch_bytes(batch_max_bytes, MAX_MESSAGE_BYTES))
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    fingerprint = request_fingerprint(payload, topic=topic, user=user) if idempotency_key else None
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await store.find_or_create_topic(conn, topic=topic) if topic else None
        user_id = await store.find_or_create_user(conn, user=user) if user else None
        event_id = await store.insert_event(
            conn,
            topic_id=topic_id,
            user_id=user_id,
            notification=payload,
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            overdue_after=overdue_after,
        )
        if event_id is not None:
            return Published(event_id, created=True)
        # The conflicting row is committed: a concurrent first use made this INSERT wait.
        assert idempotency_key is not None  # only a reused key inserts nothing
        first = await store.event_by_idempotency_key(
            conn, api_key_id=api_key_id, idempotency_key=idempotency_key
        )
    if first is None:  # deleted since (its topic or user was): nothing to return
        raise RuntimeError("the event of this idempotency key was deleted meanwhile")
    if first.request_fingerprint not in (None, fingerprint):
        raise IdempotencyConflict()
    return Published(first.id, created=False)


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
        await store.mark_event_enqueued(conn, event_id=event_id, overdue_after=overdue_after)


async def publish(
    pool: asyncpg.Pool,
    queues: Queues | Callable[[], Awaitable[Queues]],
    notification: Notification,
    *,
    topic: str | None = None,
    user: str | None = None,
    idempotency_key: str | None = None,
    api_key_id: int | None = None,
    enqueue_timeout: float | None = None,
    batch_max_bytes: int = MAX_MESSAGE_BYTES,
    overdue_after: float = DEFAULT_OVERDUE_AFTER,
) -> Published:
    """Record and enqueue an event; the same idempotency key publishes nothing twice.

    ``queues`` may be a coroutine function that opens them: the API opens its queues on
    first use, so that it starts, and commits events, while SQS is down. With
    ``enqueue_timeout`` an enqueue that fails or takes longer is left to the reconciler
    (the event is committed and due, so it is fanned out either way) and the result says
    ``enqueued=False``; without it, the failure is raised. ``batch_max_bytes``
    (FANOUT_BATCH_MAX_BYTES) is capped by the delivery queue's limit when the queues are
    open. Refusals: ``NotificationTooLarge``; idempotency: record_event.
    """
    if isinstance(queues, Queues):
        batch_max_bytes = max_batch_bytes(batch_max_bytes, queues.delivery.max_message_bytes)
    published = await record_event(
        pool,
        notification,
        topic=topic,
        user=user,
        idempotency_key=idempotency_key,
        api_key_id=api_key_id,
        batch_max_bytes=batch_max_bytes,
        overdue_after=overdue_after,
    )
    if not published.created:
        return published
    try:
        async with asyncio.timeout(enqueue_timeout):
            opened = queues if isinstance(queues, Queues) else await queues()
            await enqueue_event(pool, opened, published.event_id, overdue_after=overdue_after)
    except Exception as exc:
        if enqueue_timeout is None:
            raise
        log.warning("event %d committed, enqueue deferred: %r", published.event_id, exc)
        return published
    return replace(published, enqueued=True)
