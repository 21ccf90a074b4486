"""Messages done with, deleted in the background, up to ten per DeleteMessageBatch.

A worker that deleted each message as it finished paid a round trip per message and held
the message's slot meanwhile; with many small delivery batches (100 apps of 1,000 devices
against one app of 100,000) that fixed cost showed. Here a finished message waits at most
``linger`` seconds for nine others, then goes in one call with them, while its slot takes
the next message at once.

Losing a delete is safe: the message comes back after its visibility timeout and its
stage finds the work done in PostgreSQL (a batch or shard whose status is ``done`` is
skipped, and one another invocation holds is left to it), so a redelivery costs a receive,
never a second push. That is what makes it right to delete late, and to give up the
deletes still waiting when a worker is stopped for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from fanout.queue.sqs import MAX_BATCH_ENTRIES, QueueMessage

log = logging.getLogger(__name__)

# Deletes the messages; returns how many it could not (see ``Queue.delete_many``).
Delete = Callable[[Sequence[QueueMessage]], Awaitable[int]]


class Deletions:
    """Collects finished messages and deletes them with ``delete``, ``MAX_BATCH_ENTRIES``
    to a call: at once when that many wait, else ``linger`` seconds after the oldest came.
    At most ``at_once`` calls are in flight. ``close`` sends whatever waits."""

    def __init__(self, delete: Delete, *, linger: float, at_once: int = 4) -> None:
        self._delete = delete
        self.linger = linger
        self._waiting: list[QueueMessage] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Semaphore(at_once)
        self._sending: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.deleted = 0  # messages SQS said it deleted
        self.calls = 0  # delete calls made

    @property
    def waiting(self) -> int:
        """Messages not yet handed to a delete call."""
        return len(self._waiting)

    def add(self, message: QueueMessage) -> None:
        """Delete ``message`` soon. After ``close`` it is deleted at once, alone."""
        self._waiting.append(message)
        if self._closed:
            self._send_all_waiting()
            return
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
        self._arrived.set()

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.linger  # the oldest waiting message's last moment
            while len(self._waiting) < MAX_BATCH_ENTRIES and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            await self._room.acquire()  # a slow SQS holds the next call back, not the worker
            chunk = self._waiting[:MAX_BATCH_ENTRIES]
            del self._waiting[:MAX_BATCH_ENTRIES]
            self._start(chunk, held=True)

    def _send_all_waiting(self) -> None:
        while self._waiting:
            chunk = self._waiting[:MAX_BATCH_ENTRIES]
            del self._waiting[:MAX_BATCH_ENTRIES]
            self._start(chunk, held=False)

    def _start(self, chunk: list[QueueMessage], *, held: bool) -> None:
        task = asyncio.create_task(self._send(chunk, held=held))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, chunk: list[QueueMessage], *, held: bool) -> None:
        try:
            self.calls += 1
            refused = await self._delete(chunk)  # awaited first: calls overlap
            self.deleted += len(chunk) - refused
        except Exception as exc:  # they come back after the visibility timeout, done already
            log.warning("could not delete %d finished message(s): %r", len(chunk), exc)
        finally:
            if held:
                self._room.release()

    async def close(self, within: float) -> None:
        """Send everything waiting now (no more lingering) and wait up to ``within``
        seconds for the calls in flight; what is not deleted by then comes back later."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._send_all_waiting()
        if not self._sending:
            return
        _, unfinished = await asyncio.wait(list(self._sending), timeout=within)
        if unfinished:
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            log.warning(
                "gave up %d delete call(s) after %.1fs: their messages come back and are "
                "skipped as done",
                len(unfinished),
                within,
            )
