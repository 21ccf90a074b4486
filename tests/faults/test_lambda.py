"""The Lambda handlers, fed real SQS-shaped events built from messages received off SQS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fanout.config import Settings
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.messages import FanoutTask
from fanout.queue.sqs import Queue, open_client, open_queues
from fanout.runtime import lambdas
from fanout.stages.publish import record_event
from fanout.store import create_pool
from tests.api.conftest import free_port
from tests.helpers import make_topic

NOTE = Notification(title="New book")


class Context:
    """What the Lambda runtime passes: a deadline, and names for the logs."""

    function_name = "fanout-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:fanout-test"
    aws_request_id = "test-request"

    def __init__(self, seconds: float = 300) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


@pytest.fixture
def sink_process() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fanout", "sink", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/stats")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait()


@pytest.fixture
def lambda_env(
    settings: Settings, sink_process: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The environment a deployed function has; LAMBDA_TASK_ROOT as the runtime sets it."""
    asyncio.run(_create_queues(settings))
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    monkeypatch.setenv("FANOUT_DATABASE_URL", settings.database_dsn())
    monkeypatch.setenv("FANOUT_SQS_ENDPOINT_URL", settings.sqs_endpoint_url or "")
    monkeypatch.setenv("FANOUT_QUEUE_PREFIX", settings.queue_prefix)
    monkeypatch.setenv("FANOUT_PROVIDER", "sink")
    monkeypatch.setenv("FANOUT_SINK_URL", sink_process)
    monkeypatch.setenv("FANOUT_MAX_RECEIVE_COUNT", str(settings.max_receive_count))
    yield settings
    lambdas.close_container()


async def _create_queues(settings: Settings) -> None:
    async with open_client(settings) as client:
        await create_queues(client, settings)


async def _sqs_event(settings: Settings, role: str, bodies: list[str]) -> dict[str, Any]:
    """Send the bodies, receive them back, and shape them as Lambda's SQS event."""
    async with open_client(settings) as client:
        queues = await open_queues(client, settings)
        queue: Queue = getattr(queues, role)
        for body in bodies:
            await queue.send(body)
        arn = (await client.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        messages: list[dict[str, Any]] = []
        while len(messages) < len(bodies):
            response = await client.receive_message(
                QueueUrl=queue.url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                VisibilityTimeout=30,
            )
            messages += response.get("Messages", [])
    return _lambda_event(messages, arn)


def _event_for(settings: Settings) -> int:
    async def make() -> int:
        pool = await create_pool(settings)
        try:
            topic = await make_topic(pool, 40)
            return (await record_event(pool, NOTE, topic=topic.key)).event_id
        finally:
            await pool.close()

    return asyncio.run(make())


def test_only_the_failed_records_come_back_as_batch_item_failures(
    lambda_env: Settings, sink_process: str
) -> None:
    one, other = (FanoutTask(_event_for(lambda_env)).encode() for _ in range(2))
    event = asyncio.run(_sqs_event(lambda_env, "fanout", [one, "garbage", other]))
    ids = [r["messageId"] for r in event["Records"]]
    garbage_id = next(r["messageId"] for r in event["Records"] if r["body"] == "garbage")

    response = lambdas.fanout_handler(event, Context())
    assert lambdas._container is not None
    pool = lambdas._container.pipeline.pool  # opened by the first invocation

    assert response == {"batchItemFailures": [{"itemIdentifier": garbage_id}]}
    assert len(ids) == 3

    # The delivery function takes the batches the fan-out made: all 40 devices arrive.
    delivery_event = asyncio.run(_receive_all(lambda_env, "delivery"))
    assert lambdas.delivery_handler(delivery_event, Context()) == {"batchItemFailures": []}
    assert httpx.get(f"{sink_process}/stats").json()["unique"] == 80
    # The second invocation reused the container's database pool and its connections.
    assert lambdas._container.pipeline.pool is pool


async def _receive_all(settings: Settings, role: str) -> dict[str, Any]:
    async with open_client(settings) as client:
        queues = await open_queues(client, settings)
        queue: Queue = getattr(queues, role)
        arn = (await client.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        response = await client.receive_message(
            QueueUrl=queue.url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=1
        )
    return _lambda_event(response.get("Messages", []), arn)


def _lambda_event(messages: list[Any], arn: str) -> dict[str, Any]:
    """Received SQS messages, shaped as the event Lambda's SQS event source sends."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("garbage", "not JSON"),
        ('{"kind": "fanout", "v": 1, "event": 987654321}', "unknown event"),
        (
            '{"kind": "delivery", "v": 1, "event": 1, "key": "k", "attempt": 0, '
            '"notification": {"title": "t"}, "devices": {"apns": ['
            + ",".join(['[1, "t", null]'] * 20_001)
            + "]}}",
            "more than 20000 devices",
        ),
    ],
    ids=["garbage", "unknown-event", "over-size"],
)
def test_poison_ends_in_the_dlq_with_its_reason_after_max_receive_count(
    lambda_env: Settings, body: str, reason: str
) -> None:
    role = "delivery" if '"delivery"' in body else "fanout"
    first = asyncio.run(_sqs_event(lambda_env, role, [body]))
    assert lambdas.delivery_handler(first, Context())["batchItemFailures"]  # try 1: retried

    time.sleep(1.2)  # the backoff after try 1
    second = asyncio.run(_receive_all(lambda_env, role))
    assert second["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    # Try 2 is the last (maxReceiveCount=2): dead-lettered, so not a failure for Lambda.
    assert lambdas.delivery_handler(second, Context()) == {"batchItemFailures": []}

    letters = asyncio.run(_peek(lambda_env, role))
    assert len(letters) == 1 and reason in letters[0].reason
    assert letters[0].body == body


async def _peek(settings: Settings, role: str) -> list[Any]:
    from fanout.queue.admin import peek_dead_letters

    async with open_client(settings) as client:
        queues = await open_queues(client, settings)
        return await peek_dead_letters(getattr(queues, role))


def test_dlq_redrive_puts_letters_back(lambda_env: Settings) -> None:
    first = asyncio.run(_sqs_event(lambda_env, "fanout", ["garbage"]))
    lambdas.fanout_handler(first, Context())
    time.sleep(1.2)
    lambdas.fanout_handler(asyncio.run(_receive_all(lambda_env, "fanout")), Context())

    async def redrive_and_count() -> tuple[int, int]:
        from fanout.queue.admin import redrive

        async with open_client(lambda_env) as client:
            queues = await open_queues(client, lambda_env)
            moved = await redrive(queues.fanout)
            return moved, await queues.fanout.depth()

    assert asyncio.run(redrive_and_count()) == (1, 1)
    os.environ.pop("LAMBDA_TASK_ROOT", None)
