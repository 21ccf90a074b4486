"""The seed's literal design, for comparison: one SQS message per subscriber.

    python bench/baseline.py fanout   TOPIC EVENT_ID   (then exits)
    python bench/baseline.py delivery                  (until SIGTERM)

Fan-out pages the topic's subscribers (keyset, as fanout does) and sends one message per
subscriber, ten to a SendMessageBatch call. Delivery receives ten at a time, looks up each
subscriber's devices in PostgreSQL and sends one APNs request per device through the
same provider code, then deletes what it handled. Same libraries as fanout (asyncpg,
aiobotocore, the h2 client); settings come from the FANOUT_* environment, the queue is
<prefix>-baseline. Outcomes are recorded one row per subscriber, so bench/pipeline.py can
tell when the last notification went out. Each process ends by printing one line,
``baseline usage {...}``: its SQS calls, and the invocations and handler time a Lambda
deployment of it would be billed for (bench/cost.py).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import orjson

from fanout.config import Settings
from fanout.notification import Notification, render
from fanout.providers import build_providers
from fanout.queue.messages import Device
from fanout.queue.sqs import Queue, open_client, sqs_usage
from fanout.store import create_pool

PAGE = 5000
CONCURRENCY = 8  # receive loops, like fanout's worker_concurrency

SETUP = """
CREATE TABLE IF NOT EXISTS baseline_sent (
    event_id bigint NOT NULL, user_id bigint NOT NULL, sent integer NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, user_id)
)
"""
SUBSCRIBERS_PAGE = """
SELECT user_id FROM subscriptions WHERE topic_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3
"""
USER_DEVICES = "SELECT id, token FROM devices WHERE user_id = $1 AND active"
RECORD_SENT = """
INSERT INTO baseline_sent (event_id, user_id, sent) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
"""


async def queue(client: object, settings: Settings) -> Queue:
    name = f"{settings.queue_prefix}-baseline"
    url = (await client.create_queue(QueueName=name))["QueueUrl"]  # type: ignore[attr-defined]
    return await Queue.open(client, url)  # type: ignore[arg-type]


def report_usage(invocations: int, handler_seconds: float) -> None:
    """One line for bench/pipeline.py: what a Lambda deployment of this would be billed."""
    usage = {"sqs": sqs_usage(), "invocations": invocations, "handler_seconds": handler_seconds}
    print("baseline usage", orjson.dumps(usage).decode(), flush=True)


async def fan_out(settings: Settings, topic_id: int, event_id: int) -> None:
    started = time.monotonic()
    pool = await create_pool(settings)
    async with open_client(settings) as client:
        baseline = await queue(client, settings)
        cursor = 0
        async with pool.acquire() as conn:
            await conn.execute(SETUP)
            while rows := await conn.fetch(SUBSCRIBERS_PAGE, topic_id, cursor, PAGE):
                bodies = [
                    orjson.dumps({"event": event_id, "user": r["user_id"]}).decode() for r in rows
                ]
                await baseline.send_many(bodies)
                cursor = rows[-1]["user_id"]
    await pool.close()
    report_usage(1, time.monotonic() - started)


async def deliver(settings: Settings) -> None:
    pool = await create_pool(settings)
    apns = build_providers(settings)["apns"]
    notification = render(Notification(title="New book"), None, collapse_key="baseline")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    async with open_client(settings) as client:
        baseline = await queue(client, settings)

        invocations, handler_seconds = 0, 0.0

        async def consume() -> None:
            nonlocal invocations, handler_seconds
            while not stopping.is_set():
                messages = await baseline.receive(10, wait_seconds=settings.poll_wait_seconds)
                # On Lambda, each non-empty receive is an invocation (batch size 10),
                # billed for the time its messages take.
                started = time.monotonic()
                for message in messages:
                    body = orjson.loads(message.body)
                    async with pool.acquire() as conn:
                        rows = await conn.fetch(USER_DEVICES, body["user"])
                        devices = [Device(r["id"], "apns", r["token"]) for r in rows]
                        outcomes = await apns.send(notification, devices) if devices else []
                        sent = sum(o.kind.value == "ok" for o in outcomes)
                        await conn.execute(
                            RECORD_SENT,
                            body["event"],
                            body["user"],
                            sent,
                        )
                if messages:
                    invocations += 1
                    handler_seconds += time.monotonic() - started
                    await baseline.delete_many(messages)

        consumers = [asyncio.create_task(consume()) for _ in range(CONCURRENCY)]
        print("baseline delivery consuming", flush=True)  # bench/pipeline.py waits for this
        await stopping.wait()  # bench/pipeline.py stops it once everything was sent
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    await apns.aclose()
    await pool.close()
    report_usage(invocations, handler_seconds)


def main() -> None:
    settings = Settings()
    if sys.argv[1] == "fanout":
        asyncio.run(fan_out(settings, int(sys.argv[2]), int(sys.argv[3])))
    else:
        asyncio.run(deliver(settings))


if __name__ == "__main__":
    main()
