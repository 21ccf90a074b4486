"""SQS through aiobotocore: the same client against AWS, moto's server or any SQS endpoint.

A ``Queue`` knows its own limits (read from the queue, not guessed) and its
dead-letter queue, and offers the few operations the stages and the worker need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import botocore.exceptions
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from fanout import retry
from fanout.config import ConfigError, Settings, Unreachable, connection_failure
from fanout.errors import FanoutError
from fanout.metrics import SQS_BILLED_REQUESTS, SQS_REQUESTS

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
else:
    SQSClient = Any

log = logging.getLogger(__name__)

# SQS's limits for SendMessageBatch / DeleteMessageBatch / ReceiveMessage.
MAX_BATCH_ENTRIES = 10
MAX_DELAY_SECONDS = 900
# Connections one client opens to SQS at most (a process's descriptors count on it).
SQS_POOL_CONNECTIONS = 64
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class QueueError(FanoutError):
    """SQS refused or lost part of a request after retries."""


@dataclass(frozen=True, slots=True)
class QueueMessage:
    body: str
    message_id: str
    receipt_handle: str
    receive_count: int


@contextlib.asynccontextmanager
async def open_client(settings: Settings, *, max_attempts: int = 5) -> AsyncIterator[SQSClient]:
    """An SQS client for the configured endpoint.

    A loopback endpoint (moto's server in the demo and tests) gets placeholder
    credentials when none are configured, so nothing needs setting up locally. Without
    credentials for any other endpoint this raises ``ConfigError`` at once, and a
    failure to connect inside the ``async with`` comes out as ``Unreachable``, naming
    the endpoint and FANOUT_SQS_ENDPOINT_URL.
    """
    session = get_session()
    options: dict[str, Any] = {
        "region_name": settings.aws_region,
        "endpoint_url": settings.sqs_endpoint_url,
        # Standard retry mode backs off on throttling and connection errors.
        # Reads may wait out a 20 s long poll; connecting should never take long.
        "config": AioConfig(
            max_pool_connections=SQS_POOL_CONNECTIONS,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=40,
        ),
    }
    if await session.get_credentials() is None:
        host = urlparse(settings.sqs_endpoint_url or "").hostname
        if host not in _LOCAL_HOSTS:
            raise ConfigError(_no_credentials(settings))
        options.update(aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
    async with session.create_client("sqs", **options) as client:
        client.meta.events.register("before-call.sqs", _note_request_size)
        # aiobotocore awaits a coroutine handler; the stubs know only botocore's plain ones.
        client.meta.events.register("after-call.sqs", _count_request)  # type: ignore[arg-type]
        try:
            yield client
        except botocore.exceptions.NoCredentialsError:
            raise ConfigError(_no_credentials(settings)) from None
        except Exception as exc:
            if (unreachable := as_unreachable(exc, client.meta.endpoint_url)) is not None:
                raise unreachable from exc
            raise


def _no_credentials(settings: Settings) -> str:
    if settings.sqs_endpoint_url is None:
        return (
            f"FANOUT_SQS_ENDPOINT_URL is not set, so fanout uses AWS SQS ({settings.aws_region}), "
            "and no AWS credentials were found: set FANOUT_SQS_ENDPOINT_URL to a local SQS "
            "(e.g. http://127.0.0.1:5000 for 'python -m moto.server'), or configure AWS "
            "credentials"
        )
    return (
        "no AWS credentials were found for the SQS endpoint in FANOUT_SQS_ENDPOINT_URL: "
        "configure AWS credentials (only a loopback endpoint does without)"
    )


def as_unreachable(exc: BaseException, endpoint: str) -> Unreachable | None:
    """``exc`` as ``Unreachable`` if it says SQS could not be reached; else None."""
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return Unreachable("SQS", endpoint, "FANOUT_SQS_ENDPOINT_URL", connection_failure(exc))
    return None


# SQS bills a request per 64 KB of payload it carries: a 256 KB send counts as four.
BILLING_CHUNK_BYTES = 64 * 1024


def _note_request_size(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    body = params.get("body") or b""
    context["fanout_request_bytes"] = len(body)


async def _count_request(http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
    """Every SQS call, and what SQS bills for it (from the HTTP bodies both ways, which
    overstate the payload by the protocol's few hundred bytes)."""
    response_bytes = len(await http_response.content or b"")  # already read: no I/O
    payload = max(context.get("fanout_request_bytes", 0), response_bytes)
    SQS_REQUESTS.labels(model.name).inc()
    SQS_BILLED_REQUESTS.labels(model.name).inc(max(1, -(-payload // BILLING_CHUNK_BYTES)))


def sqs_usage() -> dict[str, tuple[int, int]]:
    """This process's SQS calls so far: operation -> (requests, billed requests)."""
    billed = {
        s.labels["operation"]: int(s.value)
        for metric in SQS_BILLED_REQUESTS.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    return {
        s.labels["operation"]: (int(s.value), billed.get(s.labels["operation"], 0))
        for metric in SQS_REQUESTS.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


class Queue:
    """One SQS queue and what fanout knows about it."""

    def __init__(
        self,
        client: SQSClient,
        url: str,
        *,
        max_message_bytes: int,
        dead_letter_url: str | None,
        max_receive_count: int | None,
    ) -> None:
        self.client = client
        self.url = url
        self.max_message_bytes = max_message_bytes
        self.dead_letter_url = dead_letter_url
        self.max_receive_count = max_receive_count
        self._depth_checked_at = float("-inf")
        self._last_depth = 0
        self._sent_since_depth = 0  # by this process, since the depth was last read

    async def depth(self) -> int:
        """Messages waiting (visible or delayed), as SQS approximates it."""
        attrs = (
            await self.client.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        )["Attributes"]
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
            attrs.get("ApproximateNumberOfMessagesDelayed", 0)
        )

    async def wait_for_room(
        self, limit: int, *, keep_alive: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Return once the queue holds fewer than ``limit`` messages.

        Depth is asked at most every half second, however many senders call this, so
        the check costs a couple of requests a second, not one per message. Between two
        readings, what this process sent counts on top of the last one: a sender that
        could fill the queue within half a second still stops at ``limit``.
        """
        last_keep_alive = time.monotonic()
        while True:
            now = time.monotonic()
            if now - self._depth_checked_at >= 0.5:
                self._depth_checked_at = now
                self._sent_since_depth = 0  # the reading counts them (sent before it)
                self._last_depth = await self.depth()
            if self._last_depth + self._sent_since_depth < limit:
                return
            if keep_alive is not None and now - last_keep_alive >= 5.0:
                await keep_alive()
                last_keep_alive = now
            await asyncio.sleep(0.1)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    async def open(cls, client: SQSClient, url: str) -> Queue:
        """Read the queue's size limit and redrive policy from SQS itself."""
        attrs = (
            await client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["MaximumMessageSize", "RedrivePolicy"]
            )
        )["Attributes"]
        dead_letter_url = max_receive_count = None
        if "RedrivePolicy" in attrs:
            policy = orjson.loads(attrs["RedrivePolicy"])
            max_receive_count = int(policy["maxReceiveCount"])
            dlq_name = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
            dead_letter_url = (await client.get_queue_url(QueueName=dlq_name))["QueueUrl"]
        return cls(
            client,
            url,
            max_message_bytes=int(attrs.get("MaximumMessageSize", 262_144)),
            dead_letter_url=dead_letter_url,
            max_receive_count=max_receive_count,
        )

    async def send(self, body: str, *, delay_seconds: int = 0) -> None:
        await self.send_many([body], delay_seconds=delay_seconds)

    async def send_many(self, bodies: Sequence[str], *, delay_seconds: int = 0) -> int:
        """Send with as few SendMessageBatch calls as the limits allow; returns the calls.

        A call holds at most 10 messages and, together, at most the queue's message size.
        """
        delay = max(0, min(int(delay_seconds), MAX_DELAY_SECONDS))
        calls = 0
        chunk: list[str] = []
        chunk_bytes = 0
        for body in bodies:
            size = len(body.encode())
            if size > self.max_message_bytes:
                raise QueueError(
                    f"message of {size} bytes exceeds {self.name}'s limit of "
                    f"{self.max_message_bytes}"
                )
            if chunk and (
                len(chunk) == MAX_BATCH_ENTRIES or chunk_bytes + size > self.max_message_bytes
            ):
                await self._send_batch(chunk, delay)
                calls += 1
                chunk, chunk_bytes = [], 0
            chunk.append(body)
            chunk_bytes += size
        if chunk:
            await self._send_batch(chunk, delay)
            calls += 1
        return calls

    async def _send_batch(self, bodies: list[str], delay: int) -> None:
        self._sent_since_depth += len(bodies)
        pending = {str(i): body for i, body in enumerate(bodies)}
        for attempt in range(1, retry.QUEUE_SEND_TRIES + 1):
            response = await self.client.send_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": i, "MessageBody": body, "DelaySeconds": delay}
                    for i, body in pending.items()
                ],
            )
            failed = response.get("Failed", [])
            if not failed:
                return
            # Entries SQS blames on the sender will fail again; give up on those at once.
            if any(f.get("SenderFault") for f in failed):
                reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise QueueError(f"{self.name} refused messages: {reasons}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            await asyncio.sleep(retry.QUEUE_SEND.delay(attempt))
        raise QueueError(f"{self.name} kept failing {len(pending)} messages")

    async def receive(
        self, max_messages: int, *, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[QueueMessage]:
        options: dict[str, Any] = {}
        if visibility_timeout is not None:
            options["VisibilityTimeout"] = visibility_timeout
        response = await self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(max_messages, MAX_BATCH_ENTRIES)),
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            **options,
        )
        return [
            QueueMessage(
                body=m["Body"],
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in response.get("Messages", [])
        ]

    async def delete_many(self, messages: Sequence[QueueMessage]) -> int:
        """Delete with as few DeleteMessageBatch calls as the limits allow; returns how
        many messages SQS would not delete.

        Entries SQS failed on its side (throttling, internal errors) are tried again, as
        ``_send_batch`` does; one it blames on the sender (an expired receipt handle) is
        logged and left. A message not deleted comes back after its visibility timeout
        and is skipped as already done, so this costs a redelivery, not a duplicate push.
        """
        not_deleted = 0
        for start in range(0, len(messages), MAX_BATCH_ENTRIES):
            not_deleted += await self._delete_batch(messages[start : start + MAX_BATCH_ENTRIES])
        return not_deleted

    async def _delete_batch(self, messages: Sequence[QueueMessage]) -> int:
        pending = {str(i): m for i, m in enumerate(messages)}
        refused: list[str] = []
        for attempt in range(1, retry.QUEUE_SEND_TRIES + 1):
            response = await self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": i, "ReceiptHandle": m.receipt_handle} for i, m in pending.items()],
            )
            failed = response.get("Failed", [])
            refused += [
                f"{pending[f['Id']].message_id} ({f.get('Code')}: {f.get('Message')})"
                for f in failed
                if f.get("SenderFault")
            ]
            pending = {f["Id"]: pending[f["Id"]] for f in failed if not f.get("SenderFault")}
            if not pending:
                break
            if attempt < retry.QUEUE_SEND_TRIES:
                await asyncio.sleep(retry.QUEUE_SEND.delay(attempt))
        if refused:
            log.warning("%s would not delete %s", self.name, "; ".join(refused))
        if pending:
            log.warning(
                "%s kept failing to delete %s",
                self.name,
                ", ".join(m.message_id for m in pending.values()),
            )
        return len(refused) + len(pending)

    async def change_visibility_many(self, messages: Sequence[QueueMessage], seconds: int) -> None:
        for start in range(0, len(messages), MAX_BATCH_ENTRIES):
            chunk = messages[start : start + MAX_BATCH_ENTRIES]
            await self.client.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                    for i, m in enumerate(chunk)
                ],
            )

    async def dead_letter(self, message: QueueMessage, reason: str) -> None:
        """Move a message to the dead-letter queue with the reason it failed."""
        if self.dead_letter_url is None:
            raise QueueError(f"{self.name} has no dead-letter queue")
        await self.client.send_message(
            QueueUrl=self.dead_letter_url,
            MessageBody=message.body,
            MessageAttributes={
                "fanout-reason": {"DataType": "String", "StringValue": reason[:1000] or "?"},
                "fanout-source-queue": {"DataType": "String", "StringValue": self.name},
                "fanout-receive-count": {
                    "DataType": "Number",
                    "StringValue": str(message.receive_count),
                },
            },
        )
        await self.delete_many([message])


@dataclass(frozen=True)
class Queues:
    fanout: Queue
    delivery: Queue


def queue_names(settings: Settings) -> dict[str, str]:
    prefix = settings.queue_prefix
    return {"fanout": f"{prefix}-fanout", "delivery": f"{prefix}-delivery"}


async def open_queues(client: SQSClient, settings: Settings) -> Queues:
    """The two work queues, by URL if configured, else by name."""
    names = queue_names(settings)
    urls = {"fanout": settings.fanout_queue_url, "delivery": settings.delivery_queue_url}
    opened = {}
    for role, name in names.items():
        url = urls[role]
        if url is None:
            try:
                url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
            except client.exceptions.QueueDoesNotExist:
                raise QueueError(
                    f"queue {name!r} does not exist: run `fanout queues create` "
                    f"or set FANOUT_{role.upper()}_QUEUE_URL"
                ) from None
        opened[role] = await Queue.open(client, url)
    return Queues(fanout=opened["fanout"], delivery=opened["delivery"])
