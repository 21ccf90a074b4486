"""Queue administration: creating the queues with their dead-letter queues, and the
dead-letter tools behind ``fanout dlq`` (list, show, redrive).

Kept apart from ``sqs``, which holds only what the stages and runtimes do per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from fanout.config import Settings
from fanout.metrics import SQS_MESSAGES, SQS_OLDEST_MESSAGE_AGE
from fanout.queue.sqs import MAX_BATCH_ENTRIES, Queue, QueueError, Queues, queue_names

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
else:
    SQSClient = Any

DLQ_RETENTION_SECONDS = 14 * 24 * 3600  # the longest SQS keeps a message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    body: str
    reason: str
    receive_count: str
    source_queue: str


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """What one queue holds, as SQS approximates it."""

    name: str
    waiting: int  # visible, ready to be received
    in_flight: int  # received, neither deleted nor visible again yet
    delayed: int  # sent with a delay (delivery retries) that has not passed
    role: str = ""  # fanout, delivery, fanout_dlq, delivery_dlq: the metrics' queue label
    # Seconds, where the endpoint reports it among the queue's attributes; AWS reports it
    # only to CloudWatch (AWS/SQS ApproximateAgeOfOldestMessage), moto not at all.
    oldest_age: float | None = None


async def queue_depths(queues: Queues) -> list[QueueDepth]:
    """Both work queues and their dead-letter queues, in that order."""
    urls = []
    for role, queue in (("fanout", queues.fanout), ("delivery", queues.delivery)):
        urls.append((role, queue.url))
        if queue.dead_letter_url:
            urls.append((f"{role}_dlq", queue.dead_letter_url))
    depths = []
    for role, url in urls:
        # "All": asking for ApproximateAgeOfOldestMessage by name is refused where the
        # endpoint does not know it; among all attributes it is there or it is not.
        answer = await queues.fanout.client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["All"]
        )
        attrs: dict[str, str] = {str(k): v for k, v in answer["Attributes"].items()}
        oldest = attrs.get("ApproximateAgeOfOldestMessage")
        depths.append(
            QueueDepth(
                name=url.rstrip("/").rsplit("/", 1)[-1],
                waiting=int(attrs.get("ApproximateNumberOfMessages", 0)),
                in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
                role=role,
                oldest_age=None if oldest is None else float(oldest),
            )
        )
    return depths


async def observe_queue_depths(queues: Queues) -> None:
    """Set the SQS gauges (``fanout_sqs_messages``, ``..._oldest_message_age_seconds``)."""
    for depth in await queue_depths(queues):
        SQS_MESSAGES.labels(depth.role, "visible").set(depth.waiting)
        SQS_MESSAGES.labels(depth.role, "in_flight").set(depth.in_flight)
        SQS_MESSAGES.labels(depth.role, "delayed").set(depth.delayed)
        if depth.oldest_age is not None:
            SQS_OLDEST_MESSAGE_AGE.labels(depth.role).set(depth.oldest_age)


def _require_dlq(queue: Queue) -> str:
    if queue.dead_letter_url is None:
        raise QueueError(f"{queue.name} has no dead-letter queue")
    return queue.dead_letter_url


async def peek_dead_letters(queue: Queue, limit: int = 10) -> list[DeadLetter]:
    """Up to ``limit`` messages of the queue's DLQ, left where they are.

    Received with a visibility timeout of 0, so they stay visible to everyone else;
    SQS may return the same message twice, so results are told apart by id.
    """
    url = _require_dlq(queue)
    seen: dict[str, DeadLetter] = {}
    for _ in range(max(1, limit // MAX_BATCH_ENTRIES) * 3):
        response = await queue.client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=MAX_BATCH_ENTRIES,
            VisibilityTimeout=0,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            attrs: dict[str, Any] = dict(m.get("MessageAttributes", {}))

            def attribute(name: str, default: str, attrs: dict[str, Any] = attrs) -> str:
                return str(attrs.get(name, {}).get("StringValue", default))

            seen[m["MessageId"]] = DeadLetter(
                message_id=m["MessageId"],
                body=m["Body"],
                reason=attribute("fanout-reason", "(no reason recorded)"),
                receive_count=attribute("fanout-receive-count", "?"),
                source_queue=attribute("fanout-source-queue", queue.name),
            )
        if len(seen) >= limit:
            break
    return list(seen.values())[:limit]


async def redrive(queue: Queue, limit: int | None = None) -> int:
    """Move dead letters back to their queue (fixed code, or a dependency back up)."""
    url = _require_dlq(queue)
    moved = 0
    while limit is None or moved < limit:
        room = MAX_BATCH_ENTRIES if limit is None else min(MAX_BATCH_ENTRIES, limit - moved)
        response = await queue.client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=room, VisibilityTimeout=60, WaitTimeSeconds=0
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        # Sent before deleted: a crash in between duplicates a message, never loses one.
        await queue.send_many([m["Body"] for m in messages])
        await queue.client.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        moved += len(messages)
    return moved


async def create_queues(client: SQSClient, settings: Settings) -> dict[str, str]:
    """Create both queues and their DLQs with redrive policies; safe to run again."""
    created = {}
    for role, name in queue_names(settings).items():
        dlq_url = await _create_or_update(
            client, f"{name}-dlq", {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
        )
        dlq_arn = (
            await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        )["Attributes"]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count}
        url = await _create_or_update(
            client,
            name,
            {
                "VisibilityTimeout": str(settings.visibility_timeout),
                "RedrivePolicy": orjson.dumps(redrive).decode(),
            },
        )
        created[role] = url
        created[f"{role}-dlq"] = dlq_url
    return created


async def _create_or_update(client: SQSClient, name: str, attributes: dict[str, str]) -> str:
    try:
        url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
    except client.exceptions.QueueDoesNotExist:
        return (await client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]  # type: ignore[arg-type]
    await client.set_queue_attributes(QueueUrl=url, Attributes=attributes)  # type: ignore[arg-type]
    return url
