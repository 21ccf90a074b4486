"""What the routes share, kept on ``app.state``: settings, the pool, the queues, metrics.

The dependencies here are ``async def`` on purpose: FastAPI runs a plain-def dependency
in a thread pool, which cost 22% of the server's CPU under load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from fanout.config import Settings
from fanout.queue.sqs import Queues, open_queues
from fanout.ratelimit import TokenBucket

# A publish answers within this even when SQS is slow or down: the event is committed,
# and if the send did not finish, the outbox sweeper sends it (fan-out is idempotent).
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
        """The queues, opened on first use if they were not reachable at start-up."""
        if self.queues is None:
            self.queues = await open_queues(self.sqs, self.settings)
        return self.queues

    def take_publish_token(self, key_id: str) -> None:
        """The per-key publishing rate limit: 429 with Retry-After when it is reached."""
        bucket = self.publish_buckets.get(key_id)
        if bucket is None:
            bucket = self.publish_buckets[key_id] = TokenBucket(
                self.settings.api_publish_rate, self.settings.api_publish_burst
            )
        wait = bucket.try_take()
        if wait:
            raise HTTPException(
                429,
                "publishing rate limit reached for this API key",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def _state(request: Request) -> ApiState:
    return state_of(request)


async def _pool(request: Request) -> asyncpg.Pool:
    return state_of(request).pool


State = Annotated[ApiState, Depends(_state)]
Pool = Annotated[asyncpg.Pool, Depends(_pool)]
