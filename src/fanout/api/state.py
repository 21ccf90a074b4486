"""What the routes share, kept on ``app.state``: settings, the pool, the queues, metrics.

The dependencies here are ``async def`` on purpose: FastAPI runs a plain-def dependency
in a thread pool, which cost 22% of the server's CPU under load.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from fanout.config import Settings
from fanout.open_tokens import OpenTokens
from fanout.queue.messages import MAX_MESSAGE_BYTES
from fanout.queue.sqs import Queues, open_queues
from fanout.ratelimit import TokenBucket
from fanout.stages.batching import batch_max_bytes
from fanout.stages.group_commit import GroupCommit
from fanout.webhooks.addresses import Resolver, system_resolver

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
            "Events accepted, by kind (topic, user, app: a filter alone, live_activity) and "
            "app (its key; empty with FANOUT_METRICS_APP_LABEL=false)",
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
    # POST /v1/opens: a bucket per client address, the least recently seen dropped past
    # OPEN_BUCKETS_MAX (memory flat however many phones post).
    open_buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)
    open_tokens: OpenTokens | None = None  # None: opens are off (no key configured)
    # How a webhook endpoint's name is resolved to check it (the tests give their own).
    webhook_resolver: Resolver = system_resolver
    group_commit: GroupCommit | None = None  # publishing, set by the app's lifespan

    async def get_queues(self) -> Queues:
        """The queues, opened on first use if they were not reachable at start-up."""
        if self.queues is None:
            self.queues = await open_queues(self.sqs, self.settings)
        return self.queues

    def batch_max_bytes(self) -> int:
        """FANOUT_BATCH_MAX_BYTES capped by the delivery queue's limit (once it is open)."""
        limit = self.queues.delivery.max_message_bytes if self.queues else MAX_MESSAGE_BYTES
        return batch_max_bytes(self.settings.batch_max_bytes, limit)


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def _state(request: Request) -> ApiState:
    return state_of(request)


async def _pool(request: Request) -> asyncpg.Pool:
    return state_of(request).pool


State = Annotated[ApiState, Depends(_state)]
Pool = Annotated[asyncpg.Pool, Depends(_pool)]
