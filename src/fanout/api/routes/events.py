"""Events: publish to a topic, send 1:1 to a user, read an event's progress."""

from __future__ import annotations

import asyncpg
from fastapi import APIRouter, HTTPException

from fanout.api import schemas
from fanout.api.auth import READ, Publisher
from fanout.api.keys import ApiKey
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, ApiState, Pool, State
from fanout.notification import Notification
from fanout.stages.publish import IdempotencyConflict, publish
from fanout.store import queries

router = APIRouter()

PUBLISH_PROBLEMS = schemas.problems(401, 403, 409, 429)


@router.post("/v1/events", status_code=202, responses=PUBLISH_PROBLEMS)
async def publish_event(
    body: schemas.EventIn, key: Publisher, state: State
) -> schemas.EventAccepted:
    """Publish to a topic's subscribers.

    An idempotency key is this API key's own: the same key with the same request
    returns the first event (202, ``created: false``); with a different request, 409.
    """
    return await _publish(state, key, body.notification, body.idempotency_key, topic=body.topic)


@router.post(
    "/v1/users/{user_id}/notifications",
    status_code=202,
    responses=PUBLISH_PROBLEMS,
)
async def notify_user(
    user_id: schemas.UserPath, body: schemas.DirectNotificationIn, key: Publisher, state: State
) -> schemas.EventAccepted:
    """A 1:1 send to all of one user's devices, through the same delivery stage.

    Idempotency keys work as for ``POST /v1/events``.
    """
    return await _publish(state, key, body.notification, body.idempotency_key, user=user_id)


async def _publish(
    state: ApiState,
    key: ApiKey,
    notification: Notification,
    idempotency_key: str | None,
    *,
    topic: str | None = None,
    user: str | None = None,
) -> schemas.EventAccepted:
    """Commit the event, then try to enqueue it; if SQS is down the outbox sweeper will."""
    try:
        published = await publish(
            state.pool,
            state.get_queues,
            notification,
            topic=topic,
            user=user,
            idempotency_key=idempotency_key,
            api_key_id=key.id,
            enqueue_timeout=ENQUEUE_TIMEOUT_SECONDS,
        )
    except IdempotencyConflict:
        # Names the field, never its value nor the first request.
        raise HTTPException(
            409,
            "idempotency_key: this key was already used for a different request (another "
            "topic, user or notification); send a new key for a new request",
        ) from None
    if published.created:
        state.metrics.published.labels("topic" if topic else "user").inc()
        if not published.enqueued:
            state.metrics.enqueue_failures.inc()
    return schemas.EventAccepted(event_id=published.event_id, created=published.created)


@router.get("/v1/events/{event_id}", dependencies=[READ], responses=schemas.problems(401, 403, 404))
async def event_status(event_id: schemas.RowIdPath, pool: Pool) -> schemas.EventStatus:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(queries.EVENT_PROGRESS, event_id)
    if row is None:
        raise HTTPException(404, "no such event")
    return _status_of(row)


def _status_of(row: asyncpg.Record) -> schemas.EventStatus:
    done = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
    pending = max(0, row["devices"] - done)
    delivered = row["status"] == "fanned_out" and pending == 0
    return schemas.EventStatus(
        event_id=row["id"],
        status="delivered" if delivered else row["status"],
        recipients=row["recipients"],
        devices=row["devices"],
        sent=row["sent"],
        failed=row["failed"],
        invalid=row["invalid"],
        skipped=row["skipped"],
        pending=pending,
        started_at=row["created_at"],
        fanned_out_at=row["fanned_out_at"],
        finished_at=(row["last_finished_at"] or row["fanned_out_at"]) if delivered else None,
    )
