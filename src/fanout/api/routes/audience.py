"""Audience controls: a user's preferences (time zone, quiet hours, opt-outs), in bulk
too; topic mutes; frequency caps. The fan-out applies them (store/fragments.AUDIENCE_RULES).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Response

from fanout.api import schemas
from fanout.api.auth import Manager, Reader
from fanout.api.state import Pool
from fanout.store import audience, subscriptions

router = APIRouter()


def _preferences(user: str, body: schemas.PreferencesIn) -> audience.Preferences:
    quiet_start, quiet_end = schemas.quiet_window(body.quiet_hours)
    return audience.Preferences(
        user=user,
        time_zone=body.time_zone,
        quiet_start=quiet_start,
        quiet_end=quiet_end,
        opted_out=body.opted_out,
        opted_out_categories=tuple(sorted(set(body.opted_out_categories))),
    )


@router.put(
    "/v1/users/{user_id}/preferences",
    status_code=204,
    responses=schemas.problems(401, 403),
)
async def put_preferences(
    user_id: schemas.UserPath, body: schemas.PreferencesIn, key: Manager, pool: Pool
) -> Response:
    """Replace a user's settings (the user is created if new)."""
    async with pool.acquire() as conn, conn.transaction():
        await subscriptions.insert_users(conn, app_id=key.app_id, users=[user_id])
        await audience.upsert_preferences(
            conn, app_id=key.app_id, preferences=[_preferences(user_id, body)]
        )
    return Response(status_code=204)


@router.get(
    "/v1/users/{user_id}/preferences",
    responses=schemas.problems(401, 403, 404),
)
async def get_preferences(
    user_id: schemas.UserPath, key: Reader, pool: Pool
) -> schemas.PreferencesOut:
    """A user's settings (the defaults where none are set) and the topics muted now."""
    async with pool.acquire() as conn:
        found = await audience.user_preferences(conn, app_id=key.app_id, user=user_id)
    if found is None:
        raise HTTPException(404, "no such user")
    quiet = None
    if found.quiet_start is not None and found.quiet_end is not None:
        quiet = f"{found.quiet_start:%H:%M}-{found.quiet_end:%H:%M}"
    return schemas.PreferencesOut(
        user_id=user_id,
        time_zone=found.time_zone,
        quiet_hours=quiet,
        opted_out=found.opted_out,
        opted_out_categories=found.opted_out_categories,
        mutes=[schemas.MuteOut.model_validate(m) for m in found.mutes],
    )


@router.put(
    "/v1/users/{user_id}/tags",
    status_code=204,
    responses=schemas.problems(401, 403),
)
async def put_tags(
    user_id: schemas.UserPath, body: schemas.TagsIn, key: Manager, pool: Pool
) -> Response:
    """Replace a user's tags (the user is created if new); a publish's filter targets them."""
    async with pool.acquire() as conn:
        await subscriptions.put_user_tags(conn, app_id=key.app_id, user=user_id, tags=body.root)
    return Response(status_code=204)


@router.get(
    "/v1/users/{user_id}/tags",
    responses=schemas.problems(401, 403, 404),
)
async def get_tags(user_id: schemas.UserPath, key: Reader, pool: Pool) -> schemas.TagsOut:
    """A user's tags."""
    async with pool.acquire() as conn:
        tags = await subscriptions.user_tags(conn, app_id=key.app_id, user=user_id)
    if tags is None:
        raise HTTPException(404, "no such user")
    return schemas.TagsOut(user_id=user_id, tags=tags)


@router.post(
    "/v1/preferences",
    responses=schemas.problems(401, 403),
)
async def bulk_preferences(
    body: schemas.BulkPreferencesIn, key: Manager, pool: Pool
) -> schemas.BulkPreferencesOut:
    """Replace the settings of up to 10,000 users in one request (two statements); a user
    named twice gets the last of their items."""
    by_user = {item.user_id: item for item in body.items}
    users = sorted(by_user)  # one lock order for concurrent imports: no deadlock
    async with pool.acquire() as conn, conn.transaction():
        await subscriptions.insert_users(conn, app_id=key.app_id, users=users)
        updated = await audience.upsert_preferences(
            conn,
            app_id=key.app_id,
            preferences=[_preferences(user, by_user[user]) for user in users],
        )
    return schemas.BulkPreferencesOut(requested=len(body.items), updated=updated)


@router.put(
    "/v1/users/{user_id}/mutes/{topic}",
    status_code=204,
    responses=schemas.problems(401, 403),
)
async def mute_topic(
    user_id: schemas.UserPath,
    topic: schemas.TopicPath,
    key: Manager,
    pool: Pool,
    body: Annotated[schemas.MuteIn | None, Body()] = None,
) -> Response:
    """Mute a topic for a user, until a time or until unmuted; muting again moves it."""
    async with pool.acquire() as conn, conn.transaction():
        topic_id = await subscriptions.find_or_create_topic(conn, app_id=key.app_id, topic=topic)
        user = await subscriptions.find_or_create_user(conn, app_id=key.app_id, user=user_id)
        until = body.until if body is not None else None
        await audience.mute_topic(conn, user_id=user, topic_id=topic_id, until=until)
    return Response(status_code=204)


@router.delete(
    "/v1/users/{user_id}/mutes/{topic}",
    status_code=204,
    responses=schemas.problems(401, 403),
)
async def unmute_topic(
    user_id: schemas.UserPath, topic: schemas.TopicPath, key: Manager, pool: Pool
) -> Response:
    """Unmute (idempotent)."""
    async with pool.acquire() as conn:
        await audience.unmute_topic(conn, app_id=key.app_id, topic=topic, user=user_id)
    return Response(status_code=204)


def _cap_out(cap: audience.FrequencyCap) -> schemas.FrequencyCapOut:
    return schemas.FrequencyCapOut(
        category=cap.category,
        max=cap.max_sends,
        window_seconds=cap.window_seconds,
        updated_at=cap.updated_at,
    )


@router.get("/v1/frequency-caps", responses=schemas.problems(401, 403))
async def list_frequency_caps(key: Reader, pool: Pool) -> list[schemas.FrequencyCapOut]:
    """Every frequency cap of this key's app."""
    async with pool.acquire() as conn:
        caps = await audience.list_frequency_caps(conn, app_id=key.app_id)
    return [_cap_out(cap) for cap in caps]


@router.put(
    "/v1/frequency-caps/{category}",
    status_code=201,
    responses={
        **schemas.problems(401, 403),
        200: {"model": schemas.FrequencyCapOut, "description": "Updated"},
    },
)
async def put_frequency_cap(
    category: schemas.CapCategoryPath,
    body: schemas.FrequencyCapIn,
    response: Response,
    key: Manager,
    pool: Pool,
) -> schemas.FrequencyCapOut:
    """At most ``max`` pushes of this category (``*``: of any) per user in any
    ``window_seconds``; a user at the cap is skipped for the event and counted capped."""
    async with pool.acquire() as conn:
        created = await audience.put_frequency_cap(
            conn,
            app_id=key.app_id,
            category=category,
            max_sends=body.max,
            window_seconds=body.window_seconds,
        )
        caps = await audience.list_frequency_caps(conn, app_id=key.app_id)
    if not created:
        response.status_code = 200
    return _cap_out(next(cap for cap in caps if cap.category == category))


@router.delete(
    "/v1/frequency-caps/{category}",
    status_code=204,
    responses=schemas.problems(401, 403, 404),
)
async def delete_frequency_cap(
    category: schemas.CapCategoryPath, key: Manager, pool: Pool
) -> Response:
    async with pool.acquire() as conn:
        deleted = await audience.delete_frequency_cap(conn, app_id=key.app_id, category=category)
    if not deleted:
        raise HTTPException(404, "no such frequency cap")
    return Response(status_code=204)
