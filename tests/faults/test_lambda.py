"""The Lambda handlers, fed real SQS-shaped events built from messages received off SQS."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fanout.config import Settings
from fanout.credentials.sealing import generate_key
from fanout.credentials.stored import keyring
from fanout.notification import Notification
from fanout.queue.admin import create_queues
from fanout.queue.messages import FanoutTask, decode
from fanout.queue.sqs import Queue, open_client, open_queues
from fanout.runtime import lambdas
from fanout.stages.publish import record_event
from fanout.store import connect, create_pool, events, webhooks
from fanout.store.apps import DEFAULT_APP_ID
from fanout.webhooks.addresses import system_resolver
from fanout.webhooks.endpoints import register
from tests.helpers import make_topic
from tests.processes import start_serving, stop
from tests.webhook_receiver import Receiver

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
def sink_process(tmp_path: Path) -> Iterator[str]:
    process, url = start_serving(["sink"], tmp_path / "sink.log")
    try:
        yield url
    finally:
        stop(process)


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


async def _sqs_event(
    settings: Settings, role: str, bodies: list[str] | None = None, count: int | None = None
) -> dict[str, Any]:
    """Send the bodies, then receive ``count`` messages as they become visible (a message
    whose try failed is hidden for its backoff first), or with no count, all that are
    there now; shaped as Lambda's SQS event. The deadline only ends a hung test."""
    async with open_client(settings) as client:
        queues = await open_queues(client, settings)
        queue: Queue = getattr(queues, role)
        for body in bodies or []:
            await queue.send(body)
        if bodies:
            count = len(bodies)
        arn = (await client.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while count is None or len(messages) < count:
            assert time.monotonic() < deadline, f"{len(messages)} of {count} messages in 60s"
            response = await client.receive_message(
                QueueUrl=queue.url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                VisibilityTimeout=30,
            )
            received = response.get("Messages", [])
            if count is None and not received:
                break
            messages += received
            if not received:
                # moto's long poll is not woken by a message whose backoff ends: ask often.
                await asyncio.sleep(0.1)
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
    events = [_event_for(lambda_env) for _ in range(2)]
    one, other = (FanoutTask(event_id).encode() for event_id in events)
    event = asyncio.run(_sqs_event(lambda_env, "fanout", [one, "garbage", other]))
    garbage_id = next(r["messageId"] for r in event["Records"] if r["body"] == "garbage")

    response = lambdas.fanout_handler(event, Context())
    assert lambdas._container is not None
    pool = lambdas._container.pipeline.pool  # opened by the first invocation

    assert response == {"batchItemFailures": [{"itemIdentifier": garbage_id}]}
    # The records not reported were done, not skipped: the garbage between them did not
    # stop the other one, and neither was acknowledged without its work.
    assert asyncio.run(_statuses(lambda_env, events)) == ["fanned_out", "fanned_out"]

    # The delivery function takes the batches the fan-out made: all 40 devices arrive.
    delivery_event = asyncio.run(_sqs_event(lambda_env, "delivery"))
    assert lambdas.delivery_handler(delivery_event, Context()) == {"batchItemFailures": []}
    assert httpx.get(f"{sink_process}/stats").json()["unique"] == 80
    # The second invocation reused the container's database pool and its connections.
    assert lambdas._container.pipeline.pool is pool


async def _statuses(settings: Settings, event_ids: list[int]) -> list[str]:
    conn = await connect(settings.database_dsn())
    try:
        return [(await conn.fetchrow(events.LOAD_EVENT, e))["status"] for e in event_ids]
    finally:
        await conn.close()


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

    second = asyncio.run(_sqs_event(lambda_env, role, count=1))  # back after try 1's backoff
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
    lambdas.fanout_handler(asyncio.run(_sqs_event(lambda_env, "fanout", count=1)), Context())

    async def redrive_and_count() -> tuple[int, int]:
        from fanout.queue.admin import redrive

        async with open_client(lambda_env) as client:
            queues = await open_queues(client, lambda_env)
            moved = await redrive(queues.fanout)
            return moved, await queues.fanout.depth()

    assert asyncio.run(redrive_and_count()) == (1, 1)
    os.environ.pop("LAMBDA_TASK_ROOT", None)


def test_the_scheduled_reconciler_sends_an_event_whose_enqueue_never_happened(
    lambda_env: Settings,
) -> None:
    """On AWS no worker runs: the scheduled function is what finds a stranded event."""
    event_id = _event_for(lambda_env)  # committed as pending; its message never sent

    async def overdue() -> None:
        conn = await connect(lambda_env.database_dsn())
        try:
            await conn.execute("UPDATE events SET due_at = now() WHERE id = $1", event_id)
        finally:
            await conn.close()

    asyncio.run(overdue())
    report = lambdas.reconcile_handler({"source": "aws.scheduler"}, Context())
    assert report["events_resent"] == 1

    async def sent() -> list[object]:
        async with open_client(lambda_env) as client:
            queues = await open_queues(client, lambda_env)
            messages = await queues.fanout.receive(10, wait_seconds=1)
        return [decode(m.body) for m in messages]

    assert asyncio.run(sent()) == [FanoutTask(event_id)]


def test_each_invocation_prints_the_metrics_as_emf_with_the_prometheus_names(
    lambda_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """CloudWatch gets the same series as a worker's /metrics, by the same names: what the
    handlers print (EMF) is read from fanout.metrics, not a list of its own."""
    from prometheus_client import REGISTRY

    from fanout.runtime.emf import documents

    event_id = _event_for(lambda_env)
    lambdas.fanout_handler(
        asyncio.run(_sqs_event(lambda_env, "fanout", [FanoutTask(event_id).encode()])), Context()
    )
    lambdas.delivery_handler(asyncio.run(_sqs_event(lambda_env, "delivery")), Context())
    lambdas.reconcile_handler({"source": "aws.scheduler"}, Context())
    printed = documents(capsys.readouterr().out)

    names: dict[str, list[dict[str, Any]]] = {}
    for document in printed:
        [directive] = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "fanout"
        for metric in directive["Metrics"]:
            names.setdefault(metric["Name"], []).append(document)
    prometheus = {s.name for family in REGISTRY.collect() for s in family.samples}
    assert set(names) <= prometheus  # one set of names
    for name in (
        "fanout_sqs_requests_total",
        "fanout_provider_outcomes_total",
        "fanout_provider_accept_latency_seconds_sum",
        "fanout_provider_accept_latency_seconds_count",
        "fanout_reconciler_actions_total",
        "fanout_sqs_messages",
        "fanout_events_finished_total",
    ):
        assert name in names, f"{name} not published: {sorted(names)}"
    # (The first flush of a container publishes what this test process counted before too.)
    outcomes = names["fanout_provider_outcomes_total"]
    accepted = [d for d in outcomes if d["outcome"] == "ok" and d["provider"] == "sink"]
    assert sum(_emf_value(d["fanout_provider_outcomes_total"]) for d in accepted) >= 40
    assert {d["reason"] for d in accepted} == {"none"}
    latencies = [
        d for d in names["fanout_provider_accept_latency_seconds_count"] if d["provider"] == "sink"
    ]
    assert (
        sum(_emf_value(d["fanout_provider_accept_latency_seconds_count"]) for d in latencies) >= 40
    )
    delivered = [d for d in names["fanout_events_finished_total"] if d["status"] == "delivered"]
    assert delivered

    # A counter publishes what it gained since the last invocation: nothing, here.
    lambdas.reconcile_handler({"source": "aws.scheduler"}, Context())
    again = documents(capsys.readouterr().out)
    assert not [d for d in again if "fanout_provider_outcomes_total" in d]
    assert [d for d in again if "fanout_sqs_messages" in d]  # a gauge: its value every time


def _emf_value(value: float | list[float]) -> float:
    """A metric's value in an EMF document: a number, or a list of them (powertools)."""
    return sum(value) if isinstance(value, list) else value


def test_the_scheduled_webhook_function_sends_the_outbox_signed(
    lambda_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On AWS no worker runs: the scheduled WebhookFunction sends the webhooks' outbox."""
    key = generate_key()
    monkeypatch.setenv("FANOUT_SECRET_KEY", key)
    monkeypatch.setenv("FANOUT_WEBHOOK_ALLOW_PRIVATE", "true")  # the receiver is on loopback
    monkeypatch.setenv("FANOUT_WEBHOOK_CONCURRENCY", "8")
    receiver = Receiver()
    receiver.up()
    settings = lambda_env.model_copy(update={"secret_key": SecretStr(key)})

    async def outbox() -> None:
        conn = await connect(settings.database_dsn())
        try:
            _, receiver.secret = await register(
                conn,
                app_id=DEFAULT_APP_ID,
                url=receiver.url,
                kinds=["devices.retired"],
                keyring=keyring(settings),
                resolver=system_resolver,
                allow_private=True,
            )
            for n in range(20):
                await webhooks.enqueue(
                    conn, app_id=DEFAULT_APP_ID, kind="devices.retired", payload={"n": n}
                )
        finally:
            await conn.close()

    try:
        asyncio.run(outbox())
        report = lambdas.webhook_handler({"source": "aws.scheduler"}, Context())
    finally:
        receiver.down()
    # Passes of 8 while any are due and time is left: all 20 in one invocation.
    assert (report["claimed"], report["delivered"]) == (20, 20)
    assert receiver.unverified == [] and len(receiver.by_id()) == 20
