"""Finished messages deleted in the background: ten to a call, the rest after a linger,
everything waiting on close. ``delete`` here records its calls instead of calling SQS
(tests/integration/test_worker.py runs it against moto's server)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fanout.queue.deletions import Deletions
from fanout.queue.sqs import QueueMessage

FOREVER = 3600.0  # a linger no test waits out: only a full call or close sends


def message(n: int) -> QueueMessage:
    return QueueMessage(body="{}", message_id=f"m{n}", receipt_handle=f"r{n}", receive_count=1)


class RecordingDelete:
    """Records each call's receipt handles; ``refuse`` of each call are not deleted, and
    while ``gate`` is closed every call waits at it."""

    def __init__(self, *, refuse: int = 0, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, messages: Sequence[QueueMessage]) -> int:
        self.calls.append([m.receipt_handle for m in messages])
        self.called.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        if self.fail:
            raise ConnectionError("SQS is away")
        return self.refuse

    async def until_calls(self, n: int) -> None:
        async with asyncio.timeout(30):  # a guard only: each wait is for an event
            while len(self.calls) < n:
                self.called.clear()
                await self.called.wait()


async def test_ten_finished_messages_go_in_one_call_at_once() -> None:
    delete = RecordingDelete()
    deletions = Deletions(delete, linger=FOREVER)
    for n in range(10):
        deletions.add(message(n))
    await delete.until_calls(1)
    assert delete.calls == [[f"r{n}" for n in range(10)]]
    await deletions.close(within=30)
    assert deletions.deleted == 10 and deletions.calls == 1


async def test_fewer_than_ten_go_once_the_oldest_has_lingered() -> None:
    delete = RecordingDelete()
    deletions = Deletions(delete, linger=0.01)
    for n in range(3):
        deletions.add(message(n))
    await delete.until_calls(1)
    assert delete.calls == [["r0", "r1", "r2"]]
    assert deletions.waiting == 0
    await deletions.close(within=30)


async def test_close_sends_everything_still_waiting() -> None:
    delete = RecordingDelete()
    deletions = Deletions(delete, linger=FOREVER)
    for n in range(25):
        deletions.add(message(n))
    await delete.until_calls(2)
    await asyncio.sleep(0)  # the flusher would send a third call now if it were going to
    assert [len(c) for c in delete.calls] == [10, 10] and deletions.waiting == 5
    await deletions.close(within=30)
    assert [len(c) for c in delete.calls] == [10, 10, 5]
    assert sorted(h for c in delete.calls for h in c) == sorted(f"r{n}" for n in range(25))
    assert deletions.deleted == 25 and deletions.waiting == 0


async def test_a_message_finished_after_close_is_deleted_at_once() -> None:
    delete = RecordingDelete()
    deletions = Deletions(delete, linger=FOREVER)
    await deletions.close(within=30)
    deletions.add(message(1))
    await delete.until_calls(1)
    assert delete.calls == [["r1"]]


async def test_calls_in_flight_are_bounded() -> None:
    delete = RecordingDelete()
    delete.gate.clear()
    deletions = Deletions(delete, linger=FOREVER, at_once=2)
    for n in range(50):
        deletions.add(message(n))
    await delete.until_calls(2)
    for _ in range(10):
        await asyncio.sleep(0)  # the flusher has every chance to start a third call
    assert len(delete.calls) == 2 and deletions.waiting == 30
    delete.gate.set()
    await delete.until_calls(5)
    await deletions.close(within=30)
    assert delete.most_in_flight == 2 and deletions.deleted == 50


async def test_a_failed_call_is_logged_and_the_next_ones_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delete = RecordingDelete(fail=True)
    deletions = Deletions(delete, linger=FOREVER)
    for n in range(10):
        deletions.add(message(n))
    await delete.until_calls(1)
    delete.fail = False
    for n in range(10, 13):
        deletions.add(message(n))
    await deletions.close(within=30)
    assert deletions.calls == 2 and deletions.deleted == 3
    assert "could not delete 10 finished message(s)" in caplog.text


async def test_entries_sqs_refused_are_not_counted_deleted() -> None:
    delete = RecordingDelete(refuse=2)
    deletions = Deletions(delete, linger=FOREVER)
    for n in range(10):
        deletions.add(message(n))
    await deletions.close(within=30)
    assert deletions.deleted == 8


async def test_close_gives_up_calls_that_do_not_end_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delete = RecordingDelete()
    delete.gate.clear()  # SQS never answers
    deletions = Deletions(delete, linger=FOREVER)
    for n in range(4):
        deletions.add(message(n))
    await deletions.close(within=0.01)
    assert delete.calls == [["r0", "r1", "r2", "r3"]] and deletions.deleted == 0
    assert delete.in_flight == 0  # the call was cancelled, not left behind
    assert "gave up 1 delete call(s)" in caplog.text
