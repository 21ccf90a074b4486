"""What the routes share, kept on ``app.state``: settings, the pool, the queues, metrics.

The dependencies here are ``async def`` on purpose: FastAPI runs a plain-def dependency
in a thread pool, which cost 22% of the server's CPU under load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from fanout.config import Settings
from fanout.queue.sqs import Queues, open_queues
from fanout.ratelimit import TokenBucket

# A publish answers within this even when SQS is slow or down: the event is committed,
# and if the send did not finish, the reconciler sends it (fan-out is idempotent).
# Start-up and /healthz wait no longer for SQS either.
ENQUEUE_TIMEOUT_SECONDS = 2.0


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
            "fanout_events_published",
            "Events accepted, by kind (topic, user, live_activity) and app (its key; empty "
            "with FANOUT_METRICS_APP_LABEL=false)",
            ["kind", "app"],
            registry=self.registry,
        )
        self.enqueue_failures = Counter(
            "fanout_enqueue_failures",
            "Events committed but not yet enqueued (the reconciler sends them)",
            registry=self.registry,
        )


@dataclass
class ApiState:
    settings: Settings
    pool: asyncpg.Pool
    sqs: Any
    queues: Queues | None
    metrics: Metrics = field(default_factory=Metrics)
    publish_buckets: dict[str, TokenBucket] = field(default_factory=dict)  # by key_id

    async def get_queues(self) -> Queues:
        """The queues, opened on first use if they were not reachable at start-up."""
        if self.queues is None:
            self.queues = await open_queues(self.sqs, self.settings)
        return self.queues


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def _state(request: Request) -> ApiState:
    return state_of(request)


async def _pool(request: Request) -> asyncpg.Pool:
    return state_of(request).pool


State = Annotated[ApiState, Depends(_state)]
Pool = Annotated[asyncpg.Pool, Depends(_pool)]
