"""One code path for every runtime: a queue message body in, the right stage run.

The long-running worker and the Lambda handlers are thin adapters around
``Pipeline.handle``; both open the same resources through ``Pipeline.open``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import asyncpg

from fanout.config import Settings
from fanout.delivery_stage import BatchReport, deliver_batch
from fanout.fanout_stage import ShardReport, run_fanout_task
from fanout.messages import FanoutTask, decode
from fanout.providers import Provider, build_providers
from fanout.sqs import Queues, open_client, open_queues
from fanout.store import create_pool


@dataclass
class Pipeline:
    settings: Settings
    pool: asyncpg.Pool
    queues: Queues
    providers: Mapping[str, Provider]

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, settings: Settings, *, providers: Mapping[str, Provider] | None = None
    ) -> AsyncIterator[Pipeline]:
        """Database pool, SQS client and providers for as long as the context lasts."""
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(open_client(settings))
            queues = await open_queues(client, settings)
            pool = await create_pool(settings)
            stack.push_async_callback(pool.close)
            if providers is None:
                providers = build_providers(settings)
                for provider in set(providers.values()):
                    stack.push_async_callback(provider.aclose)
            yield cls(settings, pool, queues, providers)

    async def handle(
        self, body: str, *, time_left: Callable[[], float] | None = None
    ) -> list[ShardReport] | BatchReport:
        """Run whatever the message asks. Raises to have it retried (or dead-lettered)."""
        message = decode(body)
        if isinstance(message, FanoutTask):
            return await run_fanout_task(
                message, self.pool, self.queues, self.settings, time_left=time_left
            )
        return await deliver_batch(message, self.pool, self.queues, self.providers, self.settings)
