"""Events: publish to a topic, send 1:1 to a user, read an event's progress, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.auth import Canceller, Publisher, Reader
from fanout.api.keys import ApiKey
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, ApiState, Pool, State
from fanout.metrics import app_label
from fanout.notification import CRITICAL_NOT_ALLOWED, Notification, critical_asked
from fanout.stages.group_commit import groupable
from fanout.stages.progress import EventStatus, load_event_status
from fanout.stages.publish import (
    IdempotencyConflict,
    InvalidPublishOption,
    NotificationTooLarge,
    PublishOptions,
    TooLateToCancel,
    cancel,
    prepare_event,
    publish,
)
from fanout.store import apps

router = APIRouter()

PUBLISH_PROBLEMS = schemas.problems(401, 403, 409, 429)


@router.post("/v1/events", status_code=202, responses=PUBLISH_PROBLEMS)
async def publish_event(
    body: schemas.EventIn, key: Publisher, state: State
) -> schemas.EventAccepted:
    """Publish to a topic's subscribers, or with a ``filter`` and no topic to every user of
    the app whose tags match it (those left out are counted ``held_back.filtered``).

    An idempotency key is this API key's own: the same key with the same request
    returns the first event (202, ``created: false``); with a different request, 409.
    """
    if body.topic is None and body.filter is None:
        raise RequestValidationError(
            [
                {
                    "type": "missing",
                    "loc": ["body", "topic"],
                    "msg": "a topic is needed, or a filter alone (every user of the app whose "
                    "tags match it)",
                }
            ]
        )
    return await _publish(
        state, key, body.notification, body.idempotency_key, body.options(), topic=body.topic
    )


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
    return await _publish(
        state, key, body.notification, body.idempotency_key, body.options(), user=user_id
    )


async def _publish(
    state: ApiState,
    key: ApiKey,
    notification: Notification,
    idempotency_key: str | None,
    options: PublishOptions,
    *,
    topic: str | None = None,
    user: str | None = None,
) -> schemas.EventAccepted:
    """Commit the event, then try to enqueue it; if SQS is down the reconciler will. An
    event not held is committed with the publishes arriving meanwhile (group commit)."""
    if (where := await critical_refused(state, key.app_id, notification)) is not None:
        raise RequestValidationError([where])
    try:
        if groupable(options) and state.group_commit is not None:
            published = await state.group_commit.publish(
                prepare_event(
                    notification,
                    app_id=key.app_id,
                    topic=topic,
                    user=user,
                    idempotency_key=idempotency_key,
                    api_key_id=key.id,
                    batch_max_bytes=state.batch_max_bytes(),
                    options=options,
                )
            )
        else:
            published = await publish(
                state.pool,
                state.get_queues,
                notification,
                app_id=key.app_id,
                topic=topic,
                user=user,
                idempotency_key=idempotency_key,
                api_key_id=key.id,
                enqueue_timeout=ENQUEUE_TIMEOUT_SECONDS,
                batch_max_bytes=state.settings.batch_max_bytes,
                overdue_after=state.settings.reconcile_after_seconds,
                options=options,
                default_time_zone=state.settings.default_time_zone,
            )
            if published.created and not published.enqueued and published.held_until is None:
                state.metrics.enqueue_failures.inc()
    except IdempotencyConflict:
        # Names the field, never its value nor the first request.
        raise HTTPException(409, IDEMPOTENCY_CONFLICT) from None
    except (NotificationTooLarge, InvalidPublishOption) as exc:
        raise RequestValidationError([refusal(exc, ("body",))]) from None
    if published.created:
        audience = "topic" if topic else "user" if user else "app"
        state.metrics.published.labels(audience, app_label(key.app)).inc()
    return schemas.EventAccepted(event_id=published.event_id, created=published.created)


IDEMPOTENCY_CONFLICT = (
    "idempotency_key: this key was already used for a different request (another "
    "topic, user or notification); send a new key for a new request"
)


async def critical_refused(
    state: ApiState, app_id: int, notification: Notification
) -> dict[str, Any] | None:
    """The problem of a critical alert the app may not publish, else None (its own
    allow_critical, else the deployment's FANOUT_APNS_ALLOW_CRITICAL)."""
    where = critical_asked(notification)
    if where is None or await critical_allowed(state, app_id):
        return None
    return {
        "type": "value_error",
        "loc": ["body", "notification", *where],
        "msg": CRITICAL_NOT_ALLOWED,
    }


async def critical_allowed(state: ApiState, app_id: int) -> bool:
    """Whether the app may publish critical alerts: read only when one is asked for."""
    async with state.pool.acquire() as conn:
        return await apps.allows_critical(
            conn, app_id=app_id, default=state.settings.apns_allow_critical
        )


def refusal(
    exc: NotificationTooLarge | InvalidPublishOption, at: tuple[str | int, ...]
) -> dict[str, Any]:
    """A publish refusal as a 422 problem, its loc under ``at``."""
    if isinstance(exc, NotificationTooLarge):
        return {"type": "too_large", "loc": [*at, "notification"], "msg": str(exc)}
    return {"type": "value_error", "loc": [*at, exc.field], "msg": exc.message}


@router.get("/v1/events/{event_id}", responses=schemas.problems(401, 403, 404))
async def event_status(event_id: schemas.RowIdPath, key: Reader, pool: Pool) -> EventStatus:
    """The event's state (terminal once it has ended) and its counts by outcome; the same
    fields as ``fanout status``. Another app's event is a 404, as one that never was."""
    found = await load_event_status(pool, event_id, app_id=key.app_id)
    if found is None:
        raise HTTPException(404, "no such event")
    return found


@router.post("/v1/events/{event_id}/cancel", responses=schemas.cancel_problems())
async def cancel_event(event_id: schemas.RowIdPath, key: Canceller, pool: Pool) -> EventStatus:
    """Stop the event: nothing more is fanned out (a fan-out under way stops at its next
    page) and no batch not yet sent is sent (each is checked as it is claimed). Answers
    with its status: ``cancelled`` at once if it had not started, else once the work in
    flight has stopped (``held_back.cancelled`` counts what was not sent). Cancelling
    again does nothing; an event that has already ended otherwise is a 409."""
    try:
        found = await cancel(pool, event_id, app_id=key.app_id)
    except TooLateToCancel as exc:
        raise HTTPException(409, str(exc)) from None
    status = None if found is None else await load_event_status(pool, event_id, app_id=key.app_id)
    if status is None:
        raise HTTPException(404, "no such event")
    return status
