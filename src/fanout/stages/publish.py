"""Publishing an event: write it, then hand it to the fan-out queue (a transactional outbox).

The event row is committed as 'pending' before its message is sent. If the process
dies in between, the outbox sweeper (run by every worker) finds the pending event
and sends its message; fan-out is idempotent, so sending twice is harmless.

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

from fanout.notification import Notification
from fanout.queue.messages import FanoutTask
from fanout.queue.sqs import Queues
from fanout.store import find_or_create, queries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    event_id: int
    created: bool  # False: the idempotency key named an event published before
    enqueued: bool = False  # False: not sent now (an earlier event, or left to the sweeper)


class IdempotencyConflict(ValueError):
    """The idempotency key was used before, in the same scope, for a different request."""

    def __init__(self) -> None:
        super().__init__(
            "the idempotency key was already used for a different request (another topic, "
            "user or notification); use a new key for a new request"
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
) -> Published:
    """Commit the event as pending: to a topic's subscribers or to one user's devices.

    ``api_key_id`` is the idempotency key's scope (None: the internal one). A key used
    before returns that event with ``created=False``, or raises IdempotencyConflict if
    the request differs.
    """
    if (topic is None) == (user is None):
        raise ValueError("an event goes to exactly one of: a topic, a user")
    payload = notification.model_dump(mode="json", exclude_defaults=True)
    fingerprint = request_fingerprint(payload, topic=topic, user=user) if idempotency_key else None
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic) if topic else None
        user_id = await find_or_create(conn, queries.UPSERT_USER, user) if user else None
        event_id = await conn.fetchval(
            queries.INSERT_EVENT,
            topic_id,
            user_id,
            payload,
            api_key_id,
            idempotency_key,
            fingerprint,
        )
        if event_id is not None:
            return Published(event_id, created=True)
        # The conflicting row is committed: a concurrent first use made this INSERT wait.
        first = await conn.fetchrow(queries.EVENT_BY_IDEMPOTENCY_KEY, api_key_id, idempotency_key)
    if first is None:  # deleted since (its topic or user was): nothing to return
        raise RuntimeError("the event of this idempotency key was deleted meanwhile")
    if first["request_fingerprint"] not in (None, fingerprint):
        raise IdempotencyConflict()
    return Published(first["id"], created=False)


async def enqueue_event(pool: asyncpg.Pool, queues: Queues, event_id: int) -> None:
    """Send the event's fan-out message and mark it enqueued."""
    await queues.fanout.send(FanoutTask(event_id).encode())
    async with pool.acquire() as conn:
        await conn.execute(queries.MARK_EVENT_ENQUEUED, event_id)


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
) -> Published:
    """Record and enqueue an event; the same idempotency key publishes nothing twice.

    ``queues`` may be a coroutine function that opens them: the API opens its queues on
    first use, so that it starts, and commits events, while SQS is down. With
    ``enqueue_timeout`` an enqueue that fails or takes longer is left to the outbox
    sweeper (the event is committed, so it is fanned out either way) and the result says
    ``enqueued=False``; without it, the failure is raised. Idempotency: record_event.
    """
    published = await record_event(
        pool,
        notification,
        topic=topic,
        user=user,
        idempotency_key=idempotency_key,
        api_key_id=api_key_id,
    )
    if not published.created:
        return published
    try:
        async with asyncio.timeout(enqueue_timeout):
            opened = queues if isinstance(queues, Queues) else await queues()
            await enqueue_event(pool, opened, published.event_id)
    except Exception as exc:
        if enqueue_timeout is None:
            raise
        log.warning("event %d committed, enqueue deferred: %r", published.event_id, exc)
        return published
    return replace(published, enqueued=True)


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
