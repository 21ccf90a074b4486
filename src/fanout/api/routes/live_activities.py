"""Live Activities: register an activity's APNs tokens, publish its updates."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.auth import Manager, Publisher
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, Pool, State
from fanout.metrics import app_label
from fanout.stages.live_activity import publish_update
from fanout.stages.publish import IdempotencyConflict, NotificationTooLarge
from fanout.store import live_activities, subscriptions

router = APIRouter()


@router.post(
    "/v1/live-activities/{activity_id}/tokens",
    status_code=201,
    responses={
        **schemas.problems(401, 403),
        200: {"model": schemas.LiveActivityTokenOut, "description": "Updated"},
    },
)
async def register_live_activity_token(
    activity_id: schemas.ActivityPath,
    body: schemas.LiveActivityTokenIn,
    response: Response,
    key: Manager,
    pool: Pool,
) -> schemas.LiveActivityTokenOut:
    """Register a user's token for the activity: its push token (kind ``activity``), or a
    push-to-start token (kind ``push_to_start``). The same token again updates its row."""
    async with pool.acquire() as conn, conn.transaction():
        # The key's app's activity and user: another app's of the same names are not
        # these (a new activity, a new user of this app, as for names never used).
        activity = await live_activities.find_or_create_activity(
            conn, app_id=key.app_id, activity_key=activity_id
        )
        user_id = await subscriptions.find_or_create_user(
            conn, app_id=key.app_id, user=body.user_id
        )
        topic_id = None
        if body.topic is not None:
            topic_id = await subscriptions.find_or_create_topic(
                conn, app_id=key.app_id, topic=body.topic
            )
        token = await live_activities.upsert_token(
            conn,
            activity_id=activity,
            user_id=user_id,
            kind=body.kind,
            token=body.token.lower(),
            topic_id=topic_id,
            apns_sandbox=body.apns_environment == "sandbox",
        )
    if not token.created:
        response.status_code = 200
    return schemas.LiveActivityTokenOut(id=token.id)


@router.post(
    "/v1/live-activities/{activity_id}/updates",
    status_code=202,
    responses=schemas.problems(401, 403, 409, 429),
)
async def publish_live_activity_update(
    activity_id: schemas.ActivityPath,
    body: schemas.LiveActivityUpdateIn,
    key: Publisher,
    state: State,
) -> schemas.LiveActivityUpdateAccepted:
    """Start, update or end the activity on every device that registered a token for it,
    through the same pipeline as an event (apns-push-type liveactivity). An update still
    queued when a newer one is published may be skipped for the tokens it has not reached
    (``held_back.superseded`` in its status). Idempotency keys work as for events."""
    try:
        done = await publish_update(
            state.pool,
            state.get_queues,
            body.notification(),
            activity_key=activity_id,
            app_id=key.app_id,
            idempotency_key=body.idempotency_key,
            api_key_id=key.id,
            enqueue_timeout=ENQUEUE_TIMEOUT_SECONDS,
            batch_max_bytes=state.settings.batch_max_bytes,
            overdue_after=state.settings.reconcile_after_seconds,
        )
    except NotificationTooLarge as exc:
        raise RequestValidationError(
            [{"type": "too_large", "loc": ["body", "content_state"], "msg": str(exc)}]
        ) from None
    except IdempotencyConflict:
        raise HTTPException(
            409,
            "idempotency_key: this key was already used for a different request (another "
            "activity or update); send a new key for a new request",
        ) from None
    published = done.published
    if published.created:
        state.metrics.published.labels("live_activity", app_label(key.app)).inc()
        if not published.enqueued:
            state.metrics.enqueue_failures.inc()
    return schemas.LiveActivityUpdateAccepted(
        event_id=published.event_id,
        created=published.created,
        timestamp=done.timestamp,
        priority_10_last_hour=done.priority_10_last_hour,
    )
