"""For operators: liveness and Prometheus metrics, without authentication."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily

from fanout.api import schemas
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, State
from fanout.metrics import open_event_gauges
from fanout.store import events

log = logging.getLogger(__name__)
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
    """Prometheus text format: the API's own (requests, publishes), this process's share
    of ``fanout.metrics``, and the unfinished events by state, read from PostgreSQL."""
    text = generate_latest(state.metrics.registry) + generate_latest(REGISTRY)
    try:
        rows = await events.open_events(state.pool)
    except Exception as exc:  # the rest is still worth serving
        log.warning("metrics: could not read the open events: %r", exc)
    else:
        text += generate_latest(_Families(open_event_gauges(rows)))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


class _Families:
    """Metric families computed for one scrape, in the shape ``generate_latest`` reads."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families
