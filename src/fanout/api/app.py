"""The HTTP API (FastAPI): devices, subscriptions, publishing, 1:1 sends, event status.

Every path under /v1 needs ``Authorization: Bearer <api key>`` with the right scope
(auth.py). Validation errors name the field and never echo its value. The routes live
in routes/, one module per resource; this module assembles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fanout.api import console
from fanout.api.middleware import BodyLimit, MeasureRequests
from fanout.api.routes import ROUTERS
from fanout.api.state import ENQUEUE_TIMEOUT_SECONDS, ApiState
from fanout.config import Settings, connection_failure
from fanout.queue.sqs import open_client, open_queues
from fanout.stages.group_commit import Enqueuer, GroupCommit, GroupCommitClosed
from fanout.store import create_pool

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    from fanout.metrics import use_app_label

    use_app_label(settings.metrics_app_label)  # an event cancelled here is counted here

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_client(settings) as sqs:
            pool = await create_pool(settings)
            try:
                async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
                    queues = await open_queues(sqs, settings)
            except Exception as exc:  # publish still commits; the reconciler enqueues later
                log.warning(
                    "could not open the queues at %s (FANOUT_SQS_ENDPOINT_URL) at start-up: "
                    "%s; events are still accepted, and the reconciler enqueues them",
                    sqs.meta.endpoint_url,
                    connection_failure(exc),
                )
                queues = None
            state = app.state.api = ApiState(
                settings, pool, sqs, queues, open_tokens=settings.open_tokens()
            )
            state.group_commit = GroupCommit(
                pool,
                Enqueuer(
                    pool,
                    state.get_queues,
                    overdue_after=settings.reconcile_after_seconds,
                    timeout=ENQUEUE_TIMEOUT_SECONDS,
                    on_failure=state.metrics.enqueue_failures.inc,
                    coalesce=settings.coalesce_direct,
                    coalesce_window=settings.coalesce_window_seconds,
                ),
                overdue_after=settings.reconcile_after_seconds,
                max_group=settings.api_publish_group_max,
            )
            # What start-up made lives as long as the process: out of the collector's
            # sight, a collection of the youngest objects no longer walks it (a third of
            # the cost of a 1,000-item batch's objects was the collector's, issue #26).
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()  # an app started in a test's process leaves nothing frozen
                # Drain: what is waiting is committed and answered, enqueues finish (or
                # are left to the reconciler after FANOUT_SHUTDOWN_GRACE_SECONDS).
                await state.group_commit.close(grace=settings.shutdown_grace_seconds)
                await pool.close()

    app = FastAPI(
        title="fanout",
        version="1",
        summary="Mass push notifications: one event in, a push on every subscriber's device out.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.api_max_body_bytes,
        max_import_bytes=settings.api_max_import_bytes,
    )
    app.add_middleware(MeasureRequests)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(GroupCommitClosed, _stopping)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)  # the operator console at /console
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and what is wrong, without echoing what was sent; 415 for
    a body not sent as JSON."""
    if any(tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes)
           for e in exc.errors()):  # fmt: skip
        # FastAPI parses a body as JSON only if its Content-Type says so, and otherwise
        # validates the raw bytes: "Input should be a valid dictionary or object to extract
        # fields from" said nothing of the header that `curl -d` without -H leaves out.
        media_type = request.headers.get("content-type", "").split(";")[0].strip()[:100]
        detail = f"Content-Type must be application/json (this request's: {media_type or 'none'})"
        return JSONResponse({"detail": detail}, status_code=415)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _stopping(request: Request, exc: GroupCommitClosed) -> JSONResponse:
    """A publish that arrived while the server drains: nothing was written; send it again
    (to another process, or this one restarted)."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)
