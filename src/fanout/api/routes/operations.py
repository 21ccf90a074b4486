"""For operators: liveness and Prometheus metrics, without authentication."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fanout.api import schemas
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, State

router = APIRouter()


@router.get("/healthz", responses={503: {"model": schemas.Health}})
async def healthz(state: State, response: Response) -> schemas.Health:
    """Liveness of the database and the queue (no authentication)."""
    database = queue = "ok"
    try:
        async with state.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        database = f"unavailable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            await (await state.get_queues()).fanout.depth()
    except Exception as exc:
        queue = f"unavailable: {type(exc).__name__}"
    if database != "ok" or queue != "ok":
        response.status_code = 503
    return schemas.Health(database=database, queue=queue)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
