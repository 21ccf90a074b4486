"""One code path for every runtime: a queue message body in, the right stage run.

The long-running worker and the Lambda handlers are thin adapters around
``Pipeline.handle``; both open the same resources through ``Pipeline.open``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import asyncpg

from fanout import retry
from fanout.config import Settings
from fanout.credentials.stored import keyring
from fanout.providers import Provider, build_providers
from fanout.providers.apps import AppProviders
from fanout.providers.quota import QuotaStore
from fanout.providers.quota_stores import open_quota_store
from fanout.queue.messages import DeliveryBundle, FanoutTask, PoisonMessage, decode
from fanout.queue.sqs import Queue, QueueMessage, Queues, open_client, open_queues
from fanout.stages.coalescing import deliver_bundle, run_fanout_group
from fanout.stages.delivery import BatchReport, deliver_batch
from fanout.stages.fanout import ShardReport, run_fanout_task
from fanout.stages.leases import LeaseKept, describe
from fanout.store import create_pool, create_read_pool

log = logging.getLogger(__name__)

# Failures that say what happened in one line; anything else is logged with its traceback.
_EXPECTED_FAILURES = (PoisonMessage, LeaseKept)
MAX_VISIBILITY_SECONDS = 43_200  # SQS's limit: 12 hours


class Result(Enum):
    DONE = "done"  # delete the message
    DEAD_LETTERED = "dead_lettered"  # already moved to the DLQ (and deleted from its queue)
    RETRY = "retry"  # leave it: SQS delivers it again after the backoff
    DEFERRED = "deferred"  # another invocation holds the work: back when its lease ends


def _providers(settings: Settings, quotas: QuotaStore) -> Mapping[str, Provider]:
    """The sink for every app, or each app's providers from its stored credentials (the
    default app's from the settings where it has none stored)."""
    configured = build_providers(settings, quotas)
    if settings.provider == "sink":
        return configured
    return AppProviders(settings, configured, keyring(settings), quotas)


async def _close_providers(providers: Mapping[str, Provider]) -> None:
    if isinstance(providers, AppProviders):
        await providers.aclose()
        return
    for provider in {id(p): p for p in providers.values()}.values():
        await provider.aclose()


@dataclass
class Pipeline:
    settings: Settings
    pool: asyncpg.Pool
    queues: Queues
    providers: Mapping[str, Provider]
    # Where the fan-out reads recipient pages (FANOUT_DATABASE_READ_URL); None: ``pool``.
    read_pool: asyncpg.Pool | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, settings: Settings, *, providers: Mapping[str, Provider] | None = None
    ) -> AsyncIterator[Pipeline]:
        """Database pool, SQS client and providers for as long as the context lasts."""
        from fanout.metrics import use_app_label

        use_app_label(settings.metrics_app_label)
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(open_client(settings))
            queues = await open_queues(client, settings)
            pool = await create_pool(settings)
            stack.push_async_callback(pool.close)
            read_pool = await create_read_pool(settings)
            if read_pool is not None:
                stack.push_async_callback(read_pool.close)
            if providers is None:
                quotas = await stack.enter_async_context(open_quota_store(settings, pool))
                providers = _providers(settings, quotas)
                stack.push_async_callback(_close_providers, providers)
            yield cls(settings, pool, queues, providers, read_pool)

    async def handle(
        self, body: str, *, time_left: Callable[[], float] | None = None
    ) -> list[ShardReport] | BatchReport | list[BatchReport]:
        """Run whatever the message asks. Raises to have it retried (or dead-lettered)."""
        message = decode(body)
        if isinstance(message, FanoutTask) and message.events:
            return await run_fanout_group(
                message,
                self.pool,
                self.queues,
                self.settings,
                time_left=time_left,
                reader=self.read_pool,
            )
        if isinstance(message, DeliveryBundle):
            return await deliver_bundle(
                message, self.pool, self.queues, self.providers, self.settings
            )
        if isinstance(message, FanoutTask):
            return await run_fanout_task(
                message,
                self.pool,
                self.queues,
                self.settings,
                time_left=time_left,
                reader=self.read_pool,
            )
        return await deliver_batch(message, self.pool, self.queues, self.providers, self.settings)

    async def _done_or_deferred(
        self,
        queue: Queue,
        message: QueueMessage,
        outcome: list[ShardReport] | BatchReport | list[BatchReport],
    ) -> Result:
        """A copy of work someone else holds comes back when the holder's lease ends (if the
        holder died, it goes on then); a copy on its last receive is dropped instead of
        dead-lettered: PostgreSQL knows the work, and the reconciler sees it finish."""
        reports: list[ShardReport] | list[BatchReport] = (
            outcome if isinstance(outcome, list) else [outcome]
        )
        busy = [r for r in reports if r.busy]
        if not busy:
            return Result.DONE
        last_try = queue.max_receive_count is not None and (
            message.receive_count >= queue.max_receive_count - 1
        )
        if last_try:
            return Result.DONE
        wait = min(MAX_VISIBILITY_SECONDS, math.ceil(max(r.lease_left for r in busy)) + 1)
        try:
            await queue.change_visibility_many([message], wait)
        except Exception as exc:
            log.warning("could not defer message %s: %r", message.message_id, exc)
        return Result.DEFERRED

    async def run_message(
        self,
        queue: Queue,
        message: QueueMessage,
        *,
        time_left: Callable[[], float] | None = None,
    ) -> tuple[Result, str | None]:
        """Handle one message and apply the failure policy; never raises for its failure.

        A failure hides the message for a backoff (1, 2, 4 … s, or until the lease the
        failed try kept is over) so SQS delivers it again; on the queue's last allowed
        receive it goes to the dead-letter queue with the reason instead, so poison never
        blocks a queue. A unit of work whose message is dead-lettered is still known to
        PostgreSQL: the reconciler sends it again when it is overdue. The worker and the
        Lambda handlers both call this.
        """
        try:
            outcome = await self.handle(message.body, time_left=time_left)
            return await self._done_or_deferred(queue, message, outcome), None
        except Exception as exc:
            reason = describe(exc)
            failure = exc
        last_try = (
            queue.max_receive_count is not None
            and message.receive_count >= queue.max_receive_count
            and queue.dead_letter_url is not None
        )
        try:
            if last_try:
                await queue.dead_letter(message, reason)
                log.error(
                    "message %s to the dead-letter queue after %d tries: %s",
                    message.message_id,
                    message.receive_count,
                    reason,
                )
                return Result.DEAD_LETTERED, reason
            backoff = int(retry.MESSAGE.delay(message.receive_count))
            if isinstance(failure, LeaseKept):
                # The work is still leased to this failed try (the database could not be
                # told otherwise): coming back sooner would only find it busy.
                backoff = max(backoff, int(failure.seconds))
            log.warning(
                "message %s failed (try %d), again in %ds: %s",
                message.message_id,
                message.receive_count,
                backoff,
                reason,
                exc_info=None if isinstance(failure, _EXPECTED_FAILURES) else failure,
            )
            await queue.change_visibility_many([message], backoff)
        except Exception as queue_exc:  # SQS redelivers it after the visibility timeout
            log.warning("could not reschedule message %s: %r", message.message_id, queue_exc)
        return Result.RETRY, reason
