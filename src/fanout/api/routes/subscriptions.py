"""Subscriptions: a user follows a topic; bulk import; a user's list, paged."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Response

from fanout.api import schemas
from fanout.api.auth import Manager, Reader
from fanout.api.state import Pool
from fanout.store import sources, subscriptions

router = APIRouter()


async def _not_sourced(conn: asyncpg.Connection, app_id: int, topic: str) -> None:
    """409 for a topic whose subscribers are read from a source (issue #25): a subscription
    registered here would never be read."""
    source = await sources.source_of_key(conn, app_id=app_id, key=topic)
    if source is not None:
        raise HTTPException(
            409,
            f"topic {topic!r} comes from the source {source.prefix!r}: its subscribers are "
            "read from the app's own table, so subscriptions to it are not taken",
        )


@router.put(
    "/v1/topics/{topic}/subscribers/{user_id}",
    status_code=204,
    responses=schemas.subscribe_problems(),
)
async def subscribe(
    topic: schemas.TopicPath, user_id: schemas.UserPath, key: Manager, pool: Pool
) -> Response:
    """Subscribe a user to a topic (idempotent; both are created if new); 409 for a topic
    read from a source."""
    async with pool.acquire() as conn, conn.transaction():
        await _not_sourced(conn, key.app_id, topic)
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=key.app_id, topic=topic)
        user = await subscriptions.find_or_create_user(conn, app_id=key.app_id, user=user_id)
        await subscriptions.subscribe(conn, topic_id=topic_id, user_id=user)
    return Response(status_code=204)


@router.delete(
    "/v1/topics/{topic}/subscribers/{user_id}",
    status_code=204,
    responses=schemas.problems(401, 403),
)
async def unsubscribe(
    topic: schemas.TopicPath, user_id: schemas.UserPath, key: Manager, pool: Pool
) -> Response:
    """Unsubscribe (idempotent: unsubscribing twice is not an error)."""
    async with pool.acquire() as conn:
        await subscriptions.unsubscribe(conn, app_id=key.app_id, topic=topic, user=user_id)
    return Response(status_code=204)


@router.post(
    "/v1/topics/{topic}/subscribers",
    responses=schemas.subscribe_problems(),
)
async def bulk_subscribe(
    topic: schemas.TopicPath, body: schemas.BulkSubscribeIn, key: Manager, pool: Pool
) -> schemas.BulkSubscribeOut:
    """Subscribe up to 50,000 users in one request: two statements, whatever the count."""
    # Sorted, so concurrent imports lock rows in the same order and never deadlock.
    user_ids = sorted(set(body.user_ids))
    async with pool.acquire() as conn, conn.transaction():
        await _not_sourced(conn, key.app_id, topic)
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=key.app_id, topic=topic)
        await subscriptions.insert_users(conn, app_id=key.app_id, users=user_ids)
        added = await subscriptions.subscribe_users(
            conn, app_id=key.app_id, topic_id=topic_id, users=user_ids
        )
    return schemas.BulkSubscribeOut(requested=len(body.user_ids), added=added)


@router.get(
    "/v1/users/{user_id}/subscriptions",
    responses=schemas.problems(401, 403),
)
async def list_subscriptions(
    user_id: schemas.UserPath,
    key: Reader,
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
) -> schemas.SubscriptionPage:
    """A user's subscriptions, a page at a time (keyset: pass ``next_cursor`` back)."""
    after = min(int(cursor), 2**63 - 1) if cursor else 0
    async with pool.acquire() as conn:
        page = await subscriptions.user_subscriptions_page(
            conn, app_id=key.app_id, user=user_id, after_topic_id=after, limit=limit
        )
    items = [schemas.SubscriptionOut(topic=s.topic, subscribed_at=s.subscribed_at) for s in page]
    next_cursor = str(page[-1].topic_id) if len(page) == limit else None
    return schemas.SubscriptionPage(items=items, next_cursor=next_cursor)
