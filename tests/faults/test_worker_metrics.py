"""`fanout worker` serves its metrics: a real worker process, scraped over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from fanout.config import Settings
from fanout.local.sink import EmbeddedSink
from fanout.notification import Notification
from fanout.queue.sqs import Queues
from fanout.stages.publish import publish
from tests.faults.conftest import WorkerProcess, sink_worker, wait_until_delivered
from tests.helpers import make_topic

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def metrics_url(worker: WorkerProcess, timeout: float = 60) -> str:
    """The URL the worker's log says it serves its metrics at (it chose a free port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving metrics on (http://\S+)", worker.log_file.read_text())
        if found:
            return found.group(1)
        assert worker.running, worker.log_file.read_text()[-2000:]
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never said where it serves its metrics")


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=60) as client:  # a busy worker on a loaded machine
        response = await client.get(url)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_a_worker_serves_provider_latency_reconciler_and_sqs_metrics(
    fault_settings: Settings,
    pool: asyncpg.Pool,
    queues: Queues,
    sink: EmbeddedSink,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    worker = sink_worker(
        fault_settings,
        "all",
        sink.url,
        tmp_path,
        FANOUT_METRICS_PORT="0",  # any free port; the log says which
        FANOUT_RECONCILE_INTERVAL_SECONDS="0.5",
    )
    workers.append(worker)
    worker.start()
    url = await metrics_url(worker)
    assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise

    devices = 30
    topic = await make_topic(pool, devices)
    event = await publish(pool, queues, Notification(title="New book"), topic=topic.key)
    await wait_until_delivered(pool, event.event_id, devices)

    # The SQS gauges are set by the reconciler loop after its pass, and the event counted
    # finished once the worker has read the answer to the statement that ended it (the
    # test may see that commit first): scrape until both are.
    deadline = time.monotonic() + 60
    dlq = {"queue": "delivery_dlq", "state": "visible"}
    finished = {"status": "delivered", "app": "default"}
    while (
        value(samples := await scrape(url), "fanout_sqs_messages", **dlq) is None
        or (value(samples, "fanout_events_finished_total", **finished) or 0) < 1
    ):
        assert time.monotonic() < deadline, "no SQS gauges or event finished in 60 s"
        await asyncio.sleep(0.2)

    ok = {"provider": "sink", "app": "", "outcome": "ok", "reason": ""}  # the sink: no app
    assert value(samples, "fanout_provider_outcomes_total", **ok) == devices
    latency = "fanout_provider_accept_latency_seconds"
    sink = {"provider": "sink", "app": ""}
    assert value(samples, f"{latency}_count", **sink) == devices
    assert value(samples, f"{latency}_bucket", **sink, le="+Inf") == devices
    assert (value(samples, f"{latency}_sum", **sink) or 0) > 0
    for kind in ("event_resent", "shard_resent", "batch_resent", "given_up"):
        assert value(samples, "fanout_reconciler_actions_total", kind=kind) is not None
    assert value(samples, "fanout_events_finished_total", **finished) == 1
    assert value(samples, "fanout_sqs_requests_total", operation="ReceiveMessage")
    assert value(samples, "fanout_sqs_messages", queue="fanout_dlq", state="visible") == 0
