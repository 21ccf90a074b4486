"""Sources (issue #25): an app's topic prefixes bound to a query over the app's own tables.

Admin routes, under the app they are for: a source's query runs as FANOUT_SOURCE_ROLE,
read-only, with what the operator grants that role (which may span apps' tables); only the
operator adds one (an app's keys, whatever their scopes, are refused with 403).
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError

from fanout.api import schemas
from fanout.api.auth import Admin
from fanout.api.state import Pool, State
from fanout.sources import (
    SourceRefused,
    SourcesUnavailable,
    check_prefix,
    check_source,
    run_checked,
)
from fanout.store import apps, sources

router = APIRouter(tags=["sources"])

# The routes that run a source's query: 503 when its role cannot be used.
_CHECKED_PROBLEMS = {
    **schemas.problems(401, 403, 404),
    503: {"model": schemas.Problem, "description": schemas.PROBLEMS["503-sources"]},
}


def _source_out(source: sources.Source) -> schemas.SourceOut:
    return schemas.SourceOut(
        prefix=source.prefix,
        query=source.query,
        column=source.user_column,
        created_at=source.created_at,
    )


async def _app_id(conn: asyncpg.Connection, app: str) -> int:
    found = await apps.app_by_key(conn, key=app)
    if found is None:
        raise HTTPException(404, "no such app")
    return found.id


def _refused(refused: SourceRefused) -> RequestValidationError:
    loc = ["path", "prefix"] if refused.field == "prefix" else ["body", refused.field]
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(refused)}])


@router.get("/v1/apps/{app}/sources", responses=schemas.problems(401, 403, 404))
async def list_sources(app: schemas.AppPath, _: Admin, pool: Pool) -> list[schemas.SourceOut]:
    """The app's sources, by prefix."""
    async with pool.acquire() as conn:
        found = await sources.list_sources(conn, app_id=await _app_id(conn, app))
    return [_source_out(source) for source in found]


@router.put("/v1/apps/{app}/sources/{prefix}", responses=_CHECKED_PROBLEMS)
async def put_source(
    app: schemas.AppPath,
    prefix: schemas.SourcePrefixPath,
    body: schemas.SourceIn,
    _: Admin,
    pool: Pool,
    state: State,
) -> schemas.SourceOut:
    """Bind the app's topics under ``prefix`` to a query over its own tables (replacing the
    prefix's query if it had one). Events planned from now on read their audience from it."""
    try:
        check_prefix(prefix)
        async with pool.acquire() as conn:
            app_id = await _app_id(conn, app)
            query = await check_source(
                conn,
                query=body.query,
                user_column=body.column,
                sample_key=body.sample_key,
                time_limit=state.settings.source_check_timeout_seconds,
                role=state.settings.source_role,
            )
            stored = await sources.put_source(
                conn, app_id=app_id, prefix=prefix, query=query, user_column=body.column
            )
    except SourceRefused as refused:
        raise _refused(refused) from None
    except SourcesUnavailable as unavailable:
        raise HTTPException(503, str(unavailable)) from None
    return _source_out(stored)


@router.get(
    "/v1/apps/{app}/sources/{prefix}/test",
    responses=_CHECKED_PROBLEMS,
)
async def test_source(
    app: schemas.AppPath,
    prefix: schemas.SourcePrefixPath,
    key: Annotated[str, Query(min_length=1, max_length=128)],
    _: Admin,
    pool: Pool,
    state: State,
) -> schemas.SourceSampleOut:
    """What the source returns for ``key`` (the rest of a topic's key): how many users, and
    the first few, read as an event's audience would be (read-only, under the timeout)."""
    async with pool.acquire() as conn:
        source = await sources.get_source(conn, app_id=await _app_id(conn, app), prefix=prefix)
        if source is None:
            raise HTTPException(404, "no such source")
        try:
            found = await run_checked(
                conn,
                query=source.query,
                user_column=source.user_column,
                key=key,
                time_limit=state.settings.source_check_timeout_seconds,
                role=state.settings.source_role,
            )
        except SourceRefused as refused:
            raise HTTPException(422, str(refused)) from None
        except SourcesUnavailable as unavailable:
            raise HTTPException(503, str(unavailable)) from None
    return schemas.SourceSampleOut(prefix=prefix, key=key, users=found.users, sample=found.sample)


@router.delete(
    "/v1/apps/{app}/sources/{prefix}", status_code=204, responses=schemas.problems(401, 403, 404)
)
async def delete_source(
    app: schemas.AppPath, prefix: schemas.SourcePrefixPath, _: Admin, pool: Pool
) -> Response:
    """Forget the source: the prefix's topics take subscriptions again. Events planned
    already keep the audience they read."""
    async with pool.acquire() as conn:
        deleted = await sources.delete_source(conn, app_id=await _app_id(conn, app), prefix=prefix)
    if not deleted:
        raise HTTPException(404, "no such source")
    return Response(status_code=204)
