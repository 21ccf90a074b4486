"""Personalised sends in bulk: up to 1,000 (user, notification) pairs in one request.

Each item is an event of its own (its own status, idempotency key, cancel), validated on
its own: a bad item is refused by its index with the field named, and the good ones are
accepted. The items not held are committed in one transaction and enqueued together
(stages/group_commit.py); a held one (``send_at``, ``deliver_at_local``) is recorded as a
single publish is, and released by the reconciler.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from fanout.api import schemas
from fanout.api.auth import Publisher
from fanout.api.routes.events import IDEMPOTENCY_CONFLICT, critical_refused, refusal
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, ApiState, State
from fanout.errors import FanoutError
from fanout.stages.group_commit import GroupCommitClosed, groupable
from fanout.stages.publish import (
    IdempotencyConflict,
    InvalidPublishOption,
    NotificationTooLarge,
    Published,
    prepare_event,
    publish,
)
from fanout.store.lifecycle import NewEvent

router = APIRouter()


@router.post(
    "/v1/notifications/batch",
    status_code=202,
    responses=schemas.problems(401, 403, 429),
)
async def notify_users(
    body: schemas.NotificationBatchIn, key: Publisher, state: State
) -> schemas.NotificationBatchAccepted:
    """Up to 1,000 1:1 sends, each its own event (as ``POST /v1/users/{user_id}/notifications``).

    Answered with a result per item, in order: its ``event_id`` (and ``created``: false when
    its idempotency key named an earlier event), or its ``errors``, each naming the item's
    index and field (``["body", "items", 3, "notification", "title"]``); the other items
    stand. 202 if any item was accepted; 422 if none was.
    """
    items: Any = body.items
    if not isinstance(items, list) or not 1 <= len(items) <= schemas.MAX_NOTIFICATION_BATCH:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ["body", "items"],
                    "msg": f"must be a list of 1 to {schemas.MAX_NOTIFICATION_BATCH:,} items",
                }
            ]
        )
    results: list[schemas.BatchItemResult | None] = [None] * len(items)
    grouped: list[tuple[int, NewEvent]] = []
    held: list[tuple[int, schemas.BatchNotificationIn]] = []
    limit = state.batch_max_bytes()
    for index, raw in enumerate(items):
        at: tuple[str | int, ...] = ("body", "items", index)
        try:
            item = schemas.BatchNotificationIn.model_validate(raw)
        except ValidationError as exc:
            results[index] = _refused(
                [
                    {"type": e["type"], "loc": [*at, *e["loc"]], "msg": e["msg"]}
                    for e in exc.errors(include_url=False, include_input=False)
                ]
            )
            continue
        if (problem := critical_refused(state, item.notification)) is not None:
            results[index] = _refused([{**problem, "loc": [*at, *problem["loc"][1:]]}])
            continue
        options = item.options()
        if not groupable(options):
            held.append((index, item))
            continue
        try:
            grouped.append(
                (
                    index,
                    prepare_event(
                        item.notification,
                        app_id=key.app_id,
                        user=item.user_id,
                        idempotency_key=item.idempotency_key,
                        api_key_id=key.id,
                        batch_max_bytes=limit,
                        options=options,
                    ),
                )
            )
        except (NotificationTooLarge, InvalidPublishOption) as exc:
            results[index] = _refused([refusal(exc, at)])
    if grouped:
        if state.group_commit is None:
            raise GroupCommitClosed("the API is not serving")
        outcomes = await state.group_commit.publish_many([event for _, event in grouped])
        for (index, _), outcome in zip(grouped, outcomes, strict=True):
            results[index] = _result(outcome, ("body", "items", index))
    for index, item in held:
        results[index] = await _record_held(state, key.app_id, key.id, index, item)
    done = [result for result in results if result is not None]
    accepted = sum(1 for result in done if result.event_id is not None)
    created = sum(1 for result in done if result.created)
    if accepted == 0:
        raise RequestValidationError(
            [problem.model_dump() for result in done for problem in result.errors or ()]
        )
    state.metrics.published.labels("user").inc(created)
    return schemas.NotificationBatchAccepted(
        accepted=accepted, refused=len(done) - accepted, results=done
    )


def _refused(problems: list[dict[str, Any]]) -> schemas.BatchItemResult:
    return schemas.BatchItemResult(errors=[schemas.ItemProblem(**p) for p in problems])


def _result(outcome: Published | FanoutError, at: tuple[str | int, ...]) -> schemas.BatchItemResult:
    if isinstance(outcome, Published):
        return schemas.BatchItemResult(event_id=outcome.event_id, created=outcome.created)
    if isinstance(outcome, IdempotencyConflict):
        return _refused(
            [{"type": "conflict", "loc": [*at, "idempotency_key"], "msg": IDEMPOTENCY_CONFLICT}]
        )
    # Never the database's words: they may quote the value.
    return _refused([{"type": "refused", "loc": list(at), "msg": "could not be recorded"}])


async def _record_held(
    state: ApiState, app_id: int, api_key_id: int, index: int, item: schemas.BatchNotificationIn
) -> schemas.BatchItemResult:
    """A held item (send_at, deliver_at_local): published as a single publish is (the
    reconciler releases it; a send_at already past is enqueued now)."""
    at = ("body", "items", index)
    try:
        published = await publish(
            state.pool,
            state.get_queues,
            item.notification,
            app_id=app_id,
            user=item.user_id,
            idempotency_key=item.idempotency_key,
            api_key_id=api_key_id,
            enqueue_timeout=ENQUEUE_TIMEOUT_SECONDS,
            batch_max_bytes=state.settings.batch_max_bytes,
            overdue_after=state.settings.reconcile_after_seconds,
            options=item.options(),
            default_time_zone=state.settings.default_time_zone,
        )
    except (NotificationTooLarge, InvalidPublishOption) as exc:
        return _refused([refusal(exc, at)])
    except IdempotencyConflict as exc:
        return _result(exc, at)
    return _result(published, at)
