"""The long-running worker: long-polls both queues and runs the pipeline on what arrives.

For every message: success deletes it (in the background, ten to a DeleteMessageBatch:
``queue.deletions``); a failure follows ``Pipeline.run_message``'s
policy (hidden for a backoff, or dead-lettered with its reason on the last allowed
try), so poison never blocks a queue nor kills the worker. Messages in flight have
their visibility extended while they run. On SIGTERM the worker stops receiving, lets
in-flight messages finish within a grace period, releases the rest at once and sends
the deletes still waiting.

A worker that cannot reach the database or SQS says so at once, naming the setting
that points there, and keeps trying: it is a service, and what it waits for may be
starting too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fanout import retry
from fanout.config import Settings, Unreachable
from fanout.credentials.stored import keyring
from fanout.queue.deletions import Deletions
from fanout.queue.sqs import Queue, QueueMessage, as_unreachable, open_client, open_queues
from fanout.runtime import heap
from fanout.runtime.listening import AddressSettings, cannot_serve
from fanout.runtime.pipeline import Pipeline, Result
from fanout.runtime.reconciler import run_pacer, run_reconciler
from fanout.runtime.schema import check_schema
from fanout.store import connect
from fanout.webhooks.sender import WebhookSender

log = logging.getLogger(__name__)

Runner = Callable[[Queue, QueueMessage], Awaitable[tuple[Result, str | None]]]


@dataclass
class ConsumerStats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    dead_lettered: int = 0
    deferred: int = 0  # copies of work another invocation held, back when its lease ends
    reasons: dict[str, int] = field(default_factory=dict)


class QueueConsumer:
    """Runs ``handle`` on one queue's messages, up to ``concurrency`` at a time."""

    def __init__(
        self,
        queue: Queue,
        run: Runner,
        *,
        concurrency: int,
        wait_seconds: int,
        visibility_timeout: int,
        shutdown_grace: float,
        delete_linger: float,
    ) -> None:
        self.queue = queue
        self.run_message = run
        self.concurrency = concurrency
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.shutdown_grace = shutdown_grace
        self.stats = ConsumerStats()
        self.deletions = Deletions(queue.delete_many, linger=delete_linger)
        self._running: dict[asyncio.Task[None], tuple[QueueMessage, float]] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        heartbeat = asyncio.create_task(self._extend_visibility_forever())
        errors_in_a_row = 0
        try:
            while not stopping.is_set():
                if len(self._running) >= self.concurrency:
                    await self._wait_for_a_free_slot(stopping)
                    continue
                try:
                    messages = await self._receive(self.concurrency - len(self._running), stopping)
                    errors_in_a_row = 0
                except Exception as exc:  # the endpoint is down or refusing: back off, go on
                    errors_in_a_row += 1
                    pause = retry.RECONNECT.delay(errors_in_a_row)
                    log.warning(
                        "receive from %s failed: %s; retrying in %.1fs",
                        self.queue.name,
                        as_unreachable(exc, self.queue.client.meta.endpoint_url) or repr(exc),
                        pause,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), pause)
                    continue
                for message in messages:
                    self.stats.received += 1
                    task = asyncio.create_task(self._process(message))
                    self._running[task] = (message, time.monotonic())
                    task.add_done_callback(self._running.pop)
        finally:
            heartbeat.cancel()
            stopped_at = time.monotonic()
            await self._drain()
            # The deletes still waiting go now, within what is left of the grace (a second
            # at least: they are what spares the next worker a redelivery of each).
            left = self.shutdown_grace - (time.monotonic() - stopped_at)
            await self.deletions.close(max(left, min(1.0, self.shutdown_grace)))

    async def _wait_for_a_free_slot(self, stopping: asyncio.Event) -> None:
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait([stop, *self._running], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    async def _receive(self, room: int, stopping: asyncio.Event) -> list[QueueMessage]:
        """Long-poll, but give up the poll as soon as the worker is told to stop."""
        receive = asyncio.create_task(
            self.queue.receive(
                room, wait_seconds=self.wait_seconds, visibility_timeout=self.visibility_timeout
            )
        )
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait([receive, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not receive.done():
            # Anything SQS handed out for this poll reappears after the visibility timeout.
            receive.cancel()
            return []
        return receive.result()

    async def _process(self, message: QueueMessage) -> None:
        result, reason = await self.run_message(self.queue, message)
        if result is Result.DEFERRED:
            self.stats.deferred += 1
            return
        if result is Result.RETRY or result is Result.DEAD_LETTERED:
            self.stats.failed += 1
            kind = (reason or "?").split(":", 1)[0]
            self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
            self.stats.dead_lettered += result is Result.DEAD_LETTERED
            return
        self.stats.succeeded += 1
        # Deleted in the background with others: the slot takes the next message at once.
        self.deletions.add(message)

    async def _extend_visibility_forever(self) -> None:
        """Keep long-running messages hidden, so nobody else starts them meanwhile."""
        period = max(1.0, self.visibility_timeout / 3)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            old = [m for m, started in self._running.values() if now - started >= period]
            if old:
                try:
                    await self.queue.change_visibility_many(old, self.visibility_timeout)
                except Exception as exc:
                    log.warning("could not extend visibility on %s: %r", self.queue.name, exc)

    async def _drain(self) -> None:
        """Let running messages finish within the grace period; release the rest."""
        if not self._running:
            return
        _, unfinished = await asyncio.wait(list(self._running), timeout=self.shutdown_grace)
        if not unfinished:
            return
        released = [self._running[task][0] for task in unfinished if task in self._running]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        log.warning("releasing %d unfinished message(s) on %s", len(released), self.queue.name)
        with contextlib.suppress(Exception):
            await self.queue.change_visibility_many(released, 0)


def serve_metrics(settings: Settings) -> str:
    """Serve this process's metrics (``fanout.metrics``) for Prometheus at
    ``FANOUT_METRICS_HOST:FANOUT_METRICS_PORT``; returns the URL (also logged).

    prometheus_client's own server, in a thread of its own: a scrape never waits for the
    event loop, nor the loop for a scrape.
    """
    from prometheus_client import start_http_server

    assert settings.metrics_port is not None
    try:
        server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        where = AddressSettings("FANOUT_METRICS_HOST", "FANOUT_METRICS_PORT")
        host, port = settings.metrics_host, settings.metrics_port
        raise cannot_serve(exc, host, port, "metrics", where) from None
    host, port = str(server.server_address[0]), server.server_address[1]
    url = f"http://{host}:{port}/metrics"
    log.info("serving metrics on %s", url)
    return url


async def wait_until_reachable(settings: Settings, stopping: asyncio.Event) -> bool:
    """Return True once the database and both queues answer, False if told to stop first;
    raise ``SchemaNotMigrated`` if the database answers without fanout's schema.

    Each try asks once, without the SQS client's own retries, so the first failure is
    logged at once (not after ~10 s of retries), then again at every retry.
    """
    failures = 0
    while not stopping.is_set():
        try:
            conn = await connect(
                settings.database_dsn(), connect_timeout=10, pooler=settings.database_pooler
            )
            try:
                await check_schema(conn, settings.database_dsn())  # no use waiting for that
            finally:
                await conn.close()
            async with open_client(settings, max_attempts=1) as client:
                await open_queues(client, settings)
        except Unreachable as exc:
            failures += 1
            pause = retry.RECONNECT.delay(failures)
            log.error("%s; trying again in %.0fs", exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            continue
        if failures:
            log.warning("the database and SQS answer now, after %d failed tries", failures)
        return True
    return False


def build_consumers(
    pipeline: Pipeline, roles: tuple[str, ...], stopping: asyncio.Event
) -> list[QueueConsumer]:
    settings = pipeline.settings

    def time_left() -> float:
        # A stopping worker has no time left: a shard stops at its next page, checkpoints,
        # gives its lease up and sends itself again, so a new worker goes on at once.
        return 0.0 if stopping.is_set() else math.inf

    async def run(queue: Queue, message: QueueMessage) -> tuple[Result, str | None]:
        return await pipeline.run_message(queue, message, time_left=time_left)

    queues = {"fanout": pipeline.queues.fanout, "delivery": pipeline.queues.delivery}
    # Fan-out shards are few and each one is a long database stream; batches are many.
    concurrency = {"fanout": settings.fanout_concurrency, "delivery": settings.worker_concurrency}
    return [
        QueueConsumer(
            queues[role],
            run,
            concurrency=concurrency[role],
            wait_seconds=settings.poll_wait_seconds,
            visibility_timeout=settings.visibility_timeout,
            shutdown_grace=settings.shutdown_grace_seconds,
            delete_linger=settings.delete_linger_seconds,
        )
        for role in roles
    ]


async def run_worker(
    settings: Settings,
    stopping: asyncio.Event,
    *,
    roles: tuple[str, ...] = ("fanout", "delivery"),
    pipeline: Pipeline | None = None,
    settle_heap: bool = False,
) -> list[QueueConsumer]:
    """Consume until ``stopping`` is set; returns the consumers (with their stats).
    ``settle_heap``: the process is this worker's own (`fanout worker`), so once the
    pipeline is open its garbage collector is tuned for it (``runtime.heap``)."""
    async with contextlib.AsyncExitStack() as stack:
        while pipeline is None:
            if not await wait_until_reachable(settings, stopping):
                return []
            try:
                pipeline = await stack.enter_async_context(Pipeline.open(settings))
            except Unreachable as exc:  # it answered a moment ago: look again
                log.error("%s", exc)
        consumers = build_consumers(pipeline, roles, stopping)
        if settle_heap:
            heap.settle()
        log.info("worker consuming %s", ", ".join(c.queue.name for c in consumers))
        # The webhooks' outbox is sent by every worker (FANOUT_WEBHOOK_CONCURRENCY each).
        webhooks = WebhookSender(pipeline.pool, pipeline.settings, keyring(pipeline.settings))
        await asyncio.gather(
            run_reconciler(pipeline.pool, pipeline.queues, pipeline.settings, stopping),
            webhooks.run(stopping),
            run_pacer(pipeline.pool, pipeline.queues, pipeline.settings, stopping),
            *(c.run(stopping) for c in consumers),
        )
        return consumers
    raise AssertionError("unreachable")
