"""AWS Lambda entry points: ``fanout_handler`` and ``delivery_handler`` for SQS event sources,
and ``reconcile_handler`` and ``webhook_handler`` on a schedule.

Both are thin adapters over the code the worker runs (``Pipeline.run_message``): the same
stage, the same failure policy (backoff, then the DLQ with the reason). They answer
with ``batchItemFailures`` (powertools' batch utility), so only failed records come back.

The pipeline (database pool, SQS client, providers) is opened once per container, on
one event loop kept for the container's life, and reused by every invocation: that is
what keeps database connections open across invocations (and what RDS Proxy expects).
powertools runs the records on that loop: in the Lambda runtime (``LAMBDA_TASK_ROOT`` is
set) it uses ``asyncio.get_event_loop()``, which is the loop set here.

At the end of every invocation the process's metrics (``fanout.metrics``) are printed as
CloudWatch Embedded Metric Format: the same names as the worker's ``/metrics``
(``runtime/emf.py``), in the namespace ``FANOUT_METRICS_NAMESPACE``.

Settings come from the environment; ``FANOUT_SECRETS_ARN`` names a Secrets Manager
secret (a JSON object of ``FANOUT_*`` names to values) read once at cold start, so the
database URL and provider keys never sit in the function's configuration in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from fanout.config import load_settings
from fanout.credentials.stored import keyring
from fanout.errors import FanoutError
from fanout.queue.admin import observe_queue_depths
from fanout.queue.sqs import QueueMessage
from fanout.runtime import heap
from fanout.runtime.emf import EmfPublisher
from fanout.runtime.pipeline import Pipeline, Result
from fanout.runtime.reconciler import reconcile_once
from fanout.webhooks.sender import Pass, WebhookSender

logger = Logger(service="fanout")


class RecordFailed(FanoutError):
    """Reported to Lambda as a batch item failure; SQS delivers the record again."""


@dataclass
class _Container:
    loop: asyncio.AbstractEventLoop
    stack: contextlib.AsyncExitStack
    pipeline: Pipeline
    metrics: EmfPublisher


_container: _Container | None = None


def _container_pipeline() -> _Container:
    global _container
    if _container is None or _container.loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        settings = loop.run_until_complete(load_settings())
        stack = contextlib.AsyncExitStack()
        pipeline = loop.run_until_complete(stack.enter_async_context(Pipeline.open(settings)))
        metrics = EmfPublisher(settings.metrics_namespace)
        _container = _Container(loop, stack, pipeline, metrics)
        if os.environ.get("LAMBDA_TASK_ROOT"):  # a container of its own (not a test's)
            heap.settle()
    asyncio.set_event_loop(_container.loop)
    return _container


def _handle_sqs_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    pipeline = _container_pipeline().pipeline
    queues = {q.name: q for q in (pipeline.queues.fanout, pipeline.queues.delivery)}
    time_left = None
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):

        def time_left() -> float:
            return float(context.get_remaining_time_in_millis()) / 1000

    async def record_handler(record: SQSRecord) -> None:
        queue_name = record.event_source_arn.rsplit(":", 1)[-1]
        queue = queues.get(queue_name)
        if queue is None:
            raise RecordFailed(f"record from unknown queue {queue_name}")
        message = QueueMessage(
            body=record.body,
            message_id=record.message_id,
            receipt_handle=record.receipt_handle,
            receive_count=int(record.attributes.approximate_receive_count),
        )
        result, reason = await pipeline.run_message(queue, message, time_left=time_left)
        if result is Result.RETRY:
            raise RecordFailed(reason)
        if result is Result.DEFERRED:  # left on the queue: back when the holder's lease ends
            raise RecordFailed("held by another invocation")

    # Every record failing is reported as such, not raised: same outcome, no error alarm.
    processor = AsyncBatchProcessor(EventType.SQS, raise_on_entire_batch_failure=False)
    response = async_process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    return dict(response)


Handler = TypeVar("Handler", bound=Callable[..., dict[str, Any]])


def publishes_metrics(handler: Handler) -> Handler:
    """Print the invocation's metrics as EMF when it ends, whether it succeeded or not."""

    @functools.wraps(handler)
    def publishing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            return handler(event, context)
        finally:
            if _container is not None:
                _container.metrics.flush()

    return publishing  # type: ignore[return-value]


@logger.inject_lambda_context
@publishes_metrics
def fanout_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS-triggered fan-out: plans events and runs shards, within the time budget."""
    return _handle_sqs_event(event, context)


@logger.inject_lambda_context
@publishes_metrics
def delivery_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS-triggered delivery: sends batches, records outcomes, re-enqueues retries."""
    return _handle_sqs_event(event, context)


@publishes_metrics
def reconcile_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (EventBridge, every minute): one reconciler pass, and the queues' depths
    for the SQS gauges, as the worker's reconciler loop does; see runtime/reconciler."""
    container = _container_pipeline()
    pipeline = container.pipeline
    report = container.loop.run_until_complete(
        reconcile_once(pipeline.pool, pipeline.queues, pipeline.settings)
    )
    with contextlib.suppress(Exception):  # only the gauges go stale
        container.loop.run_until_complete(observe_queue_depths(pipeline.queues))
    return {
        "events_resent": report.events_resent,
        "events_finished": report.events_finished,
        "shards_resent": report.shards_resent,
        "batches_resent": report.batches_resent,
        "given_up": report.given_up,
    }


# Seconds a webhook pass keeps back at the end of an invocation: a pass's calls take at
# most FANOUT_WEBHOOK_TIMEOUT_SECONDS, and a pass is not started without that much left.
_WEBHOOK_MARGIN_SECONDS = 2.0


@publishes_metrics
def webhook_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (EventBridge, every minute): sends the webhooks' due deliveries, pass after
    pass while there are any and time is left, as the worker's webhook task does."""
    container = _container_pipeline()
    settings = container.pipeline.settings

    def time_left() -> float:
        if context is None or not hasattr(context, "get_remaining_time_in_millis"):
            return 0.0  # outside Lambda (tests): one pass
        return float(context.get_remaining_time_in_millis()) / 1000

    async def passes() -> Pass:
        sender = WebhookSender(container.pipeline.pool, settings, keyring(settings))
        total = Pass()
        try:
            await sender.purge()
            while True:
                done = await sender.send_due()
                total.claimed += done.claimed
                total.delivered += done.delivered
                total.retrying += done.retrying
                total.failed += done.failed
                wanted = settings.webhook_timeout_seconds + _WEBHOOK_MARGIN_SECONDS
                if done.claimed < settings.webhook_concurrency or time_left() < wanted:
                    return total
        finally:
            await sender.aclose()

    total = container.loop.run_until_complete(passes())
    return {
        "claimed": total.claimed,
        "delivered": total.delivered,
        "retrying": total.retrying,
        "failed": total.failed,
    }


def close_container() -> None:
    """Close the container's pipeline and loop (tests; a real container is just frozen)."""
    global _container
    if _container is not None and not _container.loop.is_closed():
        _container.loop.run_until_complete(_container.stack.aclose())
        _container.loop.close()
    _container = None
