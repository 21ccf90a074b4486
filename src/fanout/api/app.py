"""The HTTP API (FastAPI): devices, subscriptions, publishing, 1:1 sends, event status.

Every path under /v1 needs ``Authorization: Bearer <api key>`` with the right scope.
Authentication runs before any lookup, so a 401 or 403 never tells whether the
resource exists. Validation errors name the field and never echo its value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from fanout.api import schemas
from fanout.api.keys import ApiKey, find_api_key
from fanout.config import Settings, connection_failure
from fanout.queue.sqs import Queues, open_client, open_queues
from fanout.ratelimit import TokenBucket
from fanout.stages.publish import enqueue_event, record_event
from fanout.store import create_pool, find_or_create, queries

log = logging.getLogger(__name__)
# A publish answers within this even when SQS is slow or down: the event is committed,
# and if the send did not finish, the outbox sweeper sends it (fan-out is idempotent).
ENQUEUE_TIMEOUT_SECONDS = 2.0
bearer = HTTPBearer(auto_error=False, description="An API key: fo_<id>_<secret>")

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.Problem, "description": "Missing or unknown API key"},
    403: {"model": schemas.Problem, "description": "The key lacks the scope"},
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fanout_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fanout_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.published = Counter(
            "fanout_events_published", "Events accepted", ["kind"], registry=self.registry
        )
        self.enqueue_failures = Counter(
            "fanout_enqueue_failures",
            "Events committed but not yet enqueued (the outbox sweeper sends them)",
            registry=self.registry,
        )


@dataclass
class ApiState:
    settings: Settings
    pool: asyncpg.Pool
    sqs: Any
    queues: Queues | None
    metrics: Metrics = field(default_factory=Metrics)
    publish_buckets: dict[str, TokenBucket] = field(default_factory=dict)

    async def get_queues(self) -> Queues:
        if self.queues is None:
            self.queues = await open_queues(self.sqs, self.settings)
        return self.queues


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_client(settings) as sqs:
            pool = await create_pool(settings)
            try:
                async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
                    queues = await open_queues(sqs, settings)
            except Exception as exc:  # publish still commits; the sweeper enqueues later
                log.warning(
                    "could not open the queues at %s (FANOUT_SQS_ENDPOINT_URL) at start-up: "
                    "%s; events are still accepted, and a worker's outbox sweeper enqueues them",
                    sqs.meta.endpoint_url,
                    connection_failure(exc),
                )
                queues = None
            app.state.api = ApiState(settings, pool, sqs, queues)
            try:
                yield
            finally:
                await pool.close()

    app = FastAPI(
        title="fanout",
        version="1",
        summary="Mass push notifications: one event in, a push on every subscriber's device out.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(_Measure)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    app.include_router(_routes())
    return app


async def _state(request: Request) -> ApiState:
    # async on purpose: FastAPI runs a plain-def dependency in a thread pool, which cost
    # 22% of the server's CPU under load.
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(_state)]


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that admits only live keys carrying ``scope``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiKey:
        state = await _state(request)
        key = None
        if credentials is not None and credentials.scheme.lower() == "bearer":
            async with state.pool.acquire() as conn:
                key = await find_api_key(conn, credentials.credentials)
        if key is None:
            raise HTTPException(
                401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in key.scopes:
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return key

    return dependency


async def _publish_allowed(
    request: Request, key: Annotated[ApiKey, Depends(require("publish"))]
) -> ApiKey:
    """The per-key publishing rate limit, after authentication."""
    state = await _state(request)
    bucket = state.publish_buckets.get(key.key_id)
    if bucket is None:
        bucket = state.publish_buckets[key.key_id] = TokenBucket(
            state.settings.api_publish_rate, state.settings.api_publish_burst
        )
    wait = bucket.try_take()
    if wait:
        raise HTTPException(
            429,
            "publishing rate limit reached for this API key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


TopicPath = Annotated[str, Path(pattern=schemas.TOPIC_PATTERN, examples=["author:42"])]
UserPath = Annotated[str, Path(pattern=schemas.USER_ID_PATTERN, examples=["reader-7"])]


def _routes() -> Any:
    from fastapi import APIRouter

    router = APIRouter()
    manage = [Depends(require("manage"))]
    read = [Depends(require("read"))]
    publishing = [Depends(_publish_allowed)]
    with_429 = {**PROBLEMS, 429: {"model": schemas.Problem, "description": "Rate limited"}}
    with_404 = {**PROBLEMS, 404: {"model": schemas.Problem, "description": "Not found"}}

    @router.post(
        "/v1/devices",
        status_code=201,
        dependencies=manage,
        responses={**PROBLEMS, 200: {"model": schemas.DeviceOut, "description": "Updated"}},
    )
    async def register_device(
        body: Annotated[schemas.DeviceIn, Body()], response: Response, state: State
    ) -> schemas.DeviceOut:
        """Register a device, or refresh it: the same token again updates the same row."""
        if isinstance(body, schemas.WebPushDeviceIn):
            token = body.subscription.endpoint
            keys: tuple[str | None, str | None] = (
                body.subscription.keys.p256dh,
                body.subscription.keys.auth,
            )
        else:
            token, keys = body.token, (None, None)
        async with state.pool.acquire() as conn, conn.transaction():
            user_id = await find_or_create(conn, queries.UPSERT_USER, body.user_id)
            row = await conn.fetchrow(
                queries.UPSERT_DEVICE, user_id, body.platform, token, *keys, body.locale
            )
        if not row["created"]:
            response.status_code = 200
        return schemas.DeviceOut(id=row["id"])

    @router.delete(
        "/v1/devices/{device_id}", status_code=204, dependencies=manage, responses=with_404
    )
    async def delete_device(
        device_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State
    ) -> Response:
        async with state.pool.acquire() as conn:
            deleted = await conn.execute(queries.DELETE_DEVICE, device_id)
        if deleted == "DELETE 0":
            raise HTTPException(404, "no such device")
        return Response(status_code=204)

    @router.put(
        "/v1/topics/{topic}/subscribers/{user_id}",
        status_code=204,
        dependencies=manage,
        responses=PROBLEMS,
    )
    async def subscribe(topic: TopicPath, user_id: UserPath, state: State) -> Response:
        """Subscribe a user to a topic (idempotent; both are created if new)."""
        async with state.pool.acquire() as conn, conn.transaction():
            topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic)
            user = await find_or_create(conn, queries.UPSERT_USER, user_id)
            await conn.execute(queries.SUBSCRIBE, topic_id, user)
        return Response(status_code=204)

    @router.delete(
        "/v1/topics/{topic}/subscribers/{user_id}",
        status_code=204,
        dependencies=manage,
        responses=PROBLEMS,
    )
    async def unsubscribe(topic: TopicPath, user_id: UserPath, state: State) -> Response:
        """Unsubscribe (idempotent: unsubscribing twice is not an error)."""
        async with state.pool.acquire() as conn:
            await conn.execute(queries.UNSUBSCRIBE, topic, user_id)
        return Response(status_code=204)

    @router.post("/v1/topics/{topic}/subscribers", dependencies=manage, responses=PROBLEMS)
    async def bulk_subscribe(
        topic: TopicPath, body: schemas.BulkSubscribeIn, state: State
    ) -> schemas.BulkSubscribeOut:
        """Subscribe up to 50,000 users in one request: two statements, whatever the count."""
        # Sorted, so concurrent imports lock rows in the same order and never deadlock.
        user_ids = sorted(set(body.user_ids))
        async with state.pool.acquire() as conn, conn.transaction():
            topic_id = await find_or_create(conn, queries.UPSERT_TOPIC, topic)
            await conn.execute(queries.BULK_INSERT_USERS, user_ids)
            status = await conn.execute(queries.BULK_SUBSCRIBE, topic_id, user_ids)
        return schemas.BulkSubscribeOut(requested=len(body.user_ids), added=int(status.split()[-1]))

    @router.get("/v1/users/{user_id}/subscriptions", dependencies=read, responses=PROBLEMS)
    async def list_subscriptions(
        user_id: UserPath,
        state: State,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
    ) -> schemas.SubscriptionPage:
        """A user's subscriptions, a page at a time (keyset: pass ``next_cursor`` back)."""
        after = min(int(cursor), 2**63 - 1) if cursor else 0
        async with state.pool.acquire() as conn:
            rows = await conn.fetch(queries.USER_SUBSCRIPTIONS_PAGE, user_id, after, limit)
        items = [
            schemas.SubscriptionOut(topic=r["key"], subscribed_at=r["created_at"]) for r in rows
        ]
        next_cursor = str(rows[-1]["topic_id"]) if len(rows) == limit else None
        return schemas.SubscriptionPage(items=items, next_cursor=next_cursor)

    @router.post("/v1/events", status_code=202, dependencies=publishing, responses=with_429)
    async def publish_event(body: schemas.EventIn, state: State) -> schemas.EventAccepted:
        """Publish to a topic's subscribers. The same idempotency key publishes once."""
        return await _accept(state, body.notification, body.idempotency_key, topic=body.topic)

    @router.post(
        "/v1/users/{user_id}/notifications",
        status_code=202,
        dependencies=publishing,
        responses=with_429,
    )
    async def notify_user(
        user_id: UserPath, body: schemas.DirectNotificationIn, state: State
    ) -> schemas.EventAccepted:
        """A 1:1 send to all of one user's devices, through the same delivery stage."""
        return await _accept(state, body.notification, body.idempotency_key, user=user_id)

    @router.get("/v1/events/{event_id}", dependencies=read, responses=with_404)
    async def event_status(
        event_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State
    ) -> schemas.EventStatus:
        async with state.pool.acquire() as conn:
            row = await conn.fetchrow(queries.EVENT_PROGRESS, event_id)
        if row is None:
            raise HTTPException(404, "no such event")
        return _status_of(row)

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

    return router


async def _accept(
    state: ApiState,
    notification: Any,
    idempotency_key: str | None,
    *,
    topic: str | None = None,
    user: str | None = None,
) -> schemas.EventAccepted:
    """Commit the event, then try to enqueue it; if SQS is down the outbox sweeper will."""
    published = await record_event(
        state.pool, notification, topic=topic, user=user, idempotency_key=idempotency_key
    )
    if published.created:
        state.metrics.published.labels("topic" if topic else "user").inc()
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
                await enqueue_event(state.pool, await state.get_queues(), published.event_id)
        except Exception as exc:
            state.metrics.enqueue_failures.inc()
            log.warning("event %d committed, enqueue deferred: %r", published.event_id, exc)
    return schemas.EventAccepted(event_id=published.event_id, created=published.created)


def _status_of(row: asyncpg.Record) -> schemas.EventStatus:
    done = row["sent"] + row["failed"] + row["invalid"] + row["skipped"]
    pending = max(0, row["devices"] - done)
    delivered = row["status"] == "fanned_out" and pending == 0
    return schemas.EventStatus(
        event_id=row["id"],
        status="delivered" if delivered else row["status"],
        recipients=row["recipients"],
        devices=row["devices"],
        sent=row["sent"],
        failed=row["failed"],
        invalid=row["invalid"],
        skipped=row["skipped"],
        pending=pending,
        started_at=row["created_at"],
        fanned_out_at=row["fanned_out_at"],
        finished_at=(row["last_finished_at"] or row["fanned_out_at"]) if delivered else None,
    )


class _Measure:
    """Request counts and latency by route template (pure ASGI: Starlette's
    BaseHTTPMiddleware cost 8% of the server's CPU under load)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            state = getattr(scope["app"].state, "api", None)
            if state is not None:
                template = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.requests.labels(scope["method"], template, str(status)).inc()
                state.metrics.latency.labels(template).observe(time.perf_counter() - started)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and what is wrong, without echoing what was sent."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


class _BodyLimit:
    """Refuse request bodies over the limit with 413, before anything parses them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, limited_receive, send)
