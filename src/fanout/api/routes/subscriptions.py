"""Subscriptions: a user follows a topic; bulk import; a user's list, paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from fanout.api import schemas
from fanout.api.auth import MANAGE, READ
from fanout.api.state import Pool
from fanout.store import find_or_create, queries

router = APIRouter()


@router.put(
    "/v1/topics/{topic}/subscribers/{user_id}",
    status_code=204,
    dependencies=[MANAGE],
    responses=schemas.problems(401, 403),
)
async def subscribe(topic: schemas.TopicPath, user_id: schemas.UserPath, pool: Pool) -> Response:
    """Subscribe a user to a topic (idempotent; both are created if new)."""
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic)
        user = await find_or_create(conn, queries.UPSERT_USER, user_id)
        await conn.execute(queries.SUBSCRIBE, topic_id, user)
    return Response(status_code=204)


@router.delete(
    "/v1/topics/{topic}/subscribers/{user_id}",
    status_code=204,
    dependencies=[MANAGE],
    responses=schemas.problems(401, 403),
)
async def unsubscribe(topic: schemas.TopicPath, user_id: schemas.UserPath, pool: Pool) -> Response:
    """Unsubscribe (idempotent: unsubscribing twice is not an error)."""
    async with pool.acquire() as conn:
        await conn.execute(queries.UNSUBSCRIBE, topic, user_id)
    return Response(status_code=204)


@router.post(
    "/v1/topics/{topic}/subscribers",
    dependencies=[MANAGE],
    responses=schemas.problems(401, 403),
)
async def bulk_subscribe(
    topic: schemas.TopicPath, body: schemas.BulkSubscribeIn, pool: Pool
) -> schemas.BulkSubscribeOut:
    """Subscribe up to 50,000 users in one request: two statements, whatever the count."""
    # Sorted, so concurrent imports lock rows in the same order and never deadlock.
    user_ids = sorted(set(body.user_ids))
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic)
        await conn.execute(queries.BULK_INSERT_USERS, user_ids)
        status = await conn.execute(queries.BULK_SUBSCRIBE, topic_id, user_ids)
    return schemas.BulkSubscribeOut(requested=len(body.user_ids), added=int(status.split()[-1]))


@router.get(
    "/v1/users/{user_id}/subscriptions",
    dependencies=[READ],
    responses=schemas.problems(401, 403),
)
async def list_subscriptions(
    user_id: schemas.UserPath,
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
) -> schemas.SubscriptionPage:
    """A user's subscriptions, a page at a time (keyset: pass ``next_cursor`` back)."""
    after = min(int(cursor), 2**63 - 1) if cursor else 0
    async with pool.acquire() as conn:
        rows = await conn.fetch(queries.USER_SUBSCRIPTIONS_PAGE, user_id, after, limit)
    items = [schemas.SubscriptionOut(topic=r["key"], subscribed_at=r["created_at"]) for r in rows]
    next_cursor = str(rows[-1]["topic_id"]) if len(rows) == limit else None
    return schemas.SubscriptionPage(items=items, next_cursor=next_cursor)
