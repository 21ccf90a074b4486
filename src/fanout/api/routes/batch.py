"""Personalised sends in bulk: up to 1,000 (user, notification) pairs in one request.

Each item is an event of its own (its own status, idempotency key, cancel), validated on
its own: a bad item is refused by its index with the field named, and the good ones are
accepted. The items not held are committed in one transaction and enqueued together
(stages/group_commit.py); a held one (``send_at``, ``deliver_at_local``) is recorded as a
single publish is, and released by the reconciler.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from fanout.api import schemas
from fanout.api.auth import Publisher
from fanout.api.routes.events import IDEMPOTENCY_CONFLICT, critical_allowed, refusal
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, ApiState, State
from fanout.errors import FanoutError
from fanout.metrics import app_label
from fanout.notification import CRITICAL_NOT_ALLOWED, critical_asked
from fanout.stages.group_commit import GroupCommit, GroupCommitClosed, groupable
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
    response_model=schemas.NotificationBatchAccepted,
    responses=schemas.problems(401, 403, 429),
)
async def notify_users(body: schemas.NotificationBatchIn, key: Publisher, state: State) -> Response:
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
    if state.group_commit is None:
        raise GroupCommitClosed("the API is not serving")
    done = await publish_items(
        items,
        group=state.group_commit,
        publish_one=functools.partial(_publish_held, state),
        app_id=key.app_id,
        api_key_id=key.id,
        batch_max_bytes=state.batch_max_bytes(),
        allow_critical=functools.partial(critical_allowed, state, key.app_id),
    )
    accepted = sum(1 for result in done if result.event_id is not None)
    created = sum(1 for result in done if result.created)
    if accepted == 0:
        raise RequestValidationError(
            [problem.model_dump() for result in done for problem in result.errors or ()]
        )
    state.metrics.published.labels("user", app_label(key.app)).inc(created)
    return Response(
        _answer(accepted, len(done) - accepted, done),
        status_code=202,
        media_type="application/json",
    )


@dataclass(slots=True)
class ItemResult:
    """One item's ``BatchItemResult``, as a plain object: a model per item (validated or
    constructed) cost more than its event's share of the group commit (issue #26)."""

    event_id: int | None = None
    created: bool | None = None
    errors: list[schemas.ItemProblem] | None = None


def _answer(accepted: int, refused: int, done: list[ItemResult]) -> bytes:
    """``NotificationBatchAccepted`` as JSON, as FastAPI would write it from the model, at a
    fraction of the cost (a model and its serialization per item were a tenth of a 1,000-item
    request's time, issue #26). tests/api/test_batch.py holds it to the model."""
    return orjson.dumps(
        {
            "accepted": accepted,
            "refused": refused,
            # orjson writes a dataclass as an object of its fields, in order: only an item
            # with errors (pydantic models, which it does not write) is made a dict.
            "results": [
                result
                if result.errors is None
                else {
                    "event_id": result.event_id,
                    "created": result.created,
                    "errors": [{"loc": p.loc, "msg": p.msg, "type": p.type} for p in result.errors],
                }
                for result in done
            ],
        }
    )


def _refused(problems: list[dict[str, Any]]) -> ItemResult:
    return ItemResult(errors=[schemas.ItemProblem(**p) for p in problems])


def _result(outcome: Published | FanoutError, at: tuple[str | int, ...]) -> ItemResult:
    if isinstance(outcome, Published):
        return ItemResult(event_id=outcome.event_id, created=outcome.created)
    if isinstance(outcome, IdempotencyConflict):
        return _refused(
            [{"type": "conflict", "loc": [*at, "idempotency_key"], "msg": IDEMPOTENCY_CONFLICT}]
        )
    # Never the database's words: they may quote the value.
    return _refused([{"type": "refused", "loc": list(at), "msg": "could not be recorded"}])


PublishOne = Callable[[int, int | None, schemas.BatchNotificationIn], Awaitable[Published]]


async def publish_items(
    items: Sequence[Any],
    *,
    group: GroupCommit,
    publish_one: PublishOne,
    app_id: int,
    api_key_id: int | None,
    batch_max_bytes: int,
    allow_critical: Callable[[], Awaitable[bool]],
    at: tuple[str | int, ...] = ("body", "items"),
) -> list[ItemResult]:
    """Validate each item (``BatchNotificationIn``), commit the good ones not held as one
    group, and the held ones through ``publish_one``; a result per item, in order, its
    problems located at ``at`` + its index (the CLI's ``--batch`` passes its own).
    ``allow_critical`` says whether the app may publish critical alerts: asked once, and
    only if an item asks for one."""
    allowed: bool | None = None
    results: list[ItemResult | None] = [None] * len(items)
    grouped: list[tuple[int, NewEvent]] = []
    held: list[tuple[int, schemas.BatchNotificationIn]] = []
    now = datetime.now(UTC)  # one clock reading for the batch's expires_at checks
    validate = schemas.BatchNotificationIn.model_validate
    for index, raw in enumerate(items):
        try:
            item = validate(raw)
        except ValidationError as exc:
            where = (*at, index)
            results[index] = _refused(
                [
                    {"type": e["type"], "loc": [*where, *e["loc"]], "msg": e["msg"]}
                    for e in exc.errors(include_url=False, include_input=False)
                ]
            )
            continue
        if (asked := critical_asked(item.notification)) is not None and allowed is None:
            allowed = await allow_critical()
        if asked is not None and not allowed:
            results[index] = _refused(
                [
                    {
                        "type": "value_error",
                        "loc": [*at, index, "notification", *asked],
                        "msg": CRITICAL_NOT_ALLOWED,
                    }
                ]
            )
            continue
        options = item.plain_options() or item.options()
        if not groupable(options):
            held.append((index, item))
            continue
        try:
            new_event = prepare_event(
                item.notification,
                app_id=app_id,
                user=item.user_id,
                idempotency_key=item.idempotency_key,
                api_key_id=api_key_id,
                batch_max_bytes=batch_max_bytes,
                options=options,
                now=now,
            )
        except (NotificationTooLarge, InvalidPublishOption) as exc:
            results[index] = _refused([refusal(exc, (*at, index))])
            continue
        grouped.append((index, new_event))
    if grouped:
        outcomes = await group.publish_many([event for _, event in grouped])
        for (index, _), outcome in zip(grouped, outcomes, strict=True):
            results[index] = _result(outcome, (*at, index))
    for index, item in held:
        where = (*at, index)
        try:
            results[index] = _result(await publish_one(app_id, api_key_id, item), where)
        except (NotificationTooLarge, InvalidPublishOption) as exc:
            results[index] = _refused([refusal(exc, where)])
        except IdempotencyConflict as exc:
            results[index] = _result(exc, where)
    return [result for result in results if result is not None]


async def _publish_held(
    state: ApiState, app_id: int, api_key_id: int | None, item: schemas.BatchNotificationIn
) -> Published:
    """A held item (send_at, deliver_at_local): published as a single publish is (the
    reconciler releases it; a send_at already past is enqueued now)."""
    return await publish(
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
